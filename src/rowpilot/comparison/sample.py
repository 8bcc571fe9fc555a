"""The stable sample ``rowpilot compare`` runs every model on.

The sample is the ``size`` rows whose keys have the smallest ``key_hash`` (blake2b-64 of
the key, the hash shards use; ties, which need equal hashes, broken by the key), taken
over the job's selection (``--rows``, ``--limit`` and ``--shard`` apply first). A row's
place in the sample depends on its key alone, so the sample is the same rows whatever the
order of the file and run after run, and a row added later joins it only if its hash is
smaller than one in it. Rows keyed by row number (no ``--key``) have their position as
key: reordering such a file changes the sample. A repeated key counts once (its first
row).

The sampled rows keep their row number and line, so each model's run keys, reports and
exports them as the whole job would.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass

from rowpilot.engine.items import Item, Keyer, Selection, key_hash, selected_items
from rowpilot.errors import ConfigError
from rowpilot.sources import Row, Source


@dataclass(frozen=True)
class Sample:
    """The sampled rows in source order, and how many rows the selection had."""

    rows: tuple[Row, ...]
    total: int


def stable_sample(source: Source, keyer: Keyer, selection: Selection, size: int) -> Sample:
    """The ``size`` rows of the selection with the smallest key hashes, in source order."""
    if size < 1:
        raise ConfigError(f"--sample {size} is not a positive number of rows", hint="e.g. 200")
    counted = _FirstOfEachKey()
    rows = heapq.nsmallest(
        size, counted.rows(selected_items(source, keyer, selection)), key=lambda kept: kept[0]
    )
    if counted.total < size:
        raise ConfigError(
            f"--sample {size} is more rows than the data has ({counted.total:,})",
            file=source.name,
            hint=f"give --sample {counted.total} or fewer",
        )
    return Sample(tuple(sorted((row for _, row in rows), key=lambda row: row[0])), counted.total)


class _FirstOfEachKey:
    """The selection's rows, a repeated key's first only, each with its (hash, key) order;
    counts them as they pass."""

    def __init__(self) -> None:
        self.total = 0

    def rows(self, chunks: Iterator[list[Item]]) -> Iterator[tuple[tuple[int, str], Row]]:
        seen: set[str] = set()
        for items in chunks:
            for item in items:
                if item.key not in seen:
                    seen.add(item.key)
                    self.total += 1
                    yield (key_hash(item.key), item.key), (item.seq, item.line, item.fields)


class SampleSource:
    """The sampled rows as a ``Source``, each with its own row number and line."""

    reiterable = True

    def __init__(self, source: Source, sample: Sample) -> None:
        self.name = source.name
        self._columns = source.columns()
        self._rows = sample.rows

    def columns(self) -> list[str] | None:
        return self._columns

    def chunks(self, size: int = 1024) -> Iterator[list[Row]]:
        for start in range(0, len(self._rows), size):
            yield [
                (seq, line, dict(fields)) for seq, line, fields in self._rows[start : start + size]
            ]
