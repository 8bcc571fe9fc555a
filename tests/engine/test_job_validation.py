"""engine/job.py: the validation pass is skipped for a file the last complete run read
unchanged (size, mtime in ns, inode), and runs again for a changed one; the items it read
go to the run when they fit the memory budget, so the file is read once."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import rowpilot
from rowpilot._config import build_config
from rowpilot.engine import job as job_module
from rowpilot.engine.items import KEPT_ROW_BYTES
from rowpilot.engine.job import PreparedJob, execute, prepare
from rowpilot.errors import SourceFormatError
from rowpilot.state.registry import REGISTRY_FILE
from rowpilot.tasks.base import Task


def echo(row: dict[str, Any]) -> dict[str, Any]:
    return {"echo": row["text"].upper()}


def write_rows(path: Path, count: int, extra: str = "") -> None:
    lines = ["id,text", *(f"k{i:03d},text {i}" for i in range(count))]
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")


def run(path: Path, state: Path, **options: Any) -> rowpilot.Result:
    return rowpilot.run(echo, path, key="id", state=state, progress=False, **options)


def validations(state: Path) -> list[str]:
    """What each run's log says of its validation pass, oldest run first."""
    started = []
    for log in (state / "logs").glob("*.jsonl"):
        first = json.loads(log.read_text(encoding="utf-8").splitlines()[0])
        assert first["event"] == "run.started"
        started.append(first)
    return [event["validation"] for event in sorted(started, key=lambda event: event["ts"])]


def test_an_unchanged_file_is_not_validated_again(tmp_path: Path) -> None:
    data, state = tmp_path / "data.csv", tmp_path / "state"
    write_rows(data, 20)
    assert run(data, state).summary.done == 20
    again = run(data, state)
    assert again.summary.skipped == 20 and again.summary.total == 20
    assert validations(state) == ["read", "skipped: the file is as the last complete run read it"]


def test_a_touched_file_is_validated_again(tmp_path: Path) -> None:
    data, state = tmp_path / "data.csv", tmp_path / "state"
    write_rows(data, 20)
    run(data, state)
    later = data.stat().st_mtime_ns + 1_000_000
    os.utime(data, ns=(later, later))  # same bytes, new mtime
    run(data, state)
    assert validations(state) == ["read", "read"]


def test_a_changed_file_is_validated_and_its_new_bad_row_caught_before_any_work(
    tmp_path: Path,
) -> None:
    data, state = tmp_path / "data.csv", tmp_path / "state"
    write_rows(data, 20)
    run(data, state)
    write_rows(data, 30, extra="k999,ragged,row\n")  # 10 new rows, then a bad one
    with pytest.raises(SourceFormatError, match="line 32"):
        run(data, state)
    assert validations(state) == ["read"]  # the bad file started no run
    with sqlite3.connect(state / REGISTRY_FILE) as db:
        assert db.execute("SELECT count(*) FROM items").fetchone() == (20,)


def test_another_selection_of_the_same_file_is_validated_again(tmp_path: Path) -> None:
    data, state = tmp_path / "data.csv", tmp_path / "state"
    write_rows(data, 20)
    run(data, state, limit=5)
    run(data, state)
    run(data, state)
    assert validations(state) == ["read", "read", validations(state)[-1]]
    assert validations(state)[-1].startswith("skipped")


# -- the validation pass's items handed to the run ---------------------------------------


class GroupedEcho(Task):
    """A task that takes groups of rows, as the local model's do."""

    name = "grouped_echo"
    version = "1"
    groups_rows = True
    rows_per_worker = 4

    def batch_call(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [echo(row) for row in rows]

    def call(self, row: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return echo(row)


def prepared(data: Path, state: Path, task: Any = None) -> PreparedJob:
    config = build_config(
        {"task": task or GroupedEcho(), "source": data, "key": "id", "state": state}
        | {"progress": False}
    )
    return prepare(config)


def test_a_file_that_fits_is_read_once_the_run_takes_the_validated_rows(tmp_path: Path) -> None:
    # What the run works on is what was validated: a file rewritten after the pass (here
    # with rows the pass never saw) changes nothing, since the run reads no file.
    data, state = tmp_path / "data.csv", tmp_path / "state"
    write_rows(data, 30)
    job = prepared(data, state)
    assert job.scan is not None and job.scan.kept is not None
    data.write_text("id,text\nother,never validated\n", encoding="utf-8")
    result = asyncio.run(execute(job))
    assert result.summary.done == 30
    outputs = {record.key: record.output for record in result}
    assert outputs == {f"k{i:03d}": {"echo": f"TEXT {i}"} for i in range(30)}
    assert job.scan.kept is None  # let go: the run holds each chunk only while it needs it


def test_a_file_past_the_budget_is_read_again_by_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, state = tmp_path / "data.csv", tmp_path / "state"
    write_rows(data, 30)
    monkeypatch.setattr(job_module, "KEEP_BYTES", data.stat().st_size + 10 * KEPT_ROW_BYTES)
    job = prepared(data, state)
    assert job.scan is not None and job.scan.kept is None and job.scan.total == 30
    result = asyncio.run(execute(job))
    assert result.summary.done == 30
    assert {record.key for record in result} == {f"k{i:03d}" for i in range(30)}


def test_a_task_of_one_row_at_a_time_keeps_nothing(tmp_path: Path) -> None:
    # Its memory stays flat in the row count; the run reads the file itself.
    data, state = tmp_path / "data.csv", tmp_path / "state"
    write_rows(data, 30)
    job = prepared(data, state, echo)
    assert job.scan is not None and job.scan.kept is None and job.scan.total == 30


def test_kept_rows_with_repeated_keys_run_each_key_once_from_its_first_row(
    tmp_path: Path,
) -> None:
    data, state = tmp_path / "data.csv", tmp_path / "state"
    data.write_text("id,text\na,first a\nb,only b\na,second a\n", encoding="utf-8")
    config = build_config(
        {"task": GroupedEcho(), "source": data, "key": "id", "state": state}
        | {"progress": False, "duplicates": "first"}
    )
    job = prepare(config)
    assert job.scan is not None and job.scan.kept is not None and job.scan.dropped == 1
    result = asyncio.run(execute(job))
    assert {record.key: record.output for record in result} == {
        "a": {"echo": "FIRST A"},
        "b": {"echo": "ONLY B"},
    }
