"""Rows already in memory: a pandas DataFrame, or an iterable of mappings."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from rowpilot.errors import ConfigError, EmptySourceError, SourceFormatError
from rowpilot.sources.base import Row, RowStream, check_column_names, checked_size, chunked

if TYPE_CHECKING:  # imported where used: the CLI starts without loading pandas
    import pandas as pd


def _plain(value: Any) -> Any:
    """A numpy scalar as the matching Python scalar; any other value unchanged."""
    import numpy as np
    import pandas as pd

    if isinstance(value, np.datetime64):
        return pd.Timestamp(value)
    if isinstance(value, np.timedelta64):
        return pd.Timedelta(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


class DataFrameSource:
    """A pandas DataFrame, read in slices of rows. Column names become ``str``."""

    name = "<DataFrame>"
    reiterable = True

    def __init__(self, frame: pd.DataFrame) -> None:
        self._columns = [str(label) for label in frame.columns]
        check_column_names(self._columns, self.name)
        if len(frame) == 0:
            raise EmptySourceError("has no rows", file=self.name)
        self._frame = frame.set_axis(self._columns, axis=1)  # no data copy

    def columns(self) -> list[str]:
        return list(self._columns)

    def chunks(self, size: int = 1024) -> Iterator[list[Row]]:
        empty = EmptySourceError("has no rows", file=self.name)
        return chunked(self._rows(size), checked_size(size), empty)

    def _rows(self, slice_size: int) -> RowStream:
        for start in range(0, len(self._frame), slice_size):
            records = self._frame.iloc[start : start + slice_size].to_dict("records")
            for offset, record in enumerate(records):
                fields = {str(key): _plain(value) for key, value in record.items()}
                yield start + offset, None, fields


class IterableSource:
    """An iterable of mappings. Lists and tuples can be read again; other iterables once."""

    name = "<iterable>"

    def __init__(self, items: Iterable[Mapping[str, Any]]) -> None:
        self.reiterable = isinstance(items, list | tuple)
        if self.reiterable and not items:
            raise EmptySourceError("has no rows", file=self.name)
        self._items = items
        self._read = False

    def columns(self) -> None:
        return None

    def chunks(self, size: int = 1024) -> Iterator[list[Row]]:
        if self._read and not self.reiterable:
            raise ConfigError(
                "a one-shot iterator can be read once",
                file=self.name,
                hint="pass a list instead, or open a fresh iterator",
            )
        self._read = True
        empty = EmptySourceError("has no rows", file=self.name)
        return chunked(self._rows(), checked_size(size), empty)

    def _rows(self) -> RowStream:
        for index, item in enumerate(self._items):
            if not isinstance(item, Mapping):
                raise SourceFormatError(
                    f"item is a {type(item).__name__}, not a mapping",
                    file=self.name,
                    row=index,
                    hint="every item must be a dict of column name to value",
                )
            yield index, None, {str(key): value for key, value in item.items()}
