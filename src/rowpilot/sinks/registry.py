"""Which sinks a job writes: ``sinks_for(config)``, one per output setting, the kind of
``--output`` (and of the vector store) chosen by URL scheme, then by suffix.

A new kind of output is one factory (:data:`SinkFactory`) and one :func:`register_sink`
call; see "How to add a sink" in docs/architecture.md.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rowpilot._targets import normal_schemes, normal_suffixes, scheme_of, suffix_of
from rowpilot.errors import ConfigError
from rowpilot.sinks.base import Sink, SinkFactory, SinkOptions
from rowpilot.sinks.failures import FailuresSink
from rowpilot.sinks.gsheet import GsheetWriteBack, gsheet_export
from rowpilot.sinks.json_folder import JsonFolderSink
from rowpilot.sinks.lancedb import lancedb_sink
from rowpilot.sinks.table import table_sink

if TYPE_CHECKING:
    from rowpilot._config import JobConfig


@dataclass(frozen=True)
class SinkKind:
    """A registered kind of sink: its factory and what selects it."""

    factory: SinkFactory
    suffixes: tuple[str, ...]  # lowercase, with the dot
    schemes: tuple[str, ...]  # lowercase, without "://"


_KINDS: list[SinkKind] = []


def register_sink(
    factory: SinkFactory, *, suffixes: Sequence[str] = (), schemes: Sequence[str] = ()
) -> SinkKind:
    """Write ``--output`` targets with these suffixes, or URLs with these schemes, through
    ``factory``. A later registration wins over an earlier one. Returns the kind, for
    :func:`unregister_sink`."""
    kind = SinkKind(
        factory,
        suffixes=normal_suffixes(suffixes),
        schemes=normal_schemes(schemes),
    )
    _KINDS.append(kind)
    return kind


def unregister_sink(kind: SinkKind) -> None:
    """Forget a kind that :func:`register_sink` returned (a plugin unloaded, a test)."""
    _KINDS.remove(kind)


def open_sink(
    target: str | os.PathLike[str],
    options: SinkOptions,
    *,
    default: SinkFactory = table_sink,
    by_suffix: bool = True,
) -> Sink:
    """The sink for ``target``: a registered scheme, else (``by_suffix``) a registered
    suffix, else ``default``, whose ``check()`` says what is wrong with the target."""
    name = os.fspath(target)
    kind = _kind_for_scheme(name) or (_kind_for_suffix(name) if by_suffix else None)
    return (kind.factory if kind is not None else default)(name, options)


def sinks_for(config: JobConfig, *, vector_field: str | None) -> list[Sink]:
    """The job's sinks, in the order they are written and reported."""
    options = sink_options(config, vector_field=vector_field)
    sinks: list[Sink] = []
    if config.write_back:  # written while the run goes: first, so it starts first
        sinks.append(GsheetWriteBack(str(config.source), options))
    if config.output is not None:
        _check_output_target(os.fspath(config.output))
        sinks.append(open_sink(config.output, options))
    if config.json_dir is not None:
        sinks.append(JsonFolderSink(config.json_dir))
    if config.failures is not None:
        sinks.append(FailuresSink(config.failures))
    if config.vectors is not None:
        # --to names a vector store: a table suffix there is a mistake for LanceDB to name.
        sinks.append(open_sink(config.vectors, options, default=lancedb_sink, by_suffix=False))
    return sinks


def _check_output_target(target: str) -> None:
    """``--output gsheet://...`` would write a whole worksheet after every run: a run writes
    a Sheet through ``--write-back`` (its own rows, by key), an export to a new one."""
    if scheme_of(target) == "gsheet":
        raise ConfigError(
            "--output cannot name a Google Sheet: a run writes its outputs into the sheet it "
            "reads with --write-back",
            file=target,
            hint="or write the job's table to a new worksheet after the run: rowpilot export "
            "STATE --to gsheet://SPREADSHEET_ID/NEW_WORKSHEET",
        )


def sink_options(config: JobConfig, *, vector_field: str | None = None) -> SinkOptions:
    return SinkOptions(
        vector_field,
        config.text_column,
        config.insert_batch,
        credentials=str(config.credentials) if config.credentials is not None else None,
        key_column=config.key,
        write_batch=config.write_batch,
        write_interval=config.write_interval,
        write_rpm=config.sheets_write_rpm,
        header_row=config.header_row,
    )


def _kind_for_scheme(name: str) -> SinkKind | None:
    scheme = scheme_of(name)
    if scheme is None:
        return None
    return next((kind for kind in reversed(_KINDS) if scheme in kind.schemes), None)


def _kind_for_suffix(name: str) -> SinkKind | None:
    suffix = suffix_of(name)
    return next((kind for kind in reversed(_KINDS) if suffix in kind.suffixes), None)


register_sink(table_sink, suffixes=(".csv", ".jsonl", ".ndjson", ".parquet", ".pq", ".xlsx"))
register_sink(lancedb_sink, schemes=("lancedb",))
register_sink(gsheet_export, schemes=("gsheet",))
