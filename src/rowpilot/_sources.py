"""Stream the rows of an input (CSV/TSV, JSONL, Parquet, a folder of files, a DataFrame or an
iterable) in chunks.

``open_source`` picks a reader and returns a :class:`Source`; ``Source.chunks(size)`` yields
lists of at most ``size`` rows, each row a ``(row, line, fields)`` tuple. Files are read
lazily and in pieces, so memory stays bounded by the chunk size, whatever the file size.

Where errors are raised:

* ``open_source`` raises what is wrong before any row is read: a bad ``format`` or
  ``encoding`` or an unknown suffix (ConfigError), a missing file (SourceNotFoundError),
  an unreadable file (SourceError), an empty file or a file with only a header when that
  is visible in its first 64 KiB, or a folder with no file to read (EmptySourceError),
  and problems in the CSV header: undecodable (SourceEncodingError), duplicate or empty
  column names (SourceFormatError). A Parquet file that cannot be opened raises
  SourceFormatError, and an empty DataFrame, list or tuple raises EmptySourceError.
* ``chunks()`` raises row-level problems lazily, from the chunk where they occur: ragged
  CSV rows, broken CSV quotes (see CsvSource; a header eaten by one is raised on opening,
  and quotes that do not pair up at the end of the pass), invalid JSONL lines, bytes that
  do not decode (in a folder: a file that does not decode or holds NUL characters, a file
  name that is not UTF-8, a subfolder that cannot be listed), corrupt Parquet data,
  items that are not mappings. A pass that finds no rows at all (a long file of blank
  lines, an empty generator) raises EmptySourceError. Calling ``chunks()`` a second time
  on a one-shot iterator raises ConfigError at the call.

What is skipped without an error is told by ``FolderSource.notices()`` (symlinks that
point outside the folder), for the caller to print as warnings.
"""

from __future__ import annotations

import codecs
import csv
import fnmatch
import io
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeAlias

if TYPE_CHECKING:  # imported where used: the CLI starts without loading pandas or pyarrow
    import pandas as pd

from rowpilot.errors import (
    ConfigError,
    EmptySourceError,
    SourceEncodingError,
    SourceError,
    SourceFormatError,
    SourceNotFoundError,
)

__all__ = [
    "CsvSource",
    "DataFrameSource",
    "FolderSource",
    "IterableSource",
    "JsonlSource",
    "ParquetSource",
    "Row",
    "Source",
    "open_source",
]

Row: TypeAlias = tuple[int, int | None, dict[str, Any]]
"""``(row, line, fields)``: 0-based data row, 1-based physical line (or None), fresh dict."""

RowStream: TypeAlias = Generator[Row, None, None]

