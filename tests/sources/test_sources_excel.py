"""The Excel source against real workbooks written with xlsxwriter: typed cells, the header
row, empty and merged cells, sheets by name, the sheet's own row numbers, and bad files."""

from __future__ import annotations

import datetime as dt
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import xlsxwriter
from hypothesis import given, settings
from hypothesis import strategies as st

from rowpilot.engine.items import Keyer
from rowpilot.errors import (
    ConfigError,
    EmptySourceError,
    SourceFormatError,
    SourceNotFoundError,
)
from rowpilot.sources import open_source
from rowpilot.sources.excel import OLE_MAGIC, ExcelSource

Fill = Callable[[Any, Any], None]  # (workbook, worksheet) -> None


def workbook(path: Path, fill: Fill, sheet: str = "Data", *more_sheets: str) -> str:
    with xlsxwriter.Workbook(str(path)) as book:
        sheet_ = book.add_worksheet(sheet)
        for name in more_sheets:
            book.add_worksheet(name)
        fill(book, sheet_)
    return str(path)


def rows_of(source: Any) -> list[tuple[int, int | None, dict[str, Any]]]:
    return [row for chunk in source.chunks(2) for row in chunk]


def test_typed_cells_are_kept_and_dates_read_as_iso_text(tmp_path: Path) -> None:
    def fill(book: Any, sheet: Any) -> None:
        date = book.add_format({"num_format": "yyyy-mm-dd"})
        stamp = book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
        clock = book.add_format({"num_format": "hh:mm:ss"})
        sheet.write_row(0, 0, ["id", "int", "float", "bool", "date", "stamp", "time", "text"])
        sheet.write_string(1, 0, "00123")
        sheet.write_number(1, 1, 3.0)
        sheet.write_number(1, 2, 0.1)
        sheet.write_boolean(1, 3, False)
        sheet.write_datetime(1, 4, dt.date(2024, 1, 5), date)
        sheet.write_datetime(1, 5, dt.datetime(2024, 1, 5, 10, 30, 1), stamp)
        sheet.write_datetime(1, 6, dt.time(10, 30), clock)
        sheet.write_string(1, 7, "=1+1")  # text that looks like a formula stays text
        sheet.write_number(2, 0, 123)
        sheet.write_formula(2, 1, "=2*21", None, 42)  # the cached value is read

    source = open_source(workbook(tmp_path / "typed.xlsx", fill))
    (_, _, first), (_, _, second) = rows_of(source)
    assert first == {
        "id": "00123",
        "int": 3,
        "float": 0.1,
        "bool": False,
        "date": "2024-01-05",
        "stamp": "2024-01-05T10:30:01",
        "time": "10:30:00",
        "text": "=1+1",
    }
    assert type(first["int"]) is int and type(first["bool"]) is bool
    assert second["id"] == 123 and second["int"] == 42 and second["float"] is None
    keyer = Keyer(source, "id")
    assert [keyer.item(row).key for row in rows_of(source)] == ["00123", "123"]


def test_leading_empty_rows_are_skipped_and_rows_carry_the_sheets_row_numbers(
    tmp_path: Path,
) -> None:
    def fill(book: Any, sheet: Any) -> None:
        sheet.write_row(2, 1, ["id", "name"])  # B3: the header, after two empty rows
        sheet.write_row(3, 1, ["a", "one"])
        sheet.write_row(6, 1, ["b", "two"])  # rows 5 and 6 empty: skipped
        sheet.write_blank(9, 1, None, book.add_format({"bold": True}))  # a formatted empty row

    source = open_source(workbook(tmp_path / "gaps.xlsx", fill))
    assert source.columns() == ["id", "name"]
    assert rows_of(source) == [
        (0, 4, {"id": "a", "name": "one"}),
        (1, 7, {"id": "b", "name": "two"}),
    ]


def test_header_row_picks_the_header_below_a_title(tmp_path: Path) -> None:
    def fill(book: Any, sheet: Any) -> None:
        sheet.write(0, 0, "Quarterly report")
        sheet.write_row(2, 0, ["id", 2024, "note"])  # a number as a column name
        sheet.write_row(3, 0, ["k1", 5, "x"])

    path = workbook(tmp_path / "titled.xlsx", fill)
    source = open_source(path, header_row=3)
    assert source.columns() == ["id", "2024", "note"]
    assert rows_of(source) == [(0, 4, {"id": "k1", "2024": 5, "note": "x"})]
    with pytest.raises(SourceFormatError, match="cell B3 has a value") as error:
        open_source(path)  # without it the title is the header, and B3 is outside it
    assert "--header-row" in str(error.value)
    with pytest.raises(EmptySourceError, match=r"header row 2 .* is empty"):
        open_source(path, header_row=2)
    with pytest.raises(ConfigError, match="--header-row"):
        open_source(path, header_row=0)
    with pytest.raises(EmptySourceError, match="has no row 50"):
        open_source(path, header_row=50)


