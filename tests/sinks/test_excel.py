"""The Excel sink: what rowpilot writes to an .xlsx reads back through rowpilot's Excel
source as it was (neutralised text aside), with a frozen header, column widths, and
Excel's limits as one-line errors; a run's -o out.xlsx and ``export --to`` write it."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rowpilot
from rowpilot.errors import OutputPathError
from rowpilot.sinks.cells import neutralise_cell
from rowpilot.sinks.excel import sheet_name_for, write_workbook
from rowpilot.sources import open_source

if TYPE_CHECKING:
    from conftest import Cli


def read_back(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    source = open_source(path)
    return source.columns(), [fields for chunk in source.chunks() for _, _, fields in chunk]


cells = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # beyond ±2**53 written as text, which reads back as the same digits
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(["'quoted", "=1+1", "-5", "_x0041_", "a\x00b", "\r\n", " "]),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(cells, min_size=2, max_size=2), min_size=1, max_size=8))
def test_any_table_of_typed_cells_round_trips(
    tmp_path_factory: pytest.TempPathFactory, table: list[list[Any]]
) -> None:
    path = tmp_path_factory.mktemp("round") / "out.xlsx"
    rows = [[f"k{index}", *row] for index, row in enumerate(table)]
    assert write_workbook(path, ["id", "a", "b"], ((row[0], row) for row in rows)) == len(rows)
    columns, read = read_back(path)
    assert columns == ["id", "a", "b"]
    expected = [[_as_read(value) for value in row] for row in rows]
    assert [[fields[name] for name in columns] for fields in read] == expected


def _as_read(value: Any) -> Any:
    """What a written value reads back as: exact, but for Excel's own rules."""
    if value == "":
        return None  # an empty text is an empty cell
    if isinstance(value, str):
        return neutralise_cell(value)  # the one leading quote is data: it reads back
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        return str(value)
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)  # Excel has one number type: a whole one reads as an int
    return value


def test_text_that_a_spreadsheet_would_run_is_neutralised(tmp_path: Path) -> None:
    path = tmp_path / "guard.xlsx"
    hostile = ['=HYPERLINK("http://x")', "+1+1", "-2-2", "@SUM(A1)", "\t=1", "-5", "plain"]
    rows = [(text, [text]) for text in hostile]
    write_workbook(path, ["=cmd|' /C calc'!A0"], rows)
    columns, read = read_back(path)
    assert columns == ["'=cmd|' /C calc'!A0"]
    assert [row[columns[0]] for row in read] == [
        '\'=HYPERLINK("http://x")',
        "'+1+1",
        "'-2-2",
        "'@SUM(A1)",
        "'\t=1",
        "-5",  # a plain number stays as it is (a text cell)
        "plain",
    ]
    with zipfile.ZipFile(path) as archive:
        sheet = archive.read("xl/worksheets/sheet1.xml").decode("utf-8")
    assert "<f>" not in sheet  # no cell is a formula


def test_the_header_is_frozen_and_columns_are_as_wide_as_their_values(tmp_path: Path) -> None:
    path = tmp_path / "enriched.xlsx"
    write_workbook(path, ["id", "summary"], [("a", ["a", "x" * 40]), ("b", ["b", "y" * 500])])
    with zipfile.ZipFile(path) as archive:
        sheet = archive.read("xl/worksheets/sheet1.xml").decode("utf-8")
        book = archive.read("xl/workbook.xml").decode("utf-8")
    assert 'state="frozen"' in sheet and 'ySplit="1"' in sheet
    assert '<col min="1" max="1" width="' in sheet
    widths = [float(part.split('"')[0]) for part in sheet.split('width="')[1:]]
    assert widths[0] < 10 < widths[1] and widths[1] <= 63  # the widest capped at 60 + 2
    assert 'name="enriched"' in book


@pytest.mark.parametrize(
    ("file_name", "sheet"),
    [
        ("out.xlsx", "out"),
        ("a[1]:b*c?.xlsx", "a_1__b_c_"),
        ("'quoted'.xlsx", "quoted"),
        ("History.xlsx", "rows"),
        ("x" * 40 + ".xlsx", "x" * 31),
        ("😀" * 20 + ".xlsx", "😀" * 15),  # 31 UTF-16 units at most: 15 emoji
    ],
)
def test_the_sheet_is_named_after_the_file_within_excels_rules(
    tmp_path: Path, file_name: str, sheet: str
) -> None:
    assert sheet_name_for(Path(file_name)) == sheet
    path = tmp_path / file_name
    write_workbook(path, ["id"], [("k", ["k"])])  # xlsxwriter refuses a bad name
    assert open_source(path).sheet == sheet  # type: ignore[attr-defined]


