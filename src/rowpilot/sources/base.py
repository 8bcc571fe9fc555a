"""The seam every source implements (:class:`Source`), and the helpers they share: rows
grouped into chunks, header names checked, files opened with one-line errors."""

from __future__ import annotations

import io
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import IO, Any, Protocol, TypeAlias

from rowpilot.errors import (
    ConfigError,
    EmptySourceError,
    SourceError,
    SourceFormatError,
    SourceNotFoundError,
)

Row: TypeAlias = tuple[int, int | None, dict[str, Any]]
"""``(row, line, fields)``: 0-based data row, 1-based physical line (or None), fresh dict."""

RowStream: TypeAlias = Generator[Row, None, None]

DEFAULT_ENCODING = "utf-8-sig"  # also reads plain UTF-8


class Source(Protocol):
    """A readable input: a file, a DataFrame or an iterable of mappings."""

    name: str
    reiterable: bool

    def columns(self) -> list[str] | None:
        """The column order when known up front (CSV header, Parquet schema, DataFrame)."""
        ...

    def chunks(self, size: int = 1024) -> Iterator[list[Row]]:
        """A fresh pass over the rows, in lists of ``size`` rows (the last may be shorter)."""
        ...


def chunked(rows: RowStream, size: int, empty: EmptySourceError) -> Iterator[list[Row]]:
    """Group ``rows`` into lists of ``size``; raise ``empty`` if the pass finds no rows."""
    try:
        chunk = list(islice(rows, size))
        if not chunk:
            raise empty
        while chunk:
            yield chunk
            chunk = list(islice(rows, size))
    finally:
        rows.close()  # closes the file now, also when the caller stops early


def checked_size(size: int) -> int:
    if size < 1:
        raise ConfigError(f"chunk size must be at least 1, not {size}")
    return size


def check_column_names(
    names: list[str],
    file: str,
    line: int | None = None,
    empty_hint: str = "name every column (a trailing delimiter makes an empty one)",
) -> None:
    seen: set[str] = set()
    for position, name in enumerate(names, start=1):
        if not name:
            raise SourceFormatError(
                f"column {position} of the header has no name",
                file=file,
                line=line,
                hint=empty_hint,
            )
        if name in seen:
            raise SourceFormatError(
                "the column name appears more than once in the header",
                file=file,
                line=line,
                column=name,
                hint="give every column a different name",
            )
        seen.add(name)


def open_binary(name: str) -> IO[bytes]:
    try:
        return open(name, "rb")
    except FileNotFoundError:
        raise SourceNotFoundError("no such file", file=name) from None
    except OSError as error:
        raise SourceError(f"cannot be read: {error.strerror}", file=name) from None


def open_text(name: str, encoding: str, newline: str) -> IO[str]:
    binary = open_binary(name)
    return io.TextIOWrapper(binary, encoding=encoding, newline=newline)


@dataclass(frozen=True)
class SourceOptions:
    """What an opener gets besides the path or URL: the settings of ``open_source``, with
    the encoding checked and its default filled in."""

    format: str | None = None  # the --format name as given, lowercased; None: by suffix
    encoding: str = DEFAULT_ENCODING
    trust_quotes: bool = False
    follow_symlinks: bool = False
    credentials: str | None = None  # a Google Sheets credentials file (rowpilot._gsheet)
    sheet: str | None = None  # a workbook's sheet; None: its first
    header_row: int | None = None  # the header's 1-based row; None: the first with a value


Opener: TypeAlias = Callable[[str, SourceOptions], Source]
"""Opens a path or URL as a :class:`Source`, raising what is wrong before any row is read."""
