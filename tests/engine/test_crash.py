"""Crash and signal tests: real CLI subprocesses killed with SIGKILL and SIGINT.

The task appends each key to calls.txt before returning, so the tests can count how
often the task really ran, however the process died. The merge tests kill ``rowpilot
merge`` while it builds the merged registry of large shards. Every run that is killed or
signalled is a real process; the runs and reads around them (the resume, status, export,
verify of the small jobs) go through the CLI's entry point in-process.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
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

from conftest import invoke_cli, unmeasured
from rowpilot.engine.items import encode_json, fingerprint
from rowpilot.state.registry import Outcome, Registry

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


def _start(
    cwd: Path, *extra: str, sleep: float = 0.004, to_kill: bool = False
) -> subprocess.Popen[str]:
    """The run as a real process; ``to_kill``: the test SIGKILLs it (unmeasured)."""
    env = {**os.environ, "TASK_SLEEP": str(sleep), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        _command(*extra),
        cwd=cwd,
        env=unmeasured(env) if to_kill else env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _in_process(
    *args: str | Path, cwd: Path, sleep: float = 0.004
) -> subprocess.CompletedProcess[str]:
    """``rowpilot ARGS`` through the CLI's entry point in this process, for the runs that are
    not killed (a killed run is always a real process): an interpreter start saved each."""
    before = os.environ.get("TASK_SLEEP")
    os.environ["TASK_SLEEP"] = str(sleep)
    try:
        return invoke_cli(*map(str, args), cwd=cwd)
    finally:
        if before is None:
            del os.environ["TASK_SLEEP"]
        else:
            os.environ["TASK_SLEEP"] = before


def _calls(cwd: Path) -> list[str]:
    path = cwd / "calls.txt"
    return path.read_text().split() if path.exists() else []


def _wait_for_calls(cwd: Path, more_than: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(_calls(cwd)) <= more_than:
        assert time.monotonic() < deadline, "the task never ran"
        time.sleep(0.01)


def _wait_for_suspects_to_clear(cwd: Path, timeout: float = 30) -> None:
    """Until the run has settled the keys the last kill left in flight: rowpilot.engine.crashes
    runs those first, apart from the rest, and clears their crash records as they commit.

    A kill before that could land on one of them again, and three kills that each land
    while the same row runs (the last time alone) are exactly what a row that kills the
    process looks like: it would fail with cause process_crash. Past this point each kill
    hits only rows that no kill hit before."""
    deadline = time.monotonic() + timeout
    while _suspects(cwd):
        assert time.monotonic() < deadline, "the suspects of the last kill never settled"
        time.sleep(0.01)


def _suspects(cwd: Path) -> int:
    path = cwd / "state" / "registry.sqlite"
    if not path.exists():
        return 0
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT count(*) FROM crashes").fetchone()[0])
    except sqlite3.OperationalError:  # busy, or created a moment ago: look again
        return 1
    finally:
        db.close()


def _failures(cwd: Path) -> list[dict[str, object]]:
    listed = _in_process("failures", "state", cwd=cwd)
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line) for line in listed.stdout.splitlines()]


def _run_statuses(cwd: Path) -> list[str]:
    db = sqlite3.connect(cwd / "state" / "registry.sqlite")
    try:
        return [status for (status,) in db.execute("SELECT status FROM runs ORDER BY started_at")]
    finally:
        db.close()


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
        process = _start(job, to_kill=True)
        _wait_for_calls(job, before)
        _wait_for_suspects_to_clear(job)
        time.sleep(rng.uniform(0.05, 0.4))
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=120)
        for _key, status, output in _integrity(job):
            assert status == "done" and output is not None
    final = _in_process(*_command("-o", "out.csv")[1:], cwd=job)
    assert final.returncode == 0, final.stderr
    _assert_outputs_right(job)
    calls = _calls(job)
    assert set(calls) == {f"key-{i:04d}" for i in range(ROWS)}
    assert len(calls) <= ROWS + WINDOW * kills, f"{len(calls)} calls for {ROWS} rows"
    repeats = Counter(calls)
    assert max(repeats.values()) <= kills + 1
    # A kill from outside does not blame the rows that merely were in flight: they ran
    # again and are done, none failed with cause process_crash, no crash record is left.
    assert _failures(job) == []
    statuses = _run_statuses(job)
    assert statuses[-1] == "completed"
    assert set(statuses[:-1]) <= {"crashed", "completed"}, statuses  # none left "running"
    assert statuses.count("crashed") >= 1
    assert _suspects(job) == 0


def test_a_killed_rerun_leaves_no_crash_record_on_rows_that_are_not_run_again(
    job: Path,
) -> None:
    first = _in_process(*_command()[1:], cwd=job)
    assert first.returncode == 0, first.stderr
    forced = _start(job, "--force", sleep=0.05, to_kill=True)
    _wait_for_calls(job, ROWS)
    forced.send_signal(signal.SIGKILL)
    forced.communicate(timeout=120)

    # Without --force every row is done already: nothing runs, the killed run is closed.
    again = _in_process(*_command()[1:], cwd=job)

    assert again.returncode == 0, again.stderr
    assert "ended without closing" in again.stderr
    assert _run_statuses(job) == ["completed", "crashed", "completed"]
    assert _suspects(job) == 0, "crash records stay on rows that were not run again"


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
    again = _in_process(*command[1:], cwd=job, sleep=0.001)
    assert again.returncode == 0, again.stderr
    _assert_outputs_right(job)
    assert len(_calls(job)) == ROWS, "a graceful stop must not make any item run twice"


def test_second_sigint_cancels_hung_items(job: Path) -> None:
    # Items and grace far longer than the test's wait: only the cancel can end the run.
    process = _start(job, "--grace", "3600", sleep=3600)
    try:
        _wait_for_calls(job, WORKERS - 1)
        process.send_signal(signal.SIGINT)
        _wait_for_line(process, "rowpilot: stopping")  # the first is heard before the second
        process.send_signal(signal.SIGINT)
        _stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "rowpilot: cancelling in-flight items" in stderr


def _wait_for_line(process: subprocess.Popen[str], start: str) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith(start):
            return
    raise AssertionError(f"stderr ended without a line starting {start!r}")
    assert not (job / "state" / "registry.sqlite").exists() or _integrity(job) == []


def test_second_run_on_the_same_state_is_refused_while_the_first_runs(job: Path) -> None:
    first = _start(job, sleep=0.05, to_kill=True)
    try:
        _wait_for_calls(job, 0)
        second = _in_process(*_command()[1:], cwd=job)
        assert second.returncode == 2
        assert "another run is using" in second.stderr
        assert second.stderr.count("\n") == 1
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=120)


# -- a killed merge ------------------------------------------------------------------------

SHARDS = 6
PER_SHARD = 25_000  # a merge of them takes half a second: time to kill it part-way


def _shard(directory: Path, number: int) -> Path:
    """A finished shard's registry: PER_SHARD done items, its run, its meta."""
    registry = Registry(directory)
    try:
        registry.commit(
            [_done(f"s{number}-{i:06d}", number, i) for i in range(PER_SHARD)],
            meta={"task_version": "v1", "input_columns": '["id"]', "key_definition": "column:id"},
            run={
                "run_id": f"run-{number}",
                "started_at": 1.0 + number,
                "status": "completed",
                "task_version": "v1",
                "settings": json.dumps({"total": PER_SHARD, "shard": f"{number + 1}/{SHARDS}"}),
            },
        )
    finally:
        registry.close()
    return directory