DEFAULT_ENCODING = "utf-8-sig"
FORMATS = ("csv", "tsv", "jsonl", "parquet")
SUFFIX_FORMATS = {
    ".csv": "csv",
    ".txt": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
CSV_DELIMITERS = ",\t;|"
HEAD_BYTES = 64 * 1024
# csv.Sniffer's quote regexes are quadratic in the sample length (0.4 s for 64 KiB of
# `id,"text"` lines), so it only sees a short sample; the delimiter it proposes is then
# checked against the full 64 KiB head.
SNIFF_CHARS = 16 * 1024
ENCODING_HINT = "pass --encoding latin-1 (or the file's real encoding)"
QUOTE = '"'
LINE_ENDS = ("", "\n", "\r")  # what may follow a closing quote, besides the delimiter
LINE_BREAK = re.compile("\r\n|\r|\n")
QUOTE_HINT = 'close the quote where the value ends, or double a quote inside a quoted value ("")'
TRUST_HINT = "pass --trust-quotes"


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


def open_source(
    source: str | os.PathLike[str] | pd.DataFrame | Iterable[Mapping[str, Any]],
    *,
    format: str | None = None,
    encoding: str | None = None,
    trust_quotes: bool = False,
    follow_symlinks: bool = False,
) -> Source:
    """Open ``source`` for reading. ``format`` and ``encoding`` only apply to paths.

    The format comes from ``format`` ("csv", "tsv", "jsonl", "parquet") or else from the
    suffix. Text files default to "utf-8-sig", which also reads plain UTF-8. A folder is a
    :class:`FolderSource` (one row per file); there ``format`` selects the files to read:
    a glob ("*.json") or a suffix ("json").
    ``trust_quotes`` reads a CSV file's quoted values that span lines even where they look
    like swallowed rows (see :class:`CsvSource`). ``follow_symlinks`` reads a folder's
    symlinks to files outside it (see :class:`FolderSource`).
    See the module docstring for which errors are raised here and which from ``chunks()``.
    """
    if isinstance(source, str | os.PathLike):
        options = _FileOptions(format, encoding, trust_quotes, follow_symlinks)
        return _open_file(os.fspath(source), options)
    pandas = sys.modules.get("pandas")  # a DataFrame caller has pandas loaded already
    if pandas is not None and isinstance(source, pandas.DataFrame):
        return DataFrameSource(source)
    if isinstance(source, bytes | Mapping) or not isinstance(source, Iterable):
        raise ConfigError(
            f"cannot read rows from a {type(source).__name__}",
            hint="pass a file path, a pandas DataFrame or an iterable of dicts",
        )
    return IterableSource(source)  # type: ignore[arg-type]  # a DataFrame returned above


@dataclass(frozen=True)
class _FileOptions:
    format: str | None
    encoding: str | None
    trust_quotes: bool
    follow_symlinks: bool


def _open_file(name: str, options: _FileOptions) -> Source:
    text_encoding = _checked_encoding(options.encoding or DEFAULT_ENCODING)
    if os.path.isdir(name):
        return FolderSource(
            name, text_encoding, pattern=options.format, follow_symlinks=options.follow_symlinks
        )
    chosen_format = _checked_format(options.format)
    _require_file(name)
    file_format = chosen_format or _format_from_suffix(name)
    if file_format == "parquet":
        return ParquetSource(name)
    if file_format == "jsonl":
        return JsonlSource(name, text_encoding)
    delimiter = "\t" if file_format == "tsv" else None
    return CsvSource(name, text_encoding, delimiter, trust_quotes=options.trust_quotes)


def _checked_format(format: str | None) -> str | None:
    if format is None:
        return None
    if format.lower() not in FORMATS:
        raise ConfigError(f"unknown format {format!r}", hint=f"use one of: {', '.join(FORMATS)}")
    return format.lower()


def _checked_encoding(encoding: str) -> str:
    try:
        with io.TextIOWrapper(io.BytesIO(), encoding=encoding):  # also rejects base64 & co
            pass
    except LookupError:
        raise ConfigError(
            f"unknown encoding {encoding!r}",
            hint="use a Python codec name such as utf-8, latin-1, cp1252 or utf-16",
        ) from None
    return encoding


def _require_file(name: str) -> None:
    if not os.path.exists(name):
        raise SourceNotFoundError(
            "no such file",
            file=name,
            hint=f"check the path; the working directory is {os.getcwd()}",
        )


def _format_from_suffix(name: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[suffix]
    what = f"suffix {suffix!r}" if suffix else "file name (it has no suffix)"
    raise ConfigError(
        f"cannot tell the format from the {what}",
        file=name,
        hint=f"pass --format with one of: {', '.join(FORMATS)}",
    )


# ---------------------------------------------------------------------------- helpers


def _chunked(rows: RowStream, size: int, empty: EmptySourceError) -> Iterator[list[Row]]:
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


def _checked_size(size: int) -> int:
    if size < 1:
        raise ConfigError(f"chunk size must be at least 1, not {size}")
    return size


def _check_column_names(names: list[str], file: str, line: int | None = None) -> None:
    seen: set[str] = set()
    for position, name in enumerate(names, start=1):
        if not name:
            raise SourceFormatError(
                f"column {position} of the header has no name",
                file=file,
                line=line,
                hint="name every column (a trailing delimiter makes an empty one)",
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


def _open_binary(name: str) -> IO[bytes]:
    try:
        return open(name, "rb")
    except FileNotFoundError:
        raise SourceNotFoundError("no such file", file=name) from None
    except OSError as error:
        raise SourceError(f"cannot be read: {error.strerror}", file=name) from None


def _open_text(name: str, encoding: str, newline: str) -> IO[str]:
    binary = _open_binary(name)
    return io.TextIOWrapper(binary, encoding=encoding, newline=newline)


# ------------------------------------------------------------------- decoding helpers


class _LineCounter:
    """Counts physical lines as the csv module does: ``\\n``, ``\\r\\n`` and ``\\r`` end one."""

    def __init__(self) -> None:
        self.breaks = 0
        self._ends_with_cr = False

    def feed(self, text: str) -> None:
        if not text:
            return
        crlf = text.count("\r\n") + (self._ends_with_cr and text.startswith("\n"))
        self.breaks += text.count("\n") + text.count("\r") - crlf
        self._ends_with_cr = text.endswith("\r")

    @property
    def line(self) -> int:
        """The line the next character is on."""
        return self.breaks + 1


def _decode_prefix(
    decoder: codecs.IncrementalDecoder, block: bytes, final: bool
) -> tuple[str, bool]:
    """Decode ``block``; if it holds bad bytes, decode only what comes before them.

    Returns the text and whether the whole block decoded. Binary search, because the
    offset in a UnicodeDecodeError is not reliable across codecs (BOM handling).
    """
    state = decoder.getstate()
    try:
        return decoder.decode(block, final), True
    except UnicodeDecodeError:
        pass
    good, bad = 0, len(block)
    while bad - good > 1:
        middle = (good + bad) // 2
        decoder.setstate(state)
        try:
            decoder.decode(block[:middle])
            good = middle
        except UnicodeDecodeError:
            bad = middle
    decoder.setstate(state)
    return decoder.decode(block[:good]), False


def _decoded_blocks(name: str, encoding: str) -> Iterator[tuple[str, bool, bool]]:
    """Yield ``(text, decoded, at_end)`` per 64 KiB block; stops at the first bad byte."""
    decoder = codecs.getincrementaldecoder(encoding)()
    with _open_binary(name) as file:
        while True:
            block = file.read(HEAD_BYTES)
            at_end = len(block) < HEAD_BYTES
            text, decoded = _decode_prefix(decoder, block, final=at_end)
            yield text, decoded, at_end
            if at_end or not decoded:
                return


def _line_of_bad_bytes(name: str, encoding: str) -> int | None:
    """The 1-based line of the first bytes that do not decode, or None if all decode."""
    counter = _LineCounter()
    for text, decoded, _at_end in _decoded_blocks(name, encoding):
        counter.feed(text)
        if not decoded:
            return counter.line
    return None


def _encoding_error(name: str, encoding: str, line: int | None) -> SourceEncodingError:
    return SourceEncodingError(
        f"bytes that do not decode as {encoding}", file=name, line=line, hint=ENCODING_HINT
    )


@dataclass(frozen=True)
class _Head:
    """The decoded start of a text file: at least 64 KiB, cut after a complete line."""

    text: str
    whole_file: bool
    bad_line: int | None  # where undecodable bytes cut the head short


def _read_head(name: str, encoding: str) -> _Head:
    parts: list[str] = []
    counter = _LineCounter()
    for text, decoded, at_end in _decoded_blocks(name, encoding):
        parts.append(text)
        counter.feed(text)
        if not decoded:
            return _Head(_through_last_line_break("".join(parts)), False, counter.line)
        if at_end:
            return _Head("".join(parts), True, None)
        if "\n" in text or "\r" in text:
            break
    return _Head(_through_last_line_break("".join(parts)), False, None)


def _through_last_line_break(text: str) -> str:
    return text[: max(text.rfind("\n"), text.rfind("\r")) + 1]


# ------------------------------------------------------------------------------- CSV


def _is_blank(values: list[str]) -> bool:
    return not values or (len(values) == 1 and not values[0].strip())


def _is_row(values: list[str], width: int) -> bool:
    """Whether a record after the header is a data row (in a one-column file, "" is one)."""
    return len(values) == width or not _is_blank(values)


class _CsvReader(Protocol):
    """What ``csv.reader`` returns: records, and the count of physical lines read so far."""

    line_num: int

    def __iter__(self) -> Iterator[list[str]]: ...
    def __next__(self) -> list[str]: ...


def _first_record(reader: _CsvReader) -> tuple[int, list[str]] | None:
    """The first non-blank record and the line it starts on."""
    line = reader.line_num + 1
    for values in reader:
        if not _is_blank(values):
            return line, values
        line = reader.line_num + 1
    return None


def _consistent_width(head: _Head, delimiter: str) -> int:
    """The field count shared by every record of the head, or 0 if the counts differ."""
    reader = csv.reader(io.StringIO(head.text, newline=""), delimiter=delimiter)
    widths = [len(values) for values in reader if not _is_blank(values)]
    if not head.whole_file and len(widths) > 1:
        widths.pop()  # the head may end inside a quoted multi-line field
    return widths[0] if widths and len(set(widths)) == 1 else 0


def _sniffed_delimiter(text: str) -> str | None:
    sample = _through_last_line_break(text[:SNIFF_CHARS]) or text[:SNIFF_CHARS]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=CSV_DELIMITERS)
    except csv.Error:
        return None
    return str(dialect.delimiter)


def _choose_delimiter(head: _Head) -> str:
    """The delimiter that splits every record of the head into the same number of fields.

    csv.Sniffer alone misreads files whose cells hold other candidate delimiters, and it
    may guess a quote character or skipinitialspace, which would alter values; so only its
    delimiter is used, with the excel dialect's quoting, as the first candidate.
    """
    sniffed = _sniffed_delimiter(head.text)
    candidates: list[str] = list(dict.fromkeys([sniffed or ",", *CSV_DELIMITERS]))
    widths = {delimiter: _consistent_width(head, delimiter) for delimiter in candidates}
    best = max(candidates, key=lambda delimiter: widths[delimiter])  # first wins a tie
    if widths[best] >= 2:
        return best
    # Ragged rows: trust the header, so the errors count fields the way the user does.
    header_widths = {delimiter: _header_width(head, delimiter) for delimiter in candidates}
    widest = max(candidates, key=lambda delimiter: header_widths[delimiter])
    if header_widths[widest] >= 2:
        return widest
    return best  # one column: a delimiter that keeps every record whole, if there is one


def _header_width(head: _Head, delimiter: str) -> int:
    found = _first_record(csv.reader(io.StringIO(head.text, newline=""), delimiter=delimiter))
    return 0 if found is None else len(found[1])


class CsvSource:
    """A delimited text file with a header row. Values stay the exact strings of the file.

    Fully blank lines are skipped, and so are whitespace-only lines when the file has more
    than one column. ``delimiter=None`` sniffs it from the first 64 KiB.

    Quotes are checked, because a broken quote does not fail in the csv module: it turns
    the rows after it into one value. ``chunks()`` raises SourceFormatError for

    1. a quote that is never closed, naming the line where it opens;
    2. a closing quote followed by anything but the delimiter, a line end or a second
       quote (``5,"he said "hi" there"``), naming its line;
    3. unless ``trust_quotes``, a quoted value that spans lines and may hold swallowed
       rows, naming the lines where it opens and closes: (a) at least 2 of its inner
       lines (those between its first and last line, blank ones left out) each read alone
       as exactly the header's number of fields, and they are more than half of them (in
       files of 2 or more columns: in a one-column file any line reads as a row); or (b)
       the file holds an odd number of quote characters, so some quote sits inside an
       unquoted value (``55"``), which is what a value whose closing quote was lost
       leaves behind when a later quote closes it.

    ``trust_quotes=True`` (``--trust-quotes``) turns rule 3 off for a file whose values
    really hold lines like its rows; rules 1 and 2 stay, such files are never valid. A
    record that spans lines with the wrong number of fields names the lines of its quote.

    The cost stays off the common path: rules 1 and 2 are the csv module's strict mode,
    the lines are only worked out on an error, rule 3a only looks at a record that spans
    lines, and 3b counts the file's quotes at the end of a pass that met such a record.
    What rule 3 cannot see: a value that swallows rows and closes on a stray quote that
    pairs the file's quotes up again (two mistakes), in a one-column file or with fewer
    than 2 whole rows inside; such a file is byte for byte a valid one.
    """

    reiterable = True

    def __init__(
        self,
        path: str,
        encoding: str,
        delimiter: str | None = None,
        *,
        trust_quotes: bool = False,
    ) -> None:
        self.name = path
        self._encoding = encoding
        self._trust_quotes = trust_quotes
        head = _read_head(path, encoding)
        self._delimiter = delimiter or _choose_delimiter(head)
        self._header = self._header_from(head)

    def columns(self) -> list[str]:
        return list(self._header)

    def chunks(self, size: int = 1024) -> Iterator[list[Row]]:
        empty = EmptySourceError("has a header but no rows", file=self.name)
        return _chunked(self._rows(), _checked_size(size), empty)

    def _header_from(self, head: _Head) -> list[str]:
        reader = csv.reader(io.StringIO(head.text, newline=""), delimiter=self._delimiter)
        found = _first_record(reader)
        if found is None:
            raise self._no_header(head)
        line, header = found
        header[0] = header[0].removeprefix("\ufeff")  # a BOM the chosen codec kept
        _check_column_names(header, self.name, line)
        if head.whole_file and not any(_is_row(values, len(header)) for values in reader):
            empty = EmptySourceError("has a header but no rows", file=self.name)
            raise self._quote_error(None, 1, reader.line_num) or empty  # a quote ate the rows?
        return header

    def _no_header(self, head: _Head) -> SourceError:
        if head.bad_line is not None:
            return _encoding_error(self.name, self._encoding, head.bad_line)
        if head.whole_file:
            return EmptySourceError("is empty (no header row)", file=self.name)
        return SourceFormatError("has no header row in its first 64 KiB", file=self.name)

    def _rows(self) -> RowStream:
        with _open_text(self.name, self._encoding, newline="") as file:
            # strict: a closing quote followed by a stray character (rule 2), or the end
            # of the file inside a quoted value (rule 1), is a csv.Error, not a guess.
            reader = csv.reader(file, delimiter=self._delimiter, strict=True)
            try:
                self._skip_header(reader)
                yield from self._data_rows(reader)
            except UnicodeDecodeError:
                line = _line_of_bad_bytes(self.name, self._encoding) or reader.line_num + 1
                raise _encoding_error(self.name, self._encoding, line) from None

    def _skip_header(self, reader: _CsvReader) -> None:
        try:
            _first_record(reader)  # checked when opened
        except csv.Error as error:
            raise self._parse_error(error, None, 1, reader.line_num) from None

    def _data_rows(self, reader: _CsvReader) -> RowStream:
        header, width = self._header, len(self._header)
        index, line, spanned = 0, reader.line_num + 1, False
        try:
            for values in reader:
                end = reader.line_num
                if end != line:  # a quoted value spans lines: rare, so checked apart
                    self._check_multiline(values, index, line, end)
                    spanned = True
                if len(values) == width:
                    yield index, line, dict(zip(header, values, strict=True))
                    index += 1
                elif not _is_blank(values):
                    raise self._ragged_row(len(values), index, line)
                line = end + 1
        except csv.Error as error:
            raise self._parse_error(error, index, line, reader.line_num) from None
        if spanned and not self._trust_quotes:
            self._check_quote_parity()

    def _ragged_row(self, field_count: int, index: int, line: int) -> SourceFormatError:
        return SourceFormatError(
            f"data row {index} has {field_count} fields but the header has {len(self._header)}",
            file=self.name,
            row=index,
            line=line,
            hint=f"quote values that contain {self._delimiter!r}, or fix the row",
        )

    # -- quotes: the checks run only for a record that spans lines, or on an error

    def _check_multiline(self, values: list[str], index: int, start: int, end: int) -> None:
        width = len(self._header)
        if len(values) != width:
            spans = _quoted_spans(values, start)
            longest = max(spans, key=lambda span: span.closed - span.opened)
            raise self._ragged_record(len(values), index, (start, end), longest)
        if self._trust_quotes or not any(_may_hold_rows(v, width, self._delimiter) for v in values):
            return  # the common multi-line value, told apart without splitting it
        for span in _quoted_spans(values, start):
            self._check_swallowed(span, index)

    def _ragged_record(
        self, field_count: int, index: int, lines: tuple[int, int], span: _Span
    ) -> SourceFormatError:
        return SourceFormatError(
            f"data row {index} (lines {lines[0]}-{lines[1]}) has {field_count} fields but the "
            f"header has {len(self._header)}: a quote opened on line {span.opened} closes on "
            f"line {span.closed}",
            file=self.name,
            row=index,
            line=lines[0],
            hint=f"{QUOTE_HINT}; quote values that contain {self._delimiter!r}",
        )

    def _check_swallowed(self, span: _Span, index: int) -> None:
        width = len(self._header)
        rows, inner = _row_like_lines(span.value, width, self._delimiter)
        if rows >= 2 and rows * 2 > inner:
            raise SourceFormatError(
                f"a quote opened here closes on line {span.closed}, and {rows} of the {inner} "
                f"lines inside read as rows of this file ({width} fields): the rows would be "
                "one value",
                file=self.name,
                row=index,
                line=span.opened,
                hint=f"{QUOTE_HINT}; if the value really holds these lines, {TRUST_HINT}",
            )

    def _check_quote_parity(self) -> None:
        """Rule 3b: odd quote characters and a quoted value that spans lines."""
        if _quote_count(self.name, self._encoding) % 2 == 0:
            return
        found = _loose_quote_near_span(self._lines_from(1), self._delimiter)
        if found is None:  # pragma: no cover - the count is odd only with a loose quote
            return
        span, loose = found
        raise SourceFormatError(
            f"a quote opened here closes on line {span.closed}, but the file's quotes do not "
            f"pair up (line {loose} has a quote inside an unquoted value): a lost closing "
            "quote may have made rows into one value",
            file=self.name,
            line=span.opened,
            hint=f"{QUOTE_HINT}, and quote a value that holds a quote; "
            f"if the file is right, {TRUST_HINT}",
        )

    def _parse_error(
        self, error: csv.Error, index: int | None, start: int, at: int
    ) -> SourceFormatError:
        """Explain a csv.Error in the record that starts on line ``start``."""
        return self._quote_error(index, start, at) or SourceFormatError(
            f"cannot be parsed as CSV: {error}",
            file=self.name,
            row=index,
            line=at,
            hint=f"the csv module reads values of up to {csv.field_size_limit():,} "
            "characters: put long texts in a JSONL file, or in a folder (one file a row)",
        )

    def _quote_error(self, index: int | None, start: int, at: int) -> SourceFormatError | None:
        """Rules 1 and 2 in the record from line ``start`` to (at least) line ``at``."""
        found = _quote_problem(self._lines_from(start), start, at, self._delimiter)
        if found is None:
            return None
        if found.closed is None:
            return SourceFormatError(
                "a quote opened here is never closed: the rest of the file would be one cell",
                file=self.name,
                row=index,
                line=found.opened,
                hint='close the quote, or double a quote inside a quoted value ("")',
            )
        return self._stray(found, index)

    def _stray(self, quoted: _Quoted, index: int | None) -> SourceFormatError:
        follows = f"is followed by {quoted.after!r}, not by {self._delimiter!r} or a line end"
        if quoted.closed == quoted.opened:
            message = f"a closing quote {follows}"
            hint = 'double a quote inside a quoted value (""), or leave the value unquoted'
        else:
            message = f"a quote opened here closes on line {quoted.closed} and {follows}"
            hint = QUOTE_HINT
        return SourceFormatError(message, file=self.name, row=index, line=quoted.opened, hint=hint)

    def _lines_from(self, start: int) -> Iterator[str]:
        """The physical lines of the file from line ``start`` on, as csv.reader sees them."""
        try:
            with _open_text(self.name, self._encoding, newline="") as file:
                yield from islice(file, start - 1, None)
        except UnicodeDecodeError:  # past the error being explained: it stops the scan
            return


@dataclass(frozen=True)
class _Span:
    """A quoted value that spans lines, as read."""

    opened: int
    closed: int
    value: str


def _line_breaks(text: str) -> int:
    """Physical line breaks, counted as the csv module counts them."""
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def _quoted_spans(values: list[str], start: int) -> list[_Span]:
    """The values of a record starting on line ``start`` that span lines, with their lines.

    Only a quoted value holds a line break, and each is a physical one, so the breaks of
    the values before one give the line where its quote opens.
    """
    spans: list[_Span] = []
    line = start
    for value in values:
        breaks = _line_breaks(value)
        if breaks:
            spans.append(_Span(line, line + breaks, value))
            line += breaks
    return spans


def _row_like_lines(value: str, width: int, delimiter: str) -> tuple[int, int]:
    """How many inner lines of ``value`` read alone as ``width`` fields, of how many.

    Inner lines are those between its first and its last line, blank ones left out.
    """
    if not _may_hold_rows(value, width, delimiter):
        return 0, 0
    inner = [text for text in LINE_BREAK.split(value)[1:-1] if text.strip()]
    rows = sum(1 for text in inner if _field_count(text, delimiter) == width)
    return rows, len(inner)


def _may_hold_rows(value: str, width: int, delimiter: str) -> bool:
    """Whether ``value`` has the delimiters for 2 lines of ``width`` fields (one column's
    lines are not judged: any line reads as a row)."""
    return width >= 2 and value.count(delimiter) >= 2 * (width - 1)


def _field_count(text: str, delimiter: str) -> int:
    return len(next(csv.reader([text], delimiter=delimiter), []))


def _quote_count(name: str, encoding: str) -> int:
    return sum(text.count(QUOTE) for text, _decoded, _at_end in _decoded_blocks(name, encoding))


# ------------------------------------------------------------------ quote scanning


@dataclass(frozen=True)
class _Quoted:
    """A quoted value as csv.reader reads it."""

    opened: int  # the line of its opening quote
    closed: int | None  # the line of its closing quote; None: the file ends inside it
    after: str  # the character after its closing quote; "" at the end of the file


@dataclass(frozen=True)
class _Loose:
    """A quote inside an unquoted value: csv.reader keeps it as a plain character."""

    line: int


@dataclass(frozen=True)
class _RecordEnd:
    line: int


_QuoteEvent: TypeAlias = _Quoted | _Loose | _RecordEnd
_Scan: TypeAlias = Generator[_QuoteEvent, None, tuple[int | None, bool]]


class _QuoteScanner:
    """Follows the quotes of CSV lines as csv.reader (excel dialect, not strict) does.

    It only explains what the fast reader found, so it runs on an error or a suspicion,
    never per row; it jumps with ``str.find``, so a long quoted value costs one find a line.
    """

    def __init__(self, delimiter: str) -> None:
        self._delimiter = delimiter
        self._opened: int | None = None  # the line of the quote still open

    def events(self, lines: Iterable[str], first: int) -> Iterator[_QuoteEvent]:
        for number, text in enumerate(lines, start=first):
            yield from self._line(text, number)
        if self._opened is not None:
            yield _Quoted(self._opened, None, "")

    def _line(self, text: str, number: int) -> Iterator[_QuoteEvent]:
        position: int | None = 0
        in_value = False  # in an unquoted value: a quote there is a plain character
        while position is not None:
            if self._opened is not None:
                position, in_value = yield from self._quoted(text, number, position, self._opened)
            elif not in_value and text.startswith(QUOTE, position):
                self._opened, position = number, position + 1
            else:
                position, in_value = yield from self._unquoted(text, number, position)

    def _quoted(self, text: str, number: int, position: int, opened: int) -> _Scan:
        close = _closing_quote(text, position)
        if close < 0:
            return None, False  # the value goes on on the next line
        after = text[close + 1 : close + 2]
        yield _Quoted(opened, number, after)
        self._opened = None
        if after == self._delimiter:
            return close + 2, False
        if after in LINE_ENDS:
            yield _RecordEnd(number)
            return None, False
        return close + 1, True  # a stray character: the value goes on unquoted

    def _unquoted(self, text: str, number: int, position: int) -> _Scan:
        end = text.find(self._delimiter, position)
        if QUOTE in text[position : end if end >= 0 else len(text)]:
            yield _Loose(number)
        if end < 0:
            yield _RecordEnd(number)
            return None, False
        return end + 1, False


def _closing_quote(text: str, position: int) -> int:
    """The index of the first quote from ``position`` that is not doubled, or -1."""
    found = text.find(QUOTE, position)
    while found >= 0 and text.startswith(QUOTE, found + 1):
        found = text.find(QUOTE, found + 2)
    return found


def _quote_problem(lines: Iterable[str], start: int, at: int, delimiter: str) -> _Quoted | None:
    """The quote that broke the record starting on line ``start`` (csv.reader failed on
    line ``at``): one never closed, or one closed and followed by a stray character."""
    ends = (delimiter, *LINE_ENDS)
    for event in _QuoteScanner(delimiter).events(lines, start):
        if isinstance(event, _Quoted) and (event.closed is None or event.after not in ends):
            return event
        if isinstance(event, _RecordEnd) and event.line >= at:
            return None
    return None


def _loose_quote_near_span(lines: Iterable[str], delimiter: str) -> tuple[_Quoted, int] | None:
    """The first loose quote and the quoted value spanning lines nearest before it (else
    the first after it)."""
    span: _Quoted | None = None
    loose: int | None = None
    for event in _QuoteScanner(delimiter).events(lines, 1):
        if isinstance(event, _Quoted) and event.closed is not None and event.closed > event.opened:
            if loose is not None:
                return event, loose
            span = event
        elif isinstance(event, _Loose) and loose is None:
            loose = event.line
            if span is not None:
                return span, loose
    return None


# ----------------------------------------------------------------------------- JSONL

JSON_TYPE_NAMES = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true/false",
    type(None): "null",
}


class JsonlSource:
    """One JSON object per line; blank lines are skipped."""

    reiterable = True

    def __init__(self, path: str, encoding: str) -> None:
        self.name = path
        self._encoding = encoding
        head = _read_head(path, encoding)
        if head.whole_file and not head.text.strip():
            raise EmptySourceError("is empty", file=path)

    def columns(self) -> None:
        return None

    def chunks(self, size: int = 1024) -> Iterator[list[Row]]:
        empty = EmptySourceError("has no rows (only blank lines)", file=self.name)
        return _chunked(self._rows(), _checked_size(size), empty)

    def _rows(self) -> RowStream:
        # newline="\n": JSON text may hold a bare "\r" as whitespace; it must not end a line.
        with _open_text(self.name, self._encoding, newline="\n") as file:
            line = 0
            try:
                index = 0
                for line, text in enumerate(file, start=1):
                    if text.strip():
                        yield index, line, self._parse(text, index, line)
                        index += 1
            except UnicodeDecodeError:
                line = _line_of_bad_bytes(self.name, self._encoding) or line + 1
                raise _encoding_error(self.name, self._encoding, line) from None

    def _parse(self, text: str, index: int, line: int) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise SourceFormatError(
                f"not valid JSON: {error.msg} (column {error.colno})",
                file=self.name,
                row=index,
                line=line,
                hint="each line must hold one complete JSON object",
            ) from None
        if not isinstance(value, dict):
            kind = JSON_TYPE_NAMES.get(type(value), type(value).__name__)
            raise SourceFormatError(
                f"the line is {kind}, not a JSON object",
                file=self.name,
                row=index,
                line=line,
                hint='each line must be an object such as {"id": 1, "text": "..."}',
            )
        return value


# ---------------------------------------------------------------------------- folder

FOLDER_COLUMNS = ["path", "name", "suffix", "size", "text"]
SHOWN = 10  # symlinks named in a notice; more are counted
FOLDER_HINT = (
    "pass --encoding with the files' real encoding, or read only the text files with "
    "--format (a glob such as '*.json', or a suffix)"
)


@dataclass(frozen=True)
class _FileEntry:
    relative: str  # '/'-separated, relative to the folder: the row's ``path`` and key
    full: str
    size: int


class FolderSource:
    """A folder of files, one row per file: ``path``, ``name``, ``suffix``, ``size``, ``text``.

    Files are found recursively, directory by directory in sorted name order (so the order
    is the sort of the paths' component lists, the same on every platform and every run).
    Names starting with "." are skipped, files and folders alike: a state directory kept
    inside the folder (``.rowpilot``) or an editor's swap file is not input. Symlinks to
    files in the folder are read; a symlink to a file outside it (its resolved path is not
    under the folder's) is skipped, so that a link cannot pull ``/etc/passwd`` into the
    run, and named by ``notices()``; ``follow_symlinks=True`` (``--follow-symlinks``)
    reads those too. Symlinks to folders are never followed (they could loop). ``pattern``
    keeps only matching files: a glob matched case-sensitively against the file name, or
    against the relative path when it holds a "/"; or a bare suffix ("json", ".json"),
    matched in any case.

    ``path`` is the natural key, named by ``default_key`` (pass ``--key path``): unlike the
    row number it does not shift when a file is added. ``text`` is the whole file decoded
    with ``encoding``; a file that does not decode, or decodes to NUL characters (a binary
    file), is a SourceEncodingError naming it. Rows are read a file at a time, so memory
    holds one chunk's texts; listing holds one directory's names per level being walked.
    """

    reiterable = True
    default_key = "path"

    def __init__(
        self,
        path: str,
        encoding: str,
        pattern: str | None = None,
        *,
        follow_symlinks: bool = False,
    ) -> None:
        self.name = path
        self._encoding = encoding
        self._match = _file_matcher(pattern)
        self._pattern = pattern
        self._follow_symlinks = follow_symlinks
        self._real_path = os.path.realpath(path)
        self._outside: dict[str, str] = {}  # skipped symlinks, relative path -> target
        if next(self._files(), None) is None:  # stops at the first file: cheap on any tree
            raise self._empty()

    def columns(self) -> list[str]:
        return list(FOLDER_COLUMNS)

    def chunks(self, size: int = 1024) -> Iterator[list[Row]]:
        return _chunked(self._rows(), _checked_size(size), self._empty())

    def notices(self) -> list[str]:
        """One-line warnings about what the passes so far skipped: symlinks to files outside
        the folder (each named once, however many passes saw it)."""
        if not self._outside:
            return []
        return [_outside_notice(self.name, self._outside)]

    def _empty(self) -> EmptySourceError:
        if self._outside:
            return EmptySourceError(
                "is a folder whose only files to read are symlinks that point outside it",
                file=self.name,
                hint=_outside_notice(self.name, self._outside),
            )
        if self._pattern is None:
            return EmptySourceError(
                "is a folder with no files to read (names starting with '.' are skipped)",
                file=self.name,
                hint="put the input files in it, or pass the path of one input file",
            )
        return EmptySourceError(
            f"is a folder with no file matching {self._pattern!r}",
            file=self.name,
            hint="check --format: a glob such as '*.json' (against the file name), or a suffix",
        )

    def _rows(self) -> RowStream:
        for index, entry in enumerate(self._files()):
            yield index, None, self._row(index, entry)

    def _row(self, index: int, entry: _FileEntry) -> dict[str, Any]:
        name = entry.relative.rpartition("/")[2]
        return {
            "path": entry.relative,
            "name": name,
            "suffix": Path(name).suffix,
            "size": entry.size,
            "text": self._text(index, entry),
        }

    def _text(self, index: int, entry: _FileEntry) -> str:
        with _open_binary(entry.full) as file:
            data = file.read()
        try:
            text = data.decode(self._encoding)
        except UnicodeDecodeError:
            line = _line_of_bad_bytes(entry.full, self._encoding)
            raise SourceEncodingError(
                f"bytes that do not decode as {self._encoding}",
                file=entry.full,
                row=index,
                line=line,
                hint=FOLDER_HINT,
            ) from None
        if "\0" in text:  # decodes, but as text it is noise: a binary file or UTF-16 as UTF-8
            raise SourceEncodingError(
                f"holds NUL characters when read as {self._encoding}: a binary file, or "
                "another encoding",
                file=entry.full,
                row=index,
                line=text.count("\n", 0, text.index("\0")) + 1,
                hint=FOLDER_HINT,
            )
        return text

    def _files(self) -> Iterator[_FileEntry]:
        return self._walk(self.name, "")

    def _walk(self, folder: str, prefix: str) -> Iterator[_FileEntry]:
        for entry in self._listing(folder):
            relative = prefix + _utf8_name(entry, prefix, self.name)
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(entry.path, relative + "/")
            elif self._match(relative):
                size = _file_size(entry)
                if size is not None and not self._points_outside(entry, relative):
                    yield _FileEntry(relative, entry.path, size)

    def _points_outside(self, entry: os.DirEntry[str], relative: str) -> bool:
        """Whether ``entry`` is a symlink to skip; if so, remember it for ``notices()``."""
        if self._follow_symlinks or not entry.is_symlink():
            return False  # a walked entry that is no symlink is in the folder
        if _is_within(os.path.realpath(entry.path), self._real_path):
            return False
        self._outside.setdefault(relative, _link_target(entry.path))
        return True

    def _listing(self, folder: str) -> list[os.DirEntry[str]]:
        """The folder's visible entries in name order (one directory's names in memory)."""
        try:
            with os.scandir(folder) as entries:
                visible = [entry for entry in entries if not entry.name.startswith(".")]
        except OSError as error:
            raise SourceError(
                f"the folder cannot be read: {error.strerror}",
                file=folder,
                hint="check its permissions",
            ) from None
        return sorted(visible, key=lambda entry: entry.name)


def _is_within(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # on another drive (Windows)
        return False


def _link_target(path: str) -> str:
    """The target as the link holds it (``../x``), to show the user what they wrote."""
    try:
        return os.readlink(path)
    except OSError:  # replaced since it was listed
        return os.path.realpath(path)


def _outside_notice(folder: str, links: dict[str, str]) -> str:
    shown = ", ".join(f"{path} -> {target}" for path, target in islice(links.items(), SHOWN))
    more = f" and {len(links) - SHOWN} more" if len(links) > SHOWN else ""
    what = "symlink that points" if len(links) == 1 else "symlinks that point"
    return (
        f"skipped {len(links)} {what} outside {folder.rstrip('/')}/: {shown}{more} "
        "(pass --follow-symlinks to read them)"
    )


def _file_matcher(pattern: str | None) -> Callable[[str], bool]:
    """Which relative paths ``pattern`` keeps (see FolderSource)."""
    if pattern is None or not pattern.strip():
        return lambda _relative: True
    if not any(char in pattern for char in "*?[/"):  # a bare suffix: json or .json
        suffix = "." + pattern.strip().lstrip(".").lower()
        return lambda relative: relative.lower().endswith(suffix)
    if "/" in pattern:
        return lambda relative: fnmatch.fnmatchcase(relative, pattern)
    return lambda relative: fnmatch.fnmatchcase(relative.rpartition("/")[2], pattern)


def _utf8_name(entry: os.DirEntry[str], prefix: str, folder: str) -> str:
    """The entry's name, refused if it is not UTF-8: it could not be stored as a key."""
    try:
        entry.name.encode("utf-8")
    except UnicodeEncodeError:
        shown = prefix + entry.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        raise SourceFormatError(
            f"the file name {shown!r} is not valid UTF-8",
            file=folder,
            hint="rename the file (keys and outputs are text)",
        ) from None
    return entry.name


def _file_size(entry: os.DirEntry[str]) -> int | None:
    """The size of a regular file (a symlink followed), else None: sockets, FIFOs, broken
    links and the like are not input."""
    try:
        status = entry.stat()
    except OSError:
        return None
    return status.st_size if stat.S_ISREG(status.st_mode) else None


# --------------------------------------------------------------------------- Parquet


class ParquetSource:
    """A Parquet file, read one record batch at a time. Rows have no line number."""

    reiterable = True

    def __init__(self, path: str) -> None:
        self.name = path
        import pyarrow.parquet as pq

        metadata = self._guarded(lambda: pq.read_metadata(path))
        self._columns: list[str] = list(metadata.schema.to_arrow_schema().names)
        _check_column_names(self._columns, path)
        if metadata.num_rows == 0:
            raise EmptySourceError("has no rows", file=path)

    def columns(self) -> list[str]:
        return list(self._columns)

    def chunks(self, size: int = 1024) -> Iterator[list[Row]]:
        empty = EmptySourceError("has no rows", file=self.name)
        return _chunked(self._rows(size), _checked_size(size), empty)

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


# ------------------------------------------------------------------ in-memory sources


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
        _check_column_names(self._columns, self.name)
        if len(frame) == 0:
            raise EmptySourceError("has no rows", file=self.name)
        self._frame = frame.set_axis(self._columns, axis=1)  # no data copy

    def columns(self) -> list[str]:
        return list(self._columns)

    def chunks(self, size: int = 1024) -> Iterator[list[Row]]:
        empty = EmptySourceError("has no rows", file=self.name)
        return _chunked(self._rows(size), _checked_size(size), empty)

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
        return _chunked(self._rows(), _checked_size(size), empty)

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