def test_a_text_over_excels_cell_limit_stops_the_export_naming_row_and_column(
    tmp_path: Path,
) -> None:
    path = tmp_path / "long.xlsx"
    path.write_bytes(b"the old file")
    rows = [("k1", ["k1", "fits"]), ("k2", ["k2", "z" * 32_768])]
    with pytest.raises(OutputPathError) as error:
        write_workbook(path, ["id", "text"], rows)
    message = str(error.value)
    assert "row 3 (key 'k2'), column 'text'" in message and "32,767" in message
    assert "\n" not in message
    assert path.read_bytes() == b"the old file"  # written atomically: the old file stays
    assert list(tmp_path.iterdir()) == [path]
    exactly = tmp_path / "exact.xlsx"
    write_workbook(exactly, ["text"], [("k", ["z" * 32_767])])
    assert read_back(exactly)[1] == [{"text": "z" * 32_767}]


def test_a_lone_surrogate_is_an_error_naming_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "keys.xlsx"
    with pytest.raises(OutputPathError, match=r"row 2 \(key 'b\\udcff'\), column 'id'"):
        write_workbook(path, ["id"], [("b\udcff", ["b\udcff"])])
    assert not path.exists()


def test_control_characters_make_no_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "control.xlsx"
    texts = ["a\x00b", "\x01\x02\x1f", "bell\x07", "_x0041_", "ok\r\n"]
    write_workbook(path, ["text"], [(None, [text]) for text in texts])
    assert [row["text"] for row in read_back(path)[1]] == texts


def test_values_excel_has_no_number_for(tmp_path: Path) -> None:
    path = tmp_path / "odd.xlsx"
    values = [math.nan, math.inf, -math.inf, 2**60 + 1, {"a": [1, 2]}, ["x"]]
    write_workbook(path, ["k", "v"], [(None, [str(i), v]) for i, v in enumerate(values)])
    read = [row["v"] for row in read_back(path)[1]]
    assert read == [None, "inf", "'-inf", str(2**60 + 1), '{"a": [1, 2]}', '["x"]']


def test_a_run_writes_out_xlsx_and_export_writes_it_again(
    tmp_path: Path, cli: Cli, tasks_file: Path
) -> None:
    source = tmp_path / "in.xlsx"
    write_workbook(source, ["id", "text", "n"], [(k, [k, f"say {k}", 7]) for k in ("a", "b")])
    run = cli("run", source, "--task", "tasks.py:upper", "--key", "id", "-o", "out.xlsx")
    assert run.returncode == 0, run.stderr
    assert "table: out.xlsx (2 rows)" in run.stdout
    columns, rows = read_back(tmp_path / "out.xlsx")
    assert columns == ["id", "text", "n", "upper"]
    assert rows == [
        {"id": "a", "text": "say a", "n": 7, "upper": "SAY A"},
        {"id": "b", "text": "say b", "n": 7, "upper": "SAY B"},
    ]
    export = cli("export", ".rowpilot/in-upper", "-o", "again.xlsx")
    assert export.returncode == 0, export.stderr
    assert read_back(tmp_path / "again.xlsx") == (columns, rows)


def test_the_python_api_reads_a_sheet_from_its_header_row(tmp_path: Path) -> None:
    import xlsxwriter

    path = tmp_path / "book.xlsx"
    with xlsxwriter.Workbook(str(path)) as book:
        book.add_worksheet("Notes").write(0, 0, "not this one")
        sheet = book.add_worksheet('Orders "Q1"')
        sheet.write(0, 0, "Orders")
        sheet.write_row(2, 0, ["id", "qty"])
        sheet.write_row(3, 0, ["o1", 2])
    result = rowpilot.run(
        lambda row: {"double": row["qty"] * 2},
        path,
        key="id",
        sheet='Orders "Q1"',
        header_row=3,
        state=tmp_path / "state",
    )
    assert result.to_pandas().to_dict("records") == [{"id": "o1", "qty": 2, "double": 4}]


def test_a_dataframe_with_numpy_cells_is_written_typed(tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd

    from rowpilot.local_model.dedupe import write_frame

    frame = pd.DataFrame(
        {
            "id": ["a", "b"],
            "cluster": np.array([0, 1]),
            "score": [0.5, np.nan],
            "dup": [True, False],
        }
    )
    write_frame(frame, tmp_path / "clusters.xlsx")
    assert read_back(tmp_path / "clusters.xlsx") == (
        ["id", "cluster", "score", "dup"],
        [
            {"id": "a", "cluster": 0, "score": 0.5, "dup": True},
            {"id": "b", "cluster": 1, "score": None, "dup": False},
        ],
    )