def test_merged_cells_hold_their_value_in_the_top_left_cell(tmp_path: Path) -> None:
    def fill(book: Any, sheet: Any) -> None:
        sheet.write_row(0, 0, ["id", "a", "b"])
        sheet.merge_range(1, 0, 1, 2, "spans", None)
        sheet.write_row(2, 0, ["k2", "x", "y"])

    rows = rows_of(open_source(workbook(tmp_path / "merged.xlsx", fill)))
    assert [fields for _, _, fields in rows] == [
        {"id": "spans", "a": None, "b": None},
        {"id": "k2", "a": "x", "b": "y"},
    ]


def test_a_merged_header_cell_is_an_empty_name(tmp_path: Path) -> None:
    def fill(book: Any, sheet: Any) -> None:
        sheet.merge_range(0, 0, 0, 1, "both", None)
        sheet.write(0, 2, "c")
        sheet.write_row(1, 0, [1, 2, 3])

    with pytest.raises(SourceFormatError, match="column 2 of the header has no name") as error:
        open_source(workbook(tmp_path / "header.xlsx", fill))
    assert "merged" in str(error.value)


def test_duplicate_header_names_are_an_error(tmp_path: Path) -> None:
    def fill(book: Any, sheet: Any) -> None:
        sheet.write_row(0, 0, ["id", "id"])
        sheet.write_row(1, 0, [1, 2])

    with pytest.raises(SourceFormatError, match="more than once"):
        open_source(workbook(tmp_path / "dup.xlsx", fill))


def test_a_value_right_of_the_header_names_its_cell(tmp_path: Path) -> None:
    def fill(book: Any, sheet: Any) -> None:
        sheet.write_row(0, 0, ["id", "name"])
        sheet.write_row(1, 0, ["a", "b"])
        sheet.write_row(4, 0, ["c", "d", "stray"])

    source = open_source(workbook(tmp_path / "stray.xlsx", fill))
    with pytest.raises(SourceFormatError, match="cell C5 has a value") as error:
        rows_of(source)
    assert error.value.line == 5


def test_sheets_are_chosen_by_name_and_a_missing_one_lists_them(tmp_path: Path) -> None:
    names = ["Q1 'draft' \"v2\"", "Ünïcödé ✓", "x" * 31]

    def fill(book: Any, sheet: Any) -> None:
        sheet.write_row(0, 0, ["id"])
        sheet.write_row(1, 0, ["first"])
        for name in names[1:]:
            other = book.get_worksheet_by_name(name)
            other.write_row(0, 0, ["id"])
            other.write_row(1, 0, [name])

    path = workbook(tmp_path / "sheets.xlsx", fill, names[0], *names[1:])
    assert rows_of(open_source(path))[0][2] == {"id": "first"}  # the first by default
    for name in names[1:]:
        assert rows_of(open_source(path, sheet=name))[0][2] == {"id": name}
    with pytest.raises(SourceNotFoundError) as error:
        open_source(path, sheet="a/b")
    message = str(error.value)
    assert "no sheet named 'a/b'" in message
    assert all(repr(name) in message for name in names)


def test_a_chart_sheet_is_no_table(tmp_path: Path) -> None:
    path = tmp_path / "chart.xlsx"
    with xlsxwriter.Workbook(str(path)) as book:
        chart = book.add_chart({"type": "line"})
        chart.add_series({"values": "=Data!$B$2:$B$3"})
        book.add_chartsheet("Trend").set_chart(chart)  # the first sheet in the workbook
        data = book.add_worksheet("Data")
        data.write_row(0, 0, ["id", "n"])
        data.write_row(1, 0, ["a", 1])
        data.write_row(2, 0, ["b", 2])
    assert open_source(path).sheet == "Data"  # type: ignore[attr-defined]
    with pytest.raises(SourceFormatError, match="'Trend' is a chart sheet") as error:
        open_source(path, sheet="Trend")
    assert "'Data'" in str(error.value)


def test_control_characters_and_long_texts_are_read_exactly(tmp_path: Path) -> None:
    texts = ["a\x01b\rc", "_x0041_ literal", "tab\tnew\nline", "é" * 32_767]

    def fill(book: Any, sheet: Any) -> None:
        sheet.write(0, 0, "text")
        for row, text in enumerate(texts, start=1):
            sheet.write_string(row, 0, text)

    rows = rows_of(open_source(workbook(tmp_path / "texts.xlsx", fill)))
    assert [fields["text"] for _, _, fields in rows] == texts


