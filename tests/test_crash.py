"""Crash and signal tests: real CLI subprocesses killed with SIGKILL and SIGINT.

The task appends each key to calls.txt before returning, so the tests can count how
often the task really ran, however the process died.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROWPILOT = str(Path(sys.executable).parent / "rowpilot")
ROWS = 600
WORKERS = 4
WINDOW = 2 * WORKERS  # items admitted but not yet committed: what one kill can lose

TASKS = """
import os, time

def record(row):
    with open("calls.txt", "a") as calls:
        calls.write(row["id"] + "\\n")
        calls.flush()
        os.fsync(calls.fileno())
    time.sleep(float(os.environ.get("TASK_SLEEP", "0.004")))
    return {"double": int(row["n"]) * 2, "echo": row["id"]}
"""


@pytest.fixture
def job(tmp_path: Path) -> Path:
    (tmp_path / "tasks.py").write_text(TASKS)
    with (tmp_path / "data.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "n"])
        writer.writerows([f"key-{i:04d}", i] for i in range(ROWS))
    return tmp_path


def _command(*extra: str) -> list[str]:
    return [
        ROWPILOT,
        "run",
        "data.csv",
        "--task",
        "tasks.py:record",
        "--key",
        "id",
        "--workers",
        str(WORKERS),
        "--state",
        "state",
        *extra,
    ]


def _start(cwd: Path, *extra: str, sleep: float = 0.004) -> subprocess.Popen[str]:
    env = {**os.environ, "TASK_SLEEP": str(sleep), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        _command(*extra),
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _calls(cwd: Path) -> list[str]:
    path = cwd / "calls.txt"
    return path.read_text().split() if path.exists() else []


def _wait_for_calls(cwd: Path, more_than: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(_calls(cwd)) <= more_than:
        assert time.monotonic() < deadline, "the task never ran"
        time.sleep(0.01)


def _integrity(cwd: Path) -> list[tuple[str, str, str | None]]:
    db = sqlite3.connect(cwd / "state" / "registry.sqlite")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return db.execute("SELECT key, status, output FROM items").fetchall()
    finally:
        db.close()


def _assert_outputs_right(cwd: Path) -> None:
    with (cwd / "out.csv").open(newline="") as table:
        rows = list(csv.DictReader(table))
    keys = [row["id"] for row in rows]
    assert len(keys) == ROWS
    assert len(set(keys)) == ROWS, "a key appears more than once"
    for row in rows:
        assert row["echo"] == row["id"], "an output landed on the wrong row"
        assert int(row["double"]) == 2 * int(row["n"])


def test_sigkill_several_times_then_resume_runs_each_item_once(job: Path) -> None:
    rng = random.Random(7)
    kills = 4
    for _ in range(kills):
        before = len(_calls(job))
        process = _start(job)
        _wait_for_calls(job, before)
        time.sleep(rng.uniform(0.05, 0.4))
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=10)
        for _key, status, output in _integrity(job):
            assert status == "done" and output is not None
    final = subprocess.run(
        _command("-o", "out.csv"),
        cwd=job,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TASK_SLEEP": "0.004"},
    )
    assert final.returncode == 0, final.stderr
    _assert_outputs_right(job)
    calls = _calls(job)
    assert set(calls) == {f"key-{i:04d}" for i in range(ROWS)}
    assert len(calls) <= ROWS + WINDOW * kills, f"{len(calls)} calls for {ROWS} rows"
    repeats = Counter(calls)
    assert max(repeats.values()) <= kills + 1


def test_sigint_stops_gracefully_commits_and_the_printed_command_resumes(job: Path) -> None:
    process = _start(job, "-o", "out.csv", sleep=0.02)
    _wait_for_calls(job, 20)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "stopping" in stderr
    resume = next(line for line in stdout.splitlines() if line.startswith("to resume, run:"))
    interrupted_calls = len(_calls(job))
    committed = _integrity(job)
    # Graceful: every item that ran to the end before the stop was committed.
    assert len(committed) == interrupted_calls
    assert all(status == "done" for _key, status, _output in committed)

    command = resume.removeprefix("to resume, run: ").split()
    assert command[:2] == ["rowpilot", "run"]
    again = subprocess.run(
        [ROWPILOT, *command[1:]],
        cwd=job,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TASK_SLEEP": "0.001"},
    )
    assert again.returncode == 0, again.stderr
    _assert_outputs_right(job)
    assert len(_calls(job)) == ROWS, "a graceful stop must not make any item run twice"


def test_second_sigint_cancels_hung_items(job: Path) -> None:
    process = _start(job, "--grace", "60", sleep=30)
    _wait_for_calls(job, WORKERS - 1)
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    _stdout, stderr = process.communicate(timeout=30)
    assert time.monotonic() - started < 10, "hung items were not cancelled"
    assert process.returncode == 130, stderr
    assert not (job / "state" / "registry.sqlite").exists() or _integrity(job) == []


def test_second_run_on_the_same_state_is_refused_while_the_first_runs(job: Path) -> None:
    first = _start(job, sleep=0.05)
    try:
        _wait_for_calls(job, 0)
        second = subprocess.run(_command(), cwd=job, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        assert "another run is using" in second.stderr
        assert second.stderr.count("\n") == 1
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
