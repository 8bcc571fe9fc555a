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
  CSV rows, invalid JSONL lines, bytes that do not decode (in a folder: a file that does
  not decode or holds NUL characters, a file name that is not UTF-8, a subfolder that
  cannot be listed), corrupt Parquet data, items that are not mappings. A pass that finds
  no rows at all (a long file of blank lines, an empty generator) raises
  EmptySourceError. Calling ``chunks()`` a second time on a one-shot iterator raises
  ConfigError at the call.
"""

from __future__ import annotations

import codecs
import csv
import fnmatch
import io
import json
import os
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
) -> Source:
    """Open ``source`` for reading. ``format`` and ``encoding`` only apply to paths.

    The format comes from ``format`` ("csv", "tsv", "jsonl", "parquet") or else from the
    suffix. Text files default to "utf-8-sig", which also reads plain UTF-8. A folder is a
    :class:`FolderSource` (one row per file); there ``format`` selects the files to read:
    a glob ("*.json") or a suffix ("json").
    See the module docstring for which errors are raised here and which from ``chunks()``.
    """
    if isinstance(source, str | os.PathLike):
        return _open_file(os.fspath(source), format, encoding)
    pandas = sys.modules.get("pandas")  # a DataFrame caller has pandas loaded already
    if pandas is not None and isinstance(source, pandas.DataFrame):
        return DataFrameSource(source)
    if isinstance(source, bytes | Mapping) or not isinstance(source, Iterable):
        raise ConfigError(
            f"cannot read rows from a {type(source).__name__}",
            hint="pass a file path, a pandas DataFrame or an iterable of dicts",
        )
    return IterableSource(source)  # type: ignore[arg-type]  # a DataFrame returned above


def _open_file(name: str, format: str | None, encoding: str | None) -> Source:
    text_encoding = _checked_encoding(encoding or DEFAULT_ENCODING)
    if os.path.isdir(name):
        return FolderSource(name, text_encoding, pattern=format)
    chosen_format = _checked_format(format)
    _require_file(name)
    file_format = chosen_format or _format_from_suffix(name)
    if file_format == "parquet":
        return ParquetSource(name)
    if file_format == "jsonl":
        return JsonlSource(name, text_encoding)
    return CsvSource(name, text_encoding, delimiter="\t" if file_format == "tsv" else None)


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
    """

    reiterable = True

    def __init__(self, path: str, encoding: str, delimiter: str | None = None) -> None:
        self.name = path
        self._encoding = encoding
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
            raise EmptySourceError("has a header but no rows", file=self.name)
        return header

    def _no_header(self, head: _Head) -> SourceError:
        if head.bad_line is not None:
            return _encoding_error(self.name, self._encoding, head.bad_line)
        if head.whole_file:
            return EmptySourceError("is empty (no header row)", file=self.name)
        return SourceFormatError("has no header row in its first 64 KiB", file=self.name)

    def _rows(self) -> RowStream:
        with _open_text(self.name, self._encoding, newline="") as file:
            reader = csv.reader(file, delimiter=self._delimiter)
            try:
                yield from self._data_rows(reader)
            except UnicodeDecodeError:
                line = _line_of_bad_bytes(self.name, self._encoding) or reader.line_num + 1
                raise _encoding_error(self.name, self._encoding, line) from None
            except csv.Error as error:
                raise SourceFormatError(
                    f"cannot be parsed as CSV: {error}",
                    file=self.name,
                    line=reader.line_num,
                    hint="a quote that is never closed swallows the lines after it",
                ) from None

    def _data_rows(self, reader: _CsvReader) -> RowStream:
        _first_record(reader)  # the header, checked when opened
        header, width = self._header, len(self._header)
        index, line = 0, reader.line_num + 1
        for values in reader:
            if len(values) == width:
                yield index, line, dict(zip(header, values, strict=True))
                index += 1
            elif not _is_blank(values):
                raise self._ragged_row(len(values), index, line)
            line = reader.line_num + 1

    def _ragged_row(self, field_count: int, index: int, line: int) -> SourceFormatError:
        return SourceFormatError(
            f"data row {index} has {field_count} fields but the header has {len(self._header)}",
            file=self.name,
            row=index,
            line=line,
            hint=f"quote values that contain {self._delimiter!r}, or fix the row",
        )


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
    files are read; symlinks to folders are not followed (they could loop). ``pattern``
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

    def __init__(self, path: str, encoding: str, pattern: str | None = None) -> None:
        self.name = path
        self._encoding = encoding
        self._match = _file_matcher(pattern)
        self._pattern = pattern
        if next(self._files(), None) is None:  # stops at the first file: cheap on any tree
            raise self._empty()

    def columns(self) -> list[str]:
        return list(FOLDER_COLUMNS)

    def chunks(self, size: int = 1024) -> Iterator[list[Row]]:
        return _chunked(self._rows(), _checked_size(size), self._empty())

    def _empty(self) -> EmptySourceError:
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
                if size is not None:
                    yield _FileEntry(relative, entry.path, size)

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