def _done(key: str, shard: int, index: int) -> Outcome:
    row = encode_json({"id": key})
    return Outcome(
        key=key,
        seq=shard * PER_SHARD + index,
        fingerprint=fingerprint("v1", row),  # current: verify counts it done
        input_json=row,
        status="done",
        attempts=1,
        output_json=json.dumps({"echo": key}),
        error=None,
        error_type=None,
        traceback=None,
        started_at=1.0,
        finished_at=2.0,
        task_seconds=0.01,
        run_id=f"run-{shard}",
        task_version="v1",
    )


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """SHARDS shard registries (read-only: merge them, never into them) and keys.csv, the
    source they cover, beside them."""
    root = tmp_path_factory.mktemp("shards")
    with (root / "keys.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id"])
        writer.writerows([f"s{s}-{i:06d}"] for s in range(SHARDS) for i in range(PER_SHARD))
    return [_shard(root / f"shard-{s}", s) for s in range(SHARDS)]


def _rowpilot(cwd: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    # A process, though not killed: merge and verify go over 300,000 items, and in a
    # long-lived test worker (a large heap for the collector to walk) that work can take
    # longer than the start-up it would save.
    return subprocess.run(
        [ROWPILOT, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def _start_merge(cwd: Path, sources: list[Path], into: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [ROWPILOT, "merge", *map(str, sources), "--into", str(into)],
        cwd=cwd,
        env=unmeasured(),  # SIGKILLed
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _hidden_registry_bytes(into: Path) -> int:
    sizes = [0]
    for path in into.glob(".merging-*/registry.sqlite"):
        with contextlib.suppress(FileNotFoundError):  # moved into place a moment ago
            sizes.append(path.stat().st_size)
    return max(sizes)


def _kill_mid_merge(merge: subprocess.Popen[str], into: Path, past: int) -> None:
    """SIGKILL the merge once its hidden registry holds more than ``past`` bytes (the
    registry file grows as each shard's transaction is checkpointed into it)."""
    deadline = time.monotonic() + 60
    while _hidden_registry_bytes(into) <= past:
        assert merge.poll() is None, "the merge ended before the kill: make the shards bigger"
        assert time.monotonic() < deadline, "the merge's hidden registry never grew"
        time.sleep(0.002)
    merge.send_signal(signal.SIGKILL)
    merge.communicate(timeout=30)
    assert merge.returncode == -signal.SIGKILL, "the merge ended before the kill landed"
    assert list(into.glob(".merging-*/registry.sqlite")), "no unfinished merge was left"


def _bytes(state: Path) -> int:
    return (state / "registry.sqlite").stat().st_size


def _contents(state: Path) -> tuple[int, str]:
    """How many items the registry holds, and a digest of them all."""
    db = sqlite3.connect(state / "registry.sqlite")
    try:
        digest = hashlib.sha256()
        rows = db.execute("SELECT key, status, output FROM items ORDER BY key")
        for row in rows:
            digest.update(repr(row).encode())
        (count,) = db.execute("SELECT count(*) FROM items").fetchone()
        return count, digest.hexdigest()
    finally:
        db.close()


def _assert_merged_whole(cwd: Path, shards: list[Path], into: Path) -> None:
    """Merge again: the leftover is cleaned up, and every key is there once."""
    again = _rowpilot(cwd, "merge", *shards, "--into", into)
    assert again.returncode == 0, again.stderr
    assert f"{SHARDS * PER_SHARD:,} items" in again.stdout
    assert not list(into.glob(".merging-*")), "the killed merge's folder was left behind"
    assert _contents(into)[0] == SHARDS * PER_SHARD


def test_a_killed_merge_leaves_a_new_destination_without_a_registry(
    tmp_path: Path, shards: list[Path]
) -> None:
    into = tmp_path / "all"
    merge = _start_merge(tmp_path, shards, into)

    _kill_mid_merge(merge, into, past=_bytes(shards[0]) // 2)

    assert not (into / "registry.sqlite").exists()
    status = _rowpilot(tmp_path, "status", into)
    assert status.returncode == 2
    assert status.stderr.count("\n") == 1 and "no registry in" in status.stderr, status.stderr
    export = _rowpilot(tmp_path, "export", into, "-o", "x.csv")
    assert export.returncode == 2
    assert "no registry in" in export.stderr
    assert not list(tmp_path.glob("x.*")), "a killed merge's destination was exported"
    source = shards[0].parent / "keys.csv"
    verify = _rowpilot(tmp_path, "verify", into, "--source", source, "--key", "id")
    assert verify.returncode == 2
    assert "no registry in" in verify.stderr
    _assert_merged_whole(tmp_path, shards, into)
    verify = _rowpilot(tmp_path, "verify", into, "--source", source, "--key", "id")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"done {SHARDS * PER_SHARD:,}  failed 0  missing 0  stale 0" in verify.stdout


def test_a_killed_merge_leaves_an_existing_destination_as_it_was(
    tmp_path: Path, shards: list[Path]
) -> None:
    into = tmp_path / "all"
    first = _rowpilot(tmp_path, "merge", *shards[:2], "--into", into)
    assert first.returncode == 0, first.stderr
    before = _contents(into)
    assert before[0] == 2 * PER_SHARD
    status_before = _rowpilot(tmp_path, "status", into)
    assert f"done {2 * PER_SHARD:,}" in status_before.stdout
    merge = _start_merge(tmp_path, shards, into)

    # Past the copy of the destination and at least one more shard's items.
    _kill_mid_merge(merge, into, past=_bytes(into) + _bytes(shards[0]) // 2)

    assert _contents(into) == before
    status_after = _rowpilot(tmp_path, "status", into)
    assert status_after.returncode == 0, status_after.stderr
    assert status_after.stdout == status_before.stdout
    _assert_merged_whole(tmp_path, shards, into)
