"""Parquet files, read one record batch at a time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rowpilot.errors import EmptySourceError, SourceFormatError, SourceNotFoundError
from rowpilot.sources.base import (
    Row,
    RowStream,
    SourceOptions,
    check_column_names,
    checked_size,
    chunked,
)


class ParquetSource:
    """A Parquet file, read one record batch at a time. Rows have no line number."""

    reiterable = True

    def __init__(self, path: str) -> None:
        self.name = path
        import pyarrow.parquet as pq

        metadata = self._guarded(lambda: pq.read_metadata(path))
        self._columns: list[str] = list(metadata.schema.to_arrow_schema().names)
        check_column_names(self._columns, path)
        if metadata.num_rows == 0:
            raise EmptySourceError("has no rows", file=path)

    def columns(self) -> list[str]:
        return list(self._columns)

    def chunks(self, size: int = 1024) -> Iterator[list[Row]]:
        empty = EmptySourceError("has no rows", file=self.name)
        return chunked(self._rows(size), checked_size(size), empty)

    def _rows(self, batch_size: int) -> RowStream:
        import pyarrow.parquet as pq

        with self._guarded(lambda: pq.ParquetFile(self.name)) as parquet:
            batches = parquet.iter_batches(batch_size=batch_size)
            index = 0
            while (batch := self._guarded(lambda: next(batches, None))) is not None:
                for record in batch.to_pylist():
                    yield index, None, record
                    index += 1

    def _guarded(self, read: Any) -> Any:
        """Run ``read``, turning pyarrow's errors about the file into SourceFormatError."""
        import pyarrow as pa

        try:
            return read()
        except FileNotFoundError:
            raise SourceNotFoundError("no such file", file=self.name) from None
        except (pa.ArrowException, OSError, ValueError) as error:
            raise SourceFormatError(
                f"cannot be read as Parquet: {error}",
                file=self.name,
                hint="check that the file is a complete Parquet file, or pass --format",
            ) from None


def open_parquet(name: str, _options: SourceOptions) -> ParquetSource:
    return ParquetSource(name)
