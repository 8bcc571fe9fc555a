"""CSV quotes: a broken quote is an error naming its lines, never rows silently swallowed.

The rules are those of the ``CsvSource`` docstring: (1) a quote never closed, (2) a
closing quote followed by a stray character, (3) a quoted value that spans lines and may
hold swallowed rows, (a) by the shape of its lines or (b) by the file's unpaired quotes;
and a ragged record that spans lines names the lines of its quote.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import rowpilot
from rowpilot.errors import SourceFormatError
from rowpilot.sources import CsvSource, Row, Source, open_source
from rowpilot.sources.csv import _Loose, _Quoted, _QuoteScanner, _RecordEnd

# ---------------------------------------------------------------------------- helpers


def write(path: Path, text: str) -> str:
    path.write_bytes(text.encode("utf-8"))
    return str(path)


def all_rows(source: Source) -> list[Row]:
    return [row for chunk in source.chunks(100) for row in chunk]


def refusal(source: Source) -> SourceFormatError:
    with pytest.raises(SourceFormatError) as caught:
        all_rows(source)
    return caught.value


def numbered(count: int, replace: dict[int, str]) -> str:
    """An ``id,text`` file of ``count`` rows; row ``i`` (1-based) is on line ``i + 1``."""
    body = "".join(replace.get(i, f"{i},text {i}") + "\n" for i in range(1, count + 1))
    return "id,text\n" + body


# --------------------------------------------------------- rule 1: a quote never closed


def test_the_issue_an_unclosed_quote_in_row_10_of_1000_names_line_11(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", numbered(1000, {10: '10,"oops'}))
    error = refusal(open_source(path))
    assert (error.line, error.row) == (11, 9)
    assert str(error) == (
        f"{path} line 11: a quote opened here is never closed: the rest of the file would be "
        'one cell (hint: close the quote, or double a quote inside a quoted value (""))'
    )
    # The fix the hint names: close the quote.
    fixed = write(tmp_path / "data.csv", numbered(1000, {10: '10,"oops"'}))
    assert len(all_rows(open_source(fixed))) == 1000


def test_the_issue_stops_the_run_before_any_item(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", numbered(1000, {10: '10,"oops'}))
    calls: list[str] = []

    def task(row: dict[str, Any]) -> dict[str, Any]:
        calls.append(row["id"])
        return {}

    with pytest.raises(SourceFormatError, match="line 11: a quote opened here") as caught:
        rowpilot.run(task, path, key="id", state=tmp_path / "state")
    assert caught.value.exit_code == 2
    assert calls == []


def test_unclosed_quote_after_a_multiline_value_of_the_same_record(tmp_path: Path) -> None:
    # The record starts on line 2; its second value spans lines 2-3; the third opens on 3.
    path = write(tmp_path / "data.csv", 'a,b,c\n1,"x\ny","z\nw\n2,3,4\n5,6,7\n')
    error = refusal(open_source(path))
    assert (error.line, error.row) == (3, 0)
    assert "never closed" in str(error)


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_unclosed_quote_with_each_line_ending(tmp_path: Path, newline: str) -> None:
    text = newline.join(["id,text", "1,a", '2,"b', "3,c", "4,d"])  # no final line break
    error = refusal(open_source(write(tmp_path / "data.csv", text)))
    assert error.line == 3


def test_unclosed_quote_past_the_csv_field_limit_names_its_line(tmp_path: Path) -> None:
    # 20,000 swallowed lines outgrow the csv module's 131,072 characters before the end.
    path = write(tmp_path / "big.csv", numbered(20_000, {10: '10,"oops'}))
    error = refusal(open_source(path))
    assert error.line == 11
    assert "never closed" in str(error)


def test_unclosed_quote_in_the_header(tmp_path: Path) -> None:
    with pytest.raises(SourceFormatError) as caught:  # the whole file is read on opening
        open_source(write(tmp_path / "small.csv", 'id,"text\n1,a\n'))
    assert (caught.value.line, caught.value.row) == (1, None)
    assert "never closed" in str(caught.value)
    big = write(tmp_path / "big.csv", 'id,"text\n' + "1,a\n" * 40_000)
    error = refusal(CsvSource(big, "utf-8", ","))
    assert (error.line, error.row) == (1, None)
    assert "never closed" in str(error)


# --------------------------------------------------- rule 2: a stray character after a quote


def test_a_closing_quote_followed_by_text_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", 'id,text\n1,a\n5,"he said "hi" there"\n6,b\n')
    error = refusal(open_source(path))
    assert (error.line, error.row) == (3, 1)
    assert "line 3: a closing quote is followed by 'h', not by ',' or a line end" in str(error)
    # The fix the hint names: double the quotes inside.
    write(Path(path), 'id,text\n1,a\n5,"he said ""hi"" there"\n6,b\n')
    assert all_rows(open_source(path))[1] == (1, 3, {"id": "5", "text": 'he said "hi" there'})


def test_a_stray_character_after_a_quote_that_spans_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", 'id,text\n1,"one\ntwo "x" three"\n2,b\n')
    error = refusal(open_source(path))
    assert error.line == 2
    assert "a quote opened here closes on line 3 and is followed by 'x'" in str(error)


def test_a_stray_character_in_the_header(tmp_path: Path) -> None:
    error = refusal(open_source(write(tmp_path / "data.csv", '"id" x,text\n1,a\n')))
    assert (error.line, error.row) == (1, None)


def test_a_space_after_a_closing_quote_is_refused_not_guessed(tmp_path: Path) -> None:
    error = refusal(open_source(write(tmp_path / "data.csv", 'a,b\n"x" ,y\n')))
    assert "followed by ' '" in str(error)


def test_legitimate_quoting_still_reads(tmp_path: Path) -> None:
    # Excel's output (CRLF, doubled quotes, quoted delimiters and line breaks), and quotes
    # inside unquoted values, which the csv module keeps as characters.
    text = (
        'id,text,note\r\n1,"a, b","say ""hi"""\r\n2,"",""""\r\n3,"two\r\nlines",x\r\n'
        '4,12" screen,5\'10"\r\n5,a "b" c,end\r\n'
    )
    rows = all_rows(open_source(write(tmp_path / "excel.csv", text)))
    assert [(row[1], list(row[2].values())) for row in rows] == [
        (2, ["1", "a, b", 'say "hi"']),
        (3, ["2", "", '"']),
        (4, ["3", "two\r\nlines", "x"]),
        (6, ["4", '12" screen', "5'10\""]),
        (7, ["5", 'a "b" c', "end"]),
    ]


# --------------------------------------------------------------- rule 3a: swallowed rows


def test_the_issue_a_stray_quote_closes_a_swallow(tmp_path: Path) -> None:
    text = numbered(1000, {10: '10,"oops', 20: '20,bad"'})
    path = write(tmp_path / "data.csv", text)
    error = refusal(open_source(path))
    assert (error.line, error.row) == (11, 9)
    assert "line 11: a quote opened here closes on line 21, and 9 of the 9 lines inside" in (
        str(error)
    )
    assert "--trust-quotes" in str(error)
    # The escape hatch reads the file as the csv module does: rows 11 to 20 in one value.
    trusted = all_rows(open_source(path, trust_quotes=True))
    assert len(trusted) == 990
    assert trusted[9][2]["text"].startswith("oops\n11,text 11\n")
    # The fix the hint names: close the quote where the value ends.
    write(Path(path), numbered(1000, {10: '10,"oops"', 20: '20,bad""""'}))
    assert len(all_rows(open_source(path))) == 1000


