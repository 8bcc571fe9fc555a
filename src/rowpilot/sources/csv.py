"""CSV and TSV files: a header row, the delimiter sniffed, and quotes checked so that a
broken quote is an error naming its lines instead of rows swallowed into one value."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Protocol, TypeAlias

from rowpilot.errors import EmptySourceError, SourceError, SourceFormatError
from rowpilot.sources.base import (
    Row,
    RowStream,
    SourceOptions,
    check_column_names,
    checked_size,
    chunked,
    open_text,
)
from rowpilot.sources.text import (
    Head,
    decoded_blocks,
    encoding_error,
    line_of_bad_bytes,
    read_head,
    through_last_line_break,
)

CSV_DELIMITERS = ",\t;|"
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


def _consistent_width(head: Head, delimiter: str) -> int:
    """The field count shared by every record of the head, or 0 if the counts differ."""
    reader = csv.reader(io.StringIO(head.text, newline=""), delimiter=delimiter)
    widths = [len(values) for values in reader if not _is_blank(values)]
    if not head.whole_file and len(widths) > 1:
        widths.pop()  # the head may end inside a quoted multi-line field
    return widths[0] if widths and len(set(widths)) == 1 else 0


def _sniffed_delimiter(text: str) -> str | None:
    sample = through_last_line_break(text[:SNIFF_CHARS]) or text[:SNIFF_CHARS]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=CSV_DELIMITERS)
    except csv.Error:
        return None
    return str(dialect.delimiter)


def _choose_delimiter(head: Head) -> str:
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


def _header_width(head: Head, delimiter: str) -> int:
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
        head = read_head(path, encoding)
        self._delimiter = delimiter or _choose_delimiter(head)
        self._header = self._header_from(head)

    def columns(self) -> list[str]:
        return list(self._header)

    def chunks(self, size: int = 1024) -> Iterator[list[Row]]:
        empty = EmptySourceError("has a header but no rows", file=self.name)
        return chunked(self._rows(), checked_size(size), empty)

    def _header_from(self, head: Head) -> list[str]:
        reader = csv.reader(io.StringIO(head.text, newline=""), delimiter=self._delimiter)
        found = _first_record(reader)
        if found is None:
            raise self._no_header(head)
        line, header = found
        header[0] = header[0].removeprefix("\ufeff")  # a BOM the chosen codec kept
        check_column_names(header, self.name, line)
        if head.whole_file and not any(_is_row(values, len(header)) for values in reader):
            empty = EmptySourceError("has a header but no rows", file=self.name)
            raise self._quote_error(None, 1, reader.line_num) or empty  # a quote ate the rows?
        return header

    def _no_header(self, head: Head) -> SourceError:
        if head.bad_line is not None:
            return encoding_error(self.name, self._encoding, head.bad_line)
        if head.whole_file:
            return EmptySourceError("is empty (no header row)", file=self.name)
        return SourceFormatError("has no header row in its first 64 KiB", file=self.name)

    def _rows(self) -> RowStream:
        with open_text(self.name, self._encoding, newline="") as file:
            # strict: a closing quote followed by a stray character (rule 2), or the end
            # of the file inside a quoted value (rule 1), is a csv.Error, not a guess.
            reader = csv.reader(file, delimiter=self._delimiter, strict=True)
            try:
                self._skip_header(reader)
                yield from self._data_rows(reader)
            except UnicodeDecodeError:
                line = line_of_bad_bytes(self.name, self._encoding) or reader.line_num + 1
                raise encoding_error(self.name, self._encoding, line) from None

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
            with open_text(self.name, self._encoding, newline="") as file:
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
    return sum(text.count(QUOTE) for text, _decoded, _at_end in decoded_blocks(name, encoding))


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


def open_csv(name: str, options: SourceOptions) -> CsvSource:
    return CsvSource(name, options.encoding, trust_quotes=options.trust_quotes)


def open_tsv(name: str, options: SourceOptions) -> CsvSource:
    return CsvSource(name, options.encoding, "\t", trust_quotes=options.trust_quotes)
