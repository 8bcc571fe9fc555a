"""The Google Sheets write-back and export (sinks/gsheet.py) against the fake Sheets API on
127.0.0.1 (tests/fake_sheets.py): batching counted at the fake, cells found by key after a
re-sort, hand edits left alone, 429s honoured, the next run's inputs unchanged."""

from __future__ import annotations

import math
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import rowpilot
from conftest import wait_until
from fake_sheets import FakeSheets
from rowpilot.sinks.gsheet import cell_value, same_cell
from rowpilot.state.writeback import LEDGER_FILE

BOOK = "book1"
CALLS: list[str] = []
MARK = {"after": ""}  # what a second version of the task puts after its answer


def upper(row: dict[str, Any]) -> dict[str, Any]:
    CALLS.append(str(row["id"]))
    answer = str(row["text"]).upper() + MARK["after"]
    return {"upper": answer, "length": len(str(row["text"]))}


def _sheet(fake: FakeSheets, rows: int) -> None:
    fake.add_sheet(BOOK, "S", [["id", "text"], *[[f"k{i}", f"text {i}"] for i in range(rows)]])


def _run(state: Path, **settings: Any) -> rowpilot.Result:
    settings = {"write_interval": 600.0, "sheets_write_rpm": 6000.0, **settings}
    return rowpilot.run(
        upper, f"gsheet://{BOOK}/S", key="id", state=state, write_back=True, **settings
    )


def _by_key(fake: FakeSheets) -> dict[str, dict[str, Any]]:
    return {str(row["id"]): row for row in fake.table(BOOK, "S")}


def _written_cells(fake: FakeSheets) -> int:
    """Output cells the write requests carried (the header row's cells left out)."""
    return sum(
        len(data["values"][0])
        for write in fake.writes()
        if write.kind == "values.batchUpdate"
        for data in write.body["data"]
        if not re.search(r"![A-Z]+1$", data["range"])
    )


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    CALLS.clear()
    MARK["after"] = ""


def test_outputs_go_to_their_rows_in_batched_writes(
    fake_sheets: FakeSheets, tmp_path: Path
) -> None:
    _sheet(fake_sheets, 10)
    result = _run(tmp_path / "state", write_batch=4)
    assert result.summary.done == 10
    rows = _by_key(fake_sheets)
    assert all(rows[f"k{i}"]["upper"] == f"TEXT {i}" for i in range(10))
    assert all(rows[f"k{i}"]["length"] == len(f"text {i}") for i in range(10))
    assert fake_sheets.sheet(BOOK, "S").rows[0] == ["id", "text", "upper", "length"]
    assert fake_sheets.count("values.batchUpdate") <= math.ceil(10 / 4)
    assert fake_sheets.rate_limited == 0
    assert any("write-back: gsheet://book1/S (10 rows written" in line for line in result.written)


def test_a_second_run_after_a_write_back_reads_the_same_inputs(
    fake_sheets: FakeSheets, tmp_path: Path, cli: Any
) -> None:
    _sheet(fake_sheets, 6)
    _run(tmp_path / "state")
    writes = len(fake_sheets.writes())
    again = _run(tmp_path / "state")
    assert (again.summary.done, again.summary.skipped) == (0, 6)  # no output became an input
    assert len(CALLS) == 6
    assert len(fake_sheets.writes()) == writes  # nothing written twice
    plain = rowpilot.run(upper, f"gsheet://{BOOK}/S", key="id", state=tmp_path / "state")
    assert (plain.summary.done, plain.summary.skipped) == (0, 6)  # nor without --write-back
    verified = cli("verify", tmp_path / "state", "--source", f"gsheet://{BOOK}/S", "--key", "id")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_rows_resorted_and_inserted_between_runs_get_their_own_outputs(
    fake_sheets: FakeSheets, tmp_path: Path
) -> None:
    _sheet(fake_sheets, 8)
    _run(tmp_path / "state", limit=3, write_batch=2)
    sheet = fake_sheets.sheet(BOOK, "S")
    body = sheet.rows[1:]
    body.reverse()
    sheet.rows[1:] = [body[0], ["new", "inserted"], *body[1:]]
    _run(tmp_path / "state", write_batch=2)
    rows = _by_key(fake_sheets)
    for key, row in rows.items():
        assert row["upper"] == str(row["text"]).upper(), key
    assert _written_cells(fake_sheets) == 2 * 9  # every output cell written exactly once