@pytest.mark.parametrize(
    "value",
    ["intro\nx,1\ny,2\nend", "a\nx,1\n\ny,2\n\nb", "\nx,1\ny,2\nz\n"],
    ids=["two-of-two", "blank-lines-left-out", "two-of-three"],
)
def test_a_value_whose_inner_lines_read_as_rows_is_refused(tmp_path: Path, value: str) -> None:
    path = write(tmp_path / "data.csv", f'name,note\nann,"{value}"\nbob,x\n')
    error = refusal(open_source(path))
    assert (error.line, error.row) == (2, 0)
    assert f"closes on line {2 + value.count(chr(10))}, and 2 of the" in str(error)
    rows = all_rows(CsvSource(path, "utf-8", trust_quotes=True))
    assert [row[2]["note"] for row in rows] == [value, "x"]


@pytest.mark.parametrize(
    ("header", "record", "value"),
    [
        ("name,address", 'ann,"{}"', "Main St, 5\nBoston, MA\nUSA"),  # one row-like line
        ("name,note", 'ann,"{}"', "a\nx,1\ny,2\nno\nnone\nnada\nend"),  # 2 of 5: not most
        ("name,note", 'ann,"{}"', "a\nx;1\ny;2\nb"),  # fields of another delimiter
        ("name,n,m", 'ann,"{}",z', "a\nx,1\ny,2\nb"),  # 2 fields in a 3-column file
        ("text", '"{}"', "one\ntwo\nthree\nfour\nfive"),  # one column: any line is a row
    ],
    ids=["one-row-like", "not-most", "other-delimiter", "fewer-fields", "one-column"],
)
def test_multiline_values_that_do_not_look_like_rows_are_read(
    tmp_path: Path, header: str, record: str, value: str
) -> None:
    last = ",".join(["bob"] * (header.count(",") + 1))
    path = write(tmp_path / "data.csv", f"{header}\n{record.format(value)}\n{last}\n")
    rows = all_rows(open_source(path))
    assert [line for _, line, _ in rows] == [2, 3 + value.count("\n")]
    assert value in rows[0][2].values()


