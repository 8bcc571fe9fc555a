"""A write-back killed with SIGKILL (the real CLI in a subprocess, against the fake Sheets
API): before anything was written, and with a batch applied by the server but never
acknowledged. Between the runs the sheet is re-sorted and a row inserted; after the resume
every output is in its own row, and every output cell was written exactly once."""

from __future__ import annotations

import re
import signal
import sqlite3
from pathlib import Path

from conftest import Cli, start_cli, wait_until
from fake_sheets import FakeSheets

BOOK = "book1"
TASK = """\
import time
from pathlib import Path

GO = Path(__file__).resolve().parent / "go"


def upper(row):
    if row["id"] == "hold" and not GO.exists():
        while not GO.exists():  # the test kills the run while this row is in flight
            time.sleep(0.01)
    return {"upper": str(row["text"]).upper()}
"""


def _args(tmp_path: Path, batch: int) -> list[str]:
    return [
        "run",
        f"gsheet://{BOOK}/S",
        "--task",
        str(tmp_path / "tasks.py") + ":upper",
        "--key",
        "id",
        "--write-back",
        "--write-batch",
        str(batch),
        "--write-interval",
        "600",
        "--sheets-write-rpm",
        "6000",
        "--state",
        "state",
        "--no-progress",
    ]


def _done(state: Path) -> int:
    try:
        with sqlite3.connect(f"file:{state / 'registry.sqlite'}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT count(*) FROM items WHERE status='done'").fetchone()[0])
    except sqlite3.Error:
        return 0


def _sheet(fake: FakeSheets, count: int, tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text(TASK, encoding="utf-8")
    rows = [[f"k{i}", f"text {i}"] for i in range(count - 1)]
    fake.add_sheet(BOOK, "S", [["id", "text"], *rows, ["hold", "last one"]])


def _resort_and_insert(fake: FakeSheets) -> None:
    sheet = fake.sheet(BOOK, "S")
    body = list(reversed(sheet.rows[1:]))
    sheet.rows[1:] = [body[0], ["new", "inserted row"], *body[1:]]


def _written_cells(fake: FakeSheets) -> int:
    return sum(
        len(data["values"][0])
        for write in fake.writes()
        if write.kind == "values.batchUpdate"
        for data in write.body["data"]
        if not re.search(r"![A-Z]+1$", data["range"])
    )


def _check_every_row(fake: FakeSheets, rows: int) -> None:
    table = fake.table(BOOK, "S")
    assert len(table) == rows
    for row in table:
        assert row["upper"] == str(row["text"]).upper(), row["id"]
    assert _written_cells(fake) == rows  # each output cell written exactly once


def test_a_kill_before_the_write_back_loses_nothing(
    fake_sheets: FakeSheets, tmp_path: Path, cli: Cli
) -> None:
    _sheet(fake_sheets, 6, tmp_path)
    process = start_cli(*_args(tmp_path, batch=100), cwd=tmp_path, to_kill=True)
    wait_until(lambda: _done(tmp_path / "state") == 5, "five rows done")
    assert fake_sheets.count("values.batchUpdate") == 0  # waiting for its batch to fill
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    _resort_and_insert(fake_sheets)
    (tmp_path / "go").touch()
    resumed = cli(*_args(tmp_path, batch=100))  # the resume: in this process
    assert resumed.returncode == 0, resumed.stderr
    _check_every_row(fake_sheets, 7)
    assert fake_sheets.count("values.batchUpdate") == 1


def test_a_kill_with_a_batch_written_but_not_acknowledged_writes_it_once(
    fake_sheets: FakeSheets, tmp_path: Path, cli: Cli
) -> None:
    _sheet(fake_sheets, 12, tmp_path)
    fake_sheets.hold_write = 3
    process = start_cli(*_args(tmp_path, batch=2), cwd=tmp_path, to_kill=True)
    assert fake_sheets.held.wait(60), "the third write never came"
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    fake_sheets.release.set()
    _resort_and_insert(fake_sheets)
    (tmp_path / "go").touch()
    resumed = cli(*_args(tmp_path, batch=2))
    assert resumed.returncode == 0, resumed.stderr
    assert "already in place" in resumed.stdout  # the unacknowledged batch, found written
    _check_every_row(fake_sheets, 13)