def test_data_below_an_empty_header_cell_is_not_overwritten(
    fake_sheets: FakeSheets, tmp_path: Path
) -> None:
    fake_sheets.add_sheet(
        BOOK, "S", [["id", "text"], ["k0", "a", "a note without a header"], ["k1", "b"]]
    )
    result = _run(tmp_path / "state")
    rows = _by_key(fake_sheets)
    assert rows["k0"]["upper"] == "a note without a header"
    assert rows["k1"]["upper"] == "B"
    assert any("1 cells left as edited by hand" in line for line in result.written)


def test_a_header_below_notes_gets_its_outputs_in_its_own_row(
    fake_sheets: FakeSheets, tmp_path: Path
) -> None:
    fake_sheets.add_sheet(
        BOOK, "S", [["notes: do not sort above"], ["id", "text"], ["k0", "a"], ["k1", "b"]]
    )
    _run(tmp_path / "state", header_row=2)
    sheet = fake_sheets.sheet(BOOK, "S")
    assert sheet.rows[0] == ["notes: do not sort above"]
    assert sheet.rows[1] == ["id", "text", "upper", "length"]
    assert [row[2] for row in sheet.rows[2:]] == ["A", "B"]


def test_a_batch_that_is_not_full_is_written_after_the_interval(
    fake_sheets: FakeSheets, tmp_path: Path
) -> None:
    fake_sheets.add_sheet(BOOK, "S", [["id", "text"], *[[f"k{i}", "x"] for i in range(4)]])
    fake_sheets.sheet(BOOK, "S").rows.append(["hold", "last"])
    go = threading.Event()

    def held(row: dict[str, Any]) -> dict[str, Any]:
        if row["id"] == "hold":
            assert go.wait(60)
        return {"upper": str(row["text"]).upper()}

    run = threading.Thread(
        target=rowpilot.run,
        args=(held, f"gsheet://{BOOK}/S"),
        kwargs={
            "key": "id",
            "state": tmp_path / "state",
            "write_back": True,
            "write_batch": 100,
            "write_interval": 0.01,
            "sheets_write_rpm": 6000.0,
        },
    )
    run.start()
    try:  # four rows done, one in flight: the batch of 100 is written by the interval
        wait_until(lambda: _written_cells(fake_sheets) == 4, "the first rows' write")
    finally:
        go.set()
        run.join()
    assert _by_key(fake_sheets)["hold"]["upper"] == "LAST"
    assert _written_cells(fake_sheets) == 5


def test_every_done_item_is_written_by_a_run_with_nothing_left_to_do(
    fake_sheets: FakeSheets, tmp_path: Path
) -> None:
    _sheet(fake_sheets, 5)
    rowpilot.run(upper, f"gsheet://{BOOK}/S", key="id", state=tmp_path / "state")
    assert fake_sheets.writes() == []
    result = _run(tmp_path / "state")
    assert (result.summary.done, result.summary.skipped, len(CALLS)) == (0, 5, 5)
    assert all(row["upper"] == str(row["text"]).upper() for row in fake_sheets.table(BOOK, "S"))


def test_a_cell_edited_by_hand_is_reported_not_overwritten(
    fake_sheets: FakeSheets, tmp_path: Path
) -> None:
    _sheet(fake_sheets, 4)
    _run(tmp_path / "state")
    sheet = fake_sheets.sheet(BOOK, "S")
    row = next(i for i, r in enumerate(sheet.rows) if r[0] == "k2")
    sheet.rows[row][2] = "checked by Ann"
    MARK["after"] = "!"
    redone = _run(tmp_path / "state", task_version="v2")  # every output changes
    rows = _by_key(fake_sheets)
    assert rows["k2"]["upper"] == "checked by Ann"
    assert rows["k2"]["length"] == 6  # the same value: in place, nothing to report
    assert rows["k1"]["upper"] == "TEXT 1!"  # what rowpilot wrote is rowpilot's to replace
    line = next(line for line in redone.written if line.startswith("write-back"))
    assert "1 cells left as edited by hand (key 'k2' column 'upper' (C" in line