def test_a_password_protected_workbook_is_named(tmp_path: Path) -> None:
    # No free writer encrypts a workbook: this is an OLE file holding the stream an
    # encrypted .xlsx holds (the CFB magic, then "EncryptedPackage" in UTF-16LE).
    path = tmp_path / "secret.xlsx"
    path.write_bytes(OLE_MAGIC + bytes(504) + "EncryptedPackage".encode("utf-16-le"))
    with pytest.raises(SourceFormatError, match="password-protected"):
        open_source(path)


def test_an_old_xls_and_a_file_that_is_no_workbook_are_named(tmp_path: Path) -> None:
    old = tmp_path / "old.xlsx"
    old.write_bytes(OLE_MAGIC + bytes(1000))
    with pytest.raises(SourceFormatError, match=r"97-2003 \(.xls\)"):
        open_source(old)
    text = tmp_path / "text.xlsx"
    text.write_text("id,name\n1,a\n", encoding="utf-8")
    with pytest.raises(SourceFormatError, match="not an Excel workbook"):
        open_source(text)


def test_a_truncated_or_damaged_workbook_is_one_error(tmp_path: Path) -> None:
    def fill(book: Any, sheet: Any) -> None:
        sheet.write_row(0, 0, ["id"])
        for row in range(1, 200):
            sheet.write_row(row, 0, [f"k{row}"])

    whole = Path(workbook(tmp_path / "whole.xlsx", fill)).read_bytes()
    truncated = tmp_path / "truncated.xlsx"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(SourceFormatError, match="damaged"):
        open_source(truncated)
    bad_xml = tmp_path / "bad-xml.xlsx"
    with zipfile.ZipFile(tmp_path / "whole.xlsx") as good, zipfile.ZipFile(bad_xml, "w") as bad:
        for item in good.infolist():
            data = good.read(item)
            if item.filename == "xl/worksheets/sheet1.xml":
                data = data[: len(data) // 2]  # the sheet's XML cut in the middle of a row
            bad.writestr(item, data)
    with pytest.raises(SourceFormatError, match="damaged"):
        rows_of(open_source(bad_xml))  # met on opening or while reading rows


def test_a_sheet_with_a_header_and_no_rows_is_empty(tmp_path: Path) -> None:
    def fill(book: Any, sheet: Any) -> None:
        sheet.write_row(0, 0, ["id", "name"])

    with pytest.raises(EmptySourceError, match="no rows"):
        open_source(workbook(tmp_path / "empty.xlsx", fill))


def test_a_workbook_reads_the_same_twice(tmp_path: Path) -> None:
    def fill(book: Any, sheet: Any) -> None:
        sheet.write_row(0, 0, ["id", "n"])
        for row in range(1, 2_500):
            sheet.write_row(row, 0, [f"k{row}", row])

    source = open_source(workbook(tmp_path / "twice.xlsx", fill))
    assert isinstance(source, ExcelSource) and source.reiterable
    first = [row for chunk in source.chunks(1024) for row in chunk]
    assert [row for chunk in source.chunks(1024) for row in chunk] == first
    assert len(first) == 2_499 and first[-1] == (2_498, 2_500, {"id": "k2499", "n": 2499})


cells = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
    st.text(min_size=1, max_size=40),
)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(cells, min_size=3, max_size=3), min_size=1, max_size=8))
def test_any_typed_cells_written_by_excel_writers_read_back_as_written(
    tmp_path_factory: pytest.TempPathFactory, table: list[list[Any]]
) -> None:
    path = tmp_path_factory.mktemp("cells") / "cells.xlsx"
    table = [[f"k{index}", *row] for index, row in enumerate(table)]  # no row is all empty

    def fill(book: Any, sheet: Any) -> None:
        sheet.write_row(0, 0, ["id", "a", "b", "c"])
        for row, values in enumerate(table, start=1):
            for column, value in enumerate(values):
                if isinstance(value, str):
                    sheet.write_string(row, column, value)
                elif value is not None:
                    sheet.write(row, column, value)

    rows = rows_of(open_source(workbook(path, fill)))
    read = [[fields[name] for name in ("id", "a", "b", "c")] for _, _, fields in rows]
    # xlsxwriter writes floats with 16 digits (rowpilot's own sink writes them exactly).
    assert read == [[_sixteen_digits(value) for value in row] for row in table]


def _sixteen_digits(value: Any) -> Any:
    if type(value) is float:
        return float(f"{value:.16G}")
    return value
