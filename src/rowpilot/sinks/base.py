"""The seam every output implements (:class:`Sink`), and what a sink's factory is given."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias

if TYPE_CHECKING:
    from pathlib import Path

    from rowpilot.state.registry import Registry


class Sink(Protocol):
    """An output derived from the registry after a run: it can always be written again.

    ``check()`` runs before the first item and raises the one-line user error that would
    stop the write (a folder that cannot be made, a format it cannot tell, a missing
    extra), creating nothing. ``write(registry)`` writes from the registry's current
    records and returns what it wrote, for the run's summary ("table: out.csv (3 rows)").
    """

    name: str  # what it writes to, for messages: a path or URL

    def check(self) -> None: ...

    def write(self, registry: Registry) -> str: ...


class LiveSink(Sink, Protocol):
    """A sink that also writes while the run goes (a spreadsheet's write-back).

    ``start(state, version)`` runs once the state is locked, before the first item: it may
    read the registry in ``state`` on a connection of its own (never write it) for items
    of task ``version`` as they are committed. ``write(registry)`` after the run writes
    the rest and ends it; ``stop()`` ends it without that (the run failed), and is called
    at every end, so it must be idempotent.
    """

    def start(self, state: Path, version: str) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class SinkOptions:
    """The job's settings a sink may need besides its path or URL."""

    vector_field: str | None = None  # the task's output field holding each item's vector
    text_column: str | None = None  # the input column kept beside each vector
    insert_batch: int = 1000  # rows per vector-store commit
    credentials: str | None = None  # Google Sheets: the credentials file (rowpilot._gsheet)
    key_column: str | None = None  # the job's key column (a write-back finds rows by it)
    write_batch: int = 200  # Google Sheets: rows per write request
    write_interval: float = 5.0  # a write-back's longest wait for a finished row
    write_rpm: float = 60.0  # Google Sheets write requests a minute
    replace: bool = False  # an export may write over an existing worksheet
    header_row: int | None = None  # a sheet's header row, from 1 (None: the first row)


SinkFactory: TypeAlias = Callable[[str, SinkOptions], Sink]
"""Makes a sink for a path or URL; creates nothing (``check()`` and ``write()`` do the work)."""