def test_a_429_waits_as_told_and_the_write_goes_again(
    fake_sheets: FakeSheets, tmp_path: Path
) -> None:
    fake_sheets.write_quota = 1
    # The fake's minute ends whenever it has told the client to wait: the client's pause
    # for Retry-After is that minute passing, on a clock the test holds.
    fake_sheets.clock = lambda: 60.0 * fake_sheets.rate_limited
    _sheet(fake_sheets, 6)
    _run(tmp_path / "state", write_batch=2)
    assert all(row["upper"] == str(row["text"]).upper() for row in fake_sheets.table(BOOK, "S"))
    writes = fake_sheets.count("values.batchUpdate")
    assert writes == 3
    assert fake_sheets.rate_limited == writes - 1  # one refusal per used-up minute: no storm


def test_a_server_error_is_retried_with_backoff(fake_sheets: FakeSheets, tmp_path: Path) -> None:
    fake_sheets.fail_writes = [500]
    _sheet(fake_sheets, 3)
    _run(tmp_path / "state")
    assert [r.status for r in fake_sheets.requests if r.kind == "values.batchUpdate"] == [500, 200]
    assert _written_cells(fake_sheets) == 2 * 3


def test_a_full_grid_is_widened_before_the_header_is_written(
    fake_sheets: FakeSheets, tmp_path: Path
) -> None:
    _sheet(fake_sheets, 2)
    fake_sheets.sheet(BOOK, "S").column_count = 3
    _run(tmp_path / "state")
    assert fake_sheets.sheet(BOOK, "S").column_count == 4
    assert _by_key(fake_sheets)["k0"]["length"] == 6


def test_write_back_needs_a_key_and_a_sheet(fake_sheets: FakeSheets, tmp_path: Path) -> None:
    _sheet(fake_sheets, 2)
    with pytest.raises(rowpilot.errors.ConfigError, match="pass --key"):
        rowpilot.run(upper, f"gsheet://{BOOK}/S", state=tmp_path / "s", write_back=True)
    data = tmp_path / "data.csv"
    data.write_text("id,text\na,b\n", encoding="utf-8")
    with pytest.raises(rowpilot.errors.ConfigError, match="Google Sheets source"):
        rowpilot.run(upper, data, key="id", state=tmp_path / "s", write_back=True)
    assert not (tmp_path / "s").exists()


def test_export_writes_the_table_to_a_new_worksheet(
    fake_sheets: FakeSheets, tmp_path: Path, cli: Any
) -> None:
    _sheet(fake_sheets, 5)
    state = tmp_path / "state"
    _run(state)
    target = f"gsheet://{BOOK}/Results"
    fast = ("--sheets-write-rpm", "6000")
    done = cli("export", state, "--to", target, *fast)
    assert done.returncode == 0, done.stderr
    table = fake_sheets.table(BOOK, "Results")
    assert [row["id"] for row in table] == [f"k{i}" for i in range(5)]
    assert table[3]["upper"] == "TEXT 3"
    refused = cli("export", state, "--to", target, *fast)
    assert refused.returncode == 2 and "--replace" in refused.stderr
    fake_sheets.sheet(BOOK, "Results").rows.append(["stale", "row"])
    replaced = cli("export", state, "--to", target, "--replace", *fast)
    assert replaced.returncode == 0, replaced.stderr
    assert [row["id"] for row in fake_sheets.table(BOOK, "Results")][-1] == "k4"
    assert (state / LEDGER_FILE).exists()


@given(st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=20)))
def test_property_a_value_written_reads_back_as_itself(value: Any) -> None:
    cell = cell_value(value)
    assert same_cell(cell, cell)
    read_back = "" if cell in ("", None) else cell  # an empty cell reads back as ""
    assert same_cell(read_back, cell_value(value))


@given(st.lists(st.integers(), min_size=1, max_size=5))
def test_property_lists_are_written_as_json_text(values: list[int]) -> None:
    assert cell_value(values) == "[" + ",".join(str(v) for v in values) + "]"
