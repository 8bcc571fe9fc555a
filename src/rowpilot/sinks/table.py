"""The enriched table: inputs and outputs, one row per item, as CSV, JSONL, Parquet or Excel
(``.xlsx``, written by :mod:`rowpilot.sinks.excel`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rowpilot.sinks.atomic import check_writable
from rowpilot.sinks.base import SinkOptions
from rowpilot.sinks.exports import table_format, write_table

if TYPE_CHECKING:
    from rowpilot.state.registry import Registry


class TableSink:
    """``--output``: the table's format comes from the file's suffix."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)

    def check(self) -> None:
        check_writable(self.path, what="output")
        table_format(self.path)

    def write(self, registry: Registry) -> str:
        count = write_table(self.path, registry.records, registry.input_columns())
        return f"table: {self.path} ({count:,} rows)"


def table_sink(target: str, _options: SinkOptions) -> TableSink:
    return TableSink(Path(target))