# ------------------------------------------------------- rule 3b: quotes that do not pair up


def test_unpaired_quotes_with_a_multiline_value_are_refused(tmp_path: Path) -> None:
    # A lost closing quote (after "x") made the next quote close the value: rows 2 and 3
    # became one, and the value's own closing quote is left inside an unquoted value.
    text = 'id,text\n1,"x\n2,y\n3,"\nz,w"\n4,v\n'
    path = write(tmp_path / "data.csv", text)
    error = refusal(open_source(path))
    assert error.line == 2
    assert "closes on line 4, but the file's quotes do not pair up (line 5 has a quote" in (
        str(error)
    )
    assert len(all_rows(open_source(path, trust_quotes=True))) == 3


def test_unpaired_quotes_in_a_one_column_file_are_refused(tmp_path: Path) -> None:
    # Written: "", "", "\n0" (3 rows). With the first quote lost, the second row's quotes
    # became a doubled quote inside a value that the fourth line's quote closes.
    path = write(tmp_path / "data.csv", 'c0\r\n"\r\n""\r\n"\n0"\r\n')
    error = refusal(open_source(path))
    assert error.line == 2
    assert "closes on line 4, but the file's quotes do not pair up (line 5 has" in str(error)
    assert len(all_rows(open_source(path, trust_quotes=True))) == 2


def test_paired_loose_quotes_with_a_multiline_value_are_read(tmp_path: Path) -> None:
    text = 'id,text\n1,"two\nlines"\n2,he said "hi"\n3,12"\n4,5"\n'
    rows = all_rows(open_source(write(tmp_path / "data.csv", text)))
    assert [row[2]["text"] for row in rows] == ["two\nlines", 'he said "hi"', '12"', '5"']


def test_an_odd_loose_quote_without_multiline_values_is_read(tmp_path: Path) -> None:
    rows = all_rows(open_source(write(tmp_path / "data.csv", 'id,size\n1,"55"""\n2,12"\n')))
    assert [row[2]["size"] for row in rows] == ['55"', '12"']


# ------------------------------------------------ rule 4: a ragged record that spans lines


