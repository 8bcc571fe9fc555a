"""Rows that would block a job: one that kills its process, one whose sync call never returns.

Real ``rowpilot run`` subprocesses over real SQLite. A poison row really ends its process
(``os._exit``, a segfault), and the same command is run again, as a user or a supervisor
would, until the job ends on its own: the row fails with cause ``process_crash``, every
other row is done once, and no row that merely ran beside it is blamed.

The tasks append each key to calls.txt with one unbuffered write before doing anything
else, so the tests can count how often each row really ran, however the process ended.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import invoke_cli

pytestmark = pytest.mark.slow

ROWPILOT = str(Path(sys.executable).parent / "rowpilot")
MAX_ATTEMPTS = 3  # rowpilot's default --max-attempts
CRASH_WARNING = "earlier run(s) ended without closing"

TASKS = """
import ctypes, os, resource, threading

POISON = os.environ.get("POISON_KEY")
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a segfault leaves no core file behind


def _record(key):
    # One unbuffered write: it outlives a process that dies right after it.
    fd = os.open("calls.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (key + "\\n").encode())
    finally:
        os.close(fd)


def exits(row):
    _record(row["id"])
    if row["id"] == POISON:
        os._exit(3)
    return {"echo": row["id"]}


def segfaults(row):
    _record(row["id"])
    if row["id"] == POISON:
        ctypes.string_at(0)
    return {"echo": row["id"]}


def hangs(row):
    _record(row["id"])
    if row["id"].endswith("3"):
        threading.Event().wait()
    return {"echo": row["id"]}


def hangs_after_the_first(row):
    _record(row["id"])
    if row["n"] != "0":
        threading.Event().wait()
    return {"echo": row["id"]}
"""


# -- helpers -------------------------------------------------------------------------------


def _job(folder: Path, rows: int) -> list[str]:
    """tasks.py and data.csv (columns id, n) in ``folder``; returns the keys in order."""
    (folder / "tasks.py").write_text(TASKS)
    width = len(str(rows - 1))
    keys = [f"key-{i:0{width}d}" for i in range(rows)]
    with (folder / "data.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "n"])
        writer.writerows([key, i] for i, key in enumerate(keys))
    return keys


def _run(job: Path, task: str, *extra: str, poison: str = "") -> subprocess.CompletedProcess[str]:
    command = [ROWPILOT, "run", "data.csv", "--task", f"tasks.py:{task}", "--key", "id"]
    env = {**os.environ, "POISON_KEY": poison, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [*command, *extra, "--state", "state"],
        cwd=job,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _until_it_ends(
    job: Path, task: str, poison: str, died: int
) -> list[subprocess.CompletedProcess[str]]:
    """Run the same command again while it dies with return code ``died`` (one more time
    than the promise allows, so that a job needing too many runs fails the test)."""
    runs: list[subprocess.CompletedProcess[str]] = []
    while len(runs) <= MAX_ATTEMPTS + 1:
        runs.append(_run(job, task, "--workers", "8", poison=poison))
        if runs[-1].returncode != died:
            break
    return runs


def _calls(job: Path) -> Counter[str]:
    path = job / "calls.txt"
    return Counter(path.read_text().split() if path.exists() else [])


def _failures(job: Path) -> list[dict[str, Any]]:
    """``rowpilot failures state``, parsed."""
    listed = invoke_cli("failures", "state", cwd=job)  # a read: no process needed
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line) for line in listed.stdout.splitlines()]


def _query(job: Path, sql: str, *params: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(job / "state" / "registry.sqlite")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def _in_flight_at_first_death(runs: list[subprocess.CompletedProcess[str]]) -> int:
    """What the first resume says it recovered: the items the first dead run had in flight."""
    found = re.search(r"with ([\d,]+) item\(s\) in flight", runs[1].stderr)
    assert found, runs[1].stderr
    return int(found[1].replace(",", ""))


def _assert_every_other_row_done_with_its_own_output(job: Path, keys: list[str]) -> None:
    items = _query(job, "SELECT key, status, output FROM items")
    assert sorted(key for key, _status, _output in items) == sorted(keys), "lost or extra keys"
    for key, status, output in items:
        if status == "done":
            assert json.loads(output) == {"echo": key}, "an output landed on the wrong row"


def _assert_poison_failed_alone(
    job: Path, keys: list[str], poison: str, runs: list[subprocess.CompletedProcess[str]]
) -> None:
    died, last = runs[:-1], runs[-1]
    assert len(runs) <= MAX_ATTEMPTS + 1, f"{len(runs)} runs: the job never ended"
    assert last.returncode == 1, last.stderr  # completed with failures
    assert "completed with failures" in last.stdout
    assert "process_crash 1" in last.stdout
    for resumed in runs[1:]:
        assert CRASH_WARNING in resumed.stderr, "a resume did not say what it recovered"

    # The poison row fails, with the cause and the crashes counted; nothing else fails.
    failed = _failures(job)
    assert [(f["key"], f["cause"], f["attempts"]) for f in failed] == [
        (poison, "process_crash", len(died))
    ]
    _assert_every_other_row_done_with_its_own_output(job, keys)
    causes = _query(job, "SELECT key, status, cause FROM items WHERE status != 'done'")
    assert causes == [(poison, "failed", "process_crash")]

    # It ran once per death and never in the run that failed it. The rows in flight
    # beside it when it first killed the process shared that crash: they are done above.
    calls = _calls(job)
    assert calls[poison] == len(died) == MAX_ATTEMPTS
    assert set(calls) == set(keys), "a row never ran"
    assert max(calls.values()) <= len(runs)
    assert _in_flight_at_first_death(runs) > 1, "the poison row ran alone: the test proves little"

    # The dead runs are closed as crashed; nothing of them is left to recover.
    statuses = [status for (status,) in _query(job, "SELECT status FROM runs ORDER BY started_at")]
    assert statuses == ["crashed"] * len(died) + ["completed_with_failures"]
    assert _query(job, "SELECT key FROM crashes") == []
    assert not list((job / "state" / "inflight").glob("*.keys"))


def _assert_a_rerun_changes_nothing(job: Path, task: str, poison: str) -> None:
    before = _calls(job)
    again = _run(job, task, "--workers", "8", poison=poison)
    assert again.returncode == 1, again.stderr  # the failure stands: not retried
    assert "1 failed earlier" in again.stdout
    assert CRASH_WARNING not in again.stderr
    assert _calls(job) == before, "a rerun ran a row again"


def _assert_retry_failed_runs_the_fixed_row(job: Path, task: str, poison: str) -> None:
    """Once the task is fixed, --retry-failed runs the row again, and only that row."""
    before = _calls(job)
    fixed = _run(job, task, "--workers", "8", "--retry-failed", poison="")
    assert fixed.returncode == 0, fixed.stderr
    assert _calls(job) - before == Counter([poison])
    assert _failures(job) == []
    [(status, output)] = _query(job, "SELECT status, output FROM items WHERE key = ?", poison)
    assert (status, json.loads(output)) == ("done", {"echo": poison})


# -- a row that kills the process ----------------------------------------------------------


@pytest.mark.parametrize(
    "poison", ["key-1234", "key-0000"], ids=["mid-job", "before-the-first-commit"]
)
def test_a_row_that_exits_the_process_fails_alone_and_the_job_ends(
    tmp_path: Path, poison: str
) -> None:
    keys = _job(tmp_path, rows=2000)

    runs = _until_it_ends(tmp_path, "exits", poison, died=3)

    for dead in runs[:-1]:
        assert "state: state" not in dead.stdout, "a run that died printed a summary"
    _assert_poison_failed_alone(tmp_path, keys, poison, runs)
    _assert_a_rerun_changes_nothing(tmp_path, "exits", poison)
    _assert_retry_failed_runs_the_fixed_row(tmp_path, "exits", poison)


def test_a_row_that_segfaults_fails_alone_and_the_job_ends(tmp_path: Path) -> None:
    keys = _job(tmp_path, rows=300)

    runs = _until_it_ends(tmp_path, "segfaults", "key-150", died=-signal.SIGSEGV)

    _assert_poison_failed_alone(tmp_path, keys, "key-150", runs)


# -- a sync call that never returns --------------------------------------------------------


def _run_to_its_end(job: Path, task: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """A CLI that does not exit on its own within the safety timeout fails the test."""
    try:
        return _run(job, task, *extra)
    except subprocess.TimeoutExpired:  # subprocess.run killed it
        pytest.fail("the CLI did not exit on its own: a hung sync call kept it alive")


HangingJob = tuple[Path, list[str], subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def hanging_job(tmp_path_factory: pytest.TempPathFactory) -> HangingJob:
    """One run of 40 rows whose keys ending in 3 block forever (the rest return at once):
    its folder, keys and finished CLI. Its tests only read it, so one run serves them all
    (each run waits out its hung calls' timeouts)."""
    job = tmp_path_factory.mktemp("hanging")
    keys = _job(job, rows=40)
    result = _run_to_its_end(
        job, "hangs", "--workers", "4", "--timeout", "1", "--max-attempts", "2"
    )
    return job, keys, result


def test_sync_calls_that_never_return_time_out_and_the_cli_exits(hanging_job: HangingJob) -> None:
    job, keys, result = hanging_job
    hung = {key for key in keys if key.endswith("3")}

    assert result.returncode == 1, result.stderr
    assert "state: state" in result.stdout, "no summary"
    assert "failed by cause: timeout 4" in result.stdout
    failed = _failures(job)
    assert {f["key"] for f in failed} == hung
    assert {(f["cause"], f["attempts"]) for f in failed} == {("timeout", 2)}
    # No other row timed out waiting behind the stuck calls: each ran once and is done.
    _assert_every_other_row_done_with_its_own_output(job, keys)
    assert _query(job, "SELECT count(*) FROM items WHERE status = 'done'") == [(36,)]
    calls = _calls(job)
    assert {key: calls[key] for key in hung} == dict.fromkeys(hung, 2)
    assert all(calls[key] == 1 for key in keys if key not in hung)


def test_hung_calls_within_the_attempts_end_as_completed_with_failures(
    hanging_job: HangingJob,
) -> None:
    _, _, result = hanging_job

    assert "completed with failures: 36 done, 4 failed" in result.stdout
    assert "left pending" not in result.stdout
    assert result.returncode == 1


def test_a_run_stopped_for_stuck_calls_does_not_wait_out_the_grace(tmp_path: Path) -> None:
    _job(tmp_path, rows=40)

    # Two workers: every row but the first hangs, so the stuck calls soon hold every
    # thread the pool may have, and the rows admitted behind them can never start.
    result = _run_to_its_end(
        tmp_path,
        "hangs_after_the_first",
        "--workers",
        "2",
        "--timeout",
        "0.5",
        "--max-attempts",
        "1",
        "--grace",
        "3600",
    )

    assert result.returncode == 2, result.stderr
    assert "stuck past --timeout" in result.stdout
    assert "items not processed yet" in result.stdout  # the rest is left pending
