"""Vectors in a LanceDB table, keyed on the item key (the writing rules: ``_vectors``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from rowpilot.errors import ConfigError
from rowpilot.sinks.base import SinkOptions

if TYPE_CHECKING:
    from rowpilot.sinks.vectors import VectorRow
    from rowpilot.state.registry import Registry


class LanceDBSink:
    """``lancedb://PATH/TABLE``: each done item's ``vector_field`` output, with the input's
    ``text_column`` beside it. ``lancedb`` is imported by ``check()``, not on import."""

    def __init__(
        self,
        uri: str,
        *,
        vector_field: str,
        text_column: str | None = None,
        insert_batch: int = 1000,
    ) -> None:
        self.name = uri
        self._vector_field = vector_field
        self._text_column = text_column
        self._insert_batch = insert_batch

    def check(self) -> None:
        from rowpilot.sinks.vectors import check_vector_target

        check_vector_target(self.name)

    def write(self, registry: Registry) -> str:
        from rowpilot.sinks.vectors import parse_vector_target, write_vectors

        target = parse_vector_target(self.name)
        report = write_vectors(target, self._rows(registry), insert_batch=self._insert_batch)
        return (
            f"vectors: {self.name} ({report.inserted:,} inserted, {report.updated:,} "
            f"replaced, {report.unchanged:,} unchanged)"
        )

    def _rows(self, registry: Registry) -> Iterator[VectorRow]:
        from rowpilot.sinks.vectors import VectorRow

        column = self._text_column or ""
        for record in registry.records(status="done"):
            yield VectorRow(
                key=record.key,
                fingerprint=record.fingerprint,
                vector=(record.output or {})[self._vector_field],
                fields={column: record.input.get(column)} if column else {},
            )


def lancedb_sink(target: str, options: SinkOptions) -> LanceDBSink:
    if options.vector_field is None:
        raise ConfigError(
            f"{target} is a vector store, and this job's task makes no vectors",
            hint="write vectors from rowpilot embed (--to there), or a table with -o",
        )
    return LanceDBSink(
        target,
        vector_field=options.vector_field,
        text_column=options.text_column,
        insert_batch=options.insert_batch,
    )