def test_a_ragged_record_that_spans_lines_names_its_quote(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", numbered(30, {10: '10,"oops', 20: '20,bad",x'}))
    error = refusal(open_source(path))
    assert (error.line, error.row) == (11, 9)
    assert (
        "data row 9 (lines 11-21) has 3 fields but the header has 2: a quote opened on "
        "line 11 closes on line 21"
    ) in str(error)


def test_a_ragged_record_is_an_error_even_with_trusted_quotes(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", 'a,b\n1,"x\ny",z\n')
    assert "(lines 2-3) has 3 fields" in str(refusal(open_source(path, trust_quotes=True)))


# -------------------------------------------------------- rule 5: multi-line values read


def test_multiline_values_keep_later_line_numbers_with_bare_carriage_returns(
    tmp_path: Path,
) -> None:
    text = 'id,text\r1,"a\rb\rc"\r2,"d\r\ne"\r3,f\r'
    rows = all_rows(open_source(write(tmp_path / "data.csv", text)))
    assert [(line, row["text"]) for _, line, row in rows] == [
        (2, "a\rb\rc"),
        (5, "d\r\ne"),
        (7, "f"),
    ]


# ------------------------------------------------------------------------- properties

DELIMITER = st.sampled_from([",", ";", "\t", "|"])
CELL = st.text(
    alphabet=st.one_of(st.sampled_from(list('"",;|\t\n\r ab1é日')), st.characters(codec="utf-8")),
    max_size=10,
)
WORD = st.text(alphabet="ab1 é", max_size=3)
PROPERTY = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[list[str]], str]:
    """A delimiter and a table of 1 to 4 columns. Some cells hold lines that read as its
    rows (so that rule 3a is exercised, not only left alone); some start with a line break,
    the delimiter or a quote: where a quote that lost its partner closes cleanly."""
    delimiter = draw(DELIMITER)
    width = draw(st.integers(1, 4))
    line = st.lists(WORD, min_size=width, max_size=width).map(delimiter.join)
    row_like = st.lists(line, max_size=4).map(lambda lines: "\n".join(["x", *lines, "y"]))
    start = st.sampled_from(["\n", "\r\n", "\r", delimiter, '"'])
    edge = st.tuples(start, st.one_of(CELL, line)).map("".join)
    cell = st.one_of(CELL, CELL, edge, row_like, st.sampled_from(["", '"', "\n"]))
    rows = draw(st.lists(st.lists(cell, min_size=width, max_size=width), min_size=1, max_size=8))
    return rows, delimiter


def written(rows: list[list[str]], delimiter: str) -> str:
    buffer = io.StringIO(newline="")
    header = [f"c{i}" for i in range(len(rows[0]))]
    csv.writer(buffer, delimiter=delimiter).writerows([header, *rows])
    return buffer.getvalue()


def values(source: Source) -> list[list[str]]:
    return [list(row[2].values()) for row in all_rows(source)]


def looks_swallowed(cell: str, width: int, delimiter: str) -> bool:
    """Rule 3a of the CsvSource docstring, restated: in 2 or more columns, at least 2 of the
    cell's non-blank inner lines read alone as ``width`` fields, and more than half do."""
    inner = [text for text in re.split("\r\n|\r|\n", cell)[1:-1] if text.strip()]
    rows = sum(len(next(csv.reader([text], delimiter=delimiter))) == width for text in inner)
    return width >= 2 and rows >= 2 and rows * 2 > len(inner)


@PROPERTY
@given(table=tables())
def test_written_tables_round_trip_unless_rule_3a_refuses(
    tmp_path: Path, table: tuple[list[list[str]], str]
) -> None:
    rows, delimiter = table
    path = write(tmp_path / "table.csv", written(rows, delimiter))
    assert values(CsvSource(path, "utf-8", delimiter, trust_quotes=True)) == rows
    source = CsvSource(path, "utf-8", delimiter)
    width = len(rows[0])
    if any(looks_swallowed(cell, width, delimiter) for row in rows for cell in row):
        assert "read as rows of this file" in str(refusal(source))
    else:
        assert values(source) == rows  # any refusal outside rule 3a fails here


@settings(PROPERTY, max_examples=500)
@given(table=tables(), data=st.data())
def test_a_removed_quote_never_loses_rows_silently(
    tmp_path: Path, table: tuple[list[list[str]], str], data: st.DataObject
) -> None:
    """One quote character removed from a written table: refused, or at least as many rows.

    No shape is left out. Rule 3a alone would miss swallows that close cleanly with fewer
    than 2 whole rows inside, or in one column (such a file is byte for byte the valid file
    of another table); rule 3b catches them all: the csv module writes an even number of
    quote characters, so one removed leaves an odd number, which a parse that ends outside
    a quote can only explain with a quote inside an unquoted value. Reading with the
    delimiter sniffed must keep the promise too.
    """
    rows, delimiter = table
    text = written(rows, delimiter)
    quotes = [index for index, char in enumerate(text) if char == '"']
    assume(quotes)
    cut = data.draw(st.sampled_from(quotes), label="removed quote at")
    path = write(tmp_path / "table.csv", text[:cut] + text[cut + 1 :])
    sniff = data.draw(st.booleans(), label="sniff the delimiter")
    try:
        source = open_source(path) if sniff else CsvSource(path, "utf-8", delimiter)
        count = len(all_rows(source))
    except SourceFormatError:
        return
    assert count >= len(rows)


@PROPERTY
@given(text=st.text(alphabet=st.sampled_from(list('"",,;\n\r ab')), max_size=40))
def test_the_quote_scanner_reads_quotes_as_the_csv_module_does(text: str) -> None:
    """The scanner that explains errors ends records where csv.reader does, finds a problem
    exactly where the strict reader fails, and finds a loose quote where the quote count
    of a file the strict reader accepts is odd (what rule 3b relies on)."""
    lines = io.StringIO(text, newline="").readlines()
    events = list(_QuoteScanner(",").events(lines, 1))
    unclosed = [event for event in events if isinstance(event, _Quoted) and not event.closed]
    ends = [event.line for event in events if isinstance(event, _RecordEnd)]
    reader = csv.reader(io.StringIO(text, newline=""))
    assert ends + [len(lines)] * len(unclosed) == [reader.line_num for _ in reader]
    problems = [
        event
        for event in events
        if isinstance(event, _Quoted) and (not event.closed or event.after not in ",\r\n")
    ]
    strict = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        list(strict)
    except csv.Error:
        assert problems
        assert strict.line_num == (problems[0].closed or len(lines))
    else:
        assert not problems
        if text.count('"') % 2:
            assert any(isinstance(event, _Loose) for event in events)
