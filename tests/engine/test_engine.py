"""The engine through the library API: rowpilot.run(...) against real files and SQLite."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest

import rowpilot
from rowpilot._config import build_config
from rowpilot.engine.job import run_sync
from rowpilot.errors import DuplicateKeyError, OutputCollisionError
from rowpilot.tasks.base import Task

if TYPE_CHECKING:
    from conftest import CallsReader, WriteCsv

WORKERS = 4


# -- helpers -------------------------------------------------------------------------------


def upper(row: dict[str, Any]) -> dict[str, Any]:
    return {"upper": row["text"].upper()}


async def async_upper(row: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0.001)
    return {"upper": row["text"].upper(), "was_async": True}


def with_ctx(row: dict[str, Any], ctx: rowpilot.Ctx) -> dict[str, Any]:
    ctx.logger.info("working on key %s", ctx.key)
    return {
        "run_id": ctx.run_id,
        "ctx_key": ctx.key,
        "ctx_row": ctx.row,
        "attempt": ctx.attempt,
        "has_logger": isinstance(ctx.logger, logging.Logger),
    }


def flaky(row: dict[str, Any], ctx: rowpilot.Ctx) -> dict[str, Any]:
    if ctx.attempt < 3:
        raise ConnectionError(f"attempt {ctx.attempt} of {ctx.key} dropped")
    return {"attempt": ctx.attempt}


def value_error_once(row: dict[str, Any], ctx: rowpilot.Ctx) -> dict[str, Any]:
    if ctx.attempt < 2:
        raise ValueError(f"bad value in {ctx.key}")
    return {"attempt": ctx.attempt}


CUT_SHORT: list[str] = []  # keys whose call the timeout cancelled


async def waits_until_cancelled(row: dict[str, Any]) -> dict[str, Any]:
    """Never returns by itself: only a timeout that cancels it ends the item."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        CUT_SHORT.append(row["id"])
        raise
    return {"returned": True}


RELEASE = threading.Event()


def blocks_until_released(row: dict[str, Any]) -> dict[str, Any]:
    """A sync call stuck until the test releases it: a run that waited for it would hang."""
    RELEASE.wait()
    return {"returned": True}


def returns_str(row: dict[str, Any]) -> Any:
    return "not a dict"


def rows_of(count: int) -> list[dict[str, Any]]:
    return [{"id": f"k{i:02d}", "text": f"text {i}"} for i in range(count)]


def data_csv(write_csv: WriteCsv, folder: Path, count: int = 6, name: str = "data.csv") -> Path:
    return write_csv(
        folder / name, ["id", "text"], [[f"k{i:02d}", f"text {i}"] for i in range(count)]
    )


def keys_of(result: rowpilot.Result) -> list[str]:
    return [record.key for record in result]


def registry_items(state: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(state / "registry.sqlite")) as db:
        return db.execute(
            "SELECT key, status, attempts, output, error_type FROM items ORDER BY key"
        ).fetchall()


def fast_retry_run(task: Any, source: Any, state: Path, **settings: Any) -> rowpilot.Result:
    """The engine with a short retry delay (rowpilot.run has no retry_delay argument)."""
    config = build_config(
        {
            "task": task,
            "source": source,
            "key": "id",
            "state": state,
            "workers": WORKERS,
            "retry_delay": 0.01,
            "max_retry_delay": 0.05,
            "progress": False,
            **settings,
        }
    )
    return run_sync(config)


# -- sync, async, ctx ----------------------------------------------------------------------


@pytest.mark.parametrize("task", [upper, async_upper], ids=["sync", "async"])
def test_sync_and_async_tasks_put_outputs_on_the_right_keys(
    tmp_path: Path, write_csv: WriteCsv, task: Any
) -> None:
    source = data_csv(write_csv, tmp_path, count=20)
    result = rowpilot.run(task, source, key="id", workers=WORKERS, state=tmp_path / "state")

    assert result.summary.status == "completed"
    assert (result.summary.done, result.summary.failed, result.summary.total) == (20, 0, 20)
    records = list(result)
    assert [r.key for r in records] == [f"k{i:02d}" for i in range(20)]
    for record in records:
        assert record.status == "done"
        assert record.attempts == 1
        assert record.output is not None
        assert record.output["upper"] == record.input["text"].upper()
        assert record.input["id"] == record.key
    if task is async_upper:
        assert all(r.output is not None and r.output["was_async"] is True for r in records)


def test_task_path_string_from_a_file(
    tmp_path: Path, write_csv: WriteCsv, tasks_file: Path
) -> None:
    source = data_csv(write_csv, tmp_path, count=5)
    for name in ("upper", "async_upper"):
        state = tmp_path / f"state-{name}"
        result = rowpilot.run(
            f"{tasks_file}:{name}", source, key="id", workers=WORKERS, state=state
        )
        assert result.summary.done == 5
        assert {r.key: r.output for r in result} == {
            f"k{i:02d}": {"upper": f"TEXT {i}"} for i in range(5)
        }


def test_ctx_gives_run_id_key_row_attempt_and_logger(tmp_path: Path, write_csv: WriteCsv) -> None:
    source = data_csv(write_csv, tmp_path, count=5)
    state = tmp_path / "state"
    result = rowpilot.run(with_ctx, source, key="id", workers=WORKERS, state=state)

    assert result.summary.done == 5
    for record in result:
        assert record.output == {
            "run_id": result.summary.run_id,
            "ctx_key": record.key,
            "ctx_row": record.seq,
            "attempt": 1,
            "has_logger": True,
        }
    assert [r.seq for r in result] == list(range(5))
    logged = "".join(path.read_text(encoding="utf-8") for path in (state / "logs").glob("*.log"))
    for i in range(5):
        assert f"working on key k{i:02d}" in logged


# -- the job's table -----------------------------------------------------------------------


def test_to_pandas_includes_earlier_runs_and_keeps_keys_and_cells_exactly(
    tmp_path: Path, write_csv: WriteCsv
) -> None:
    source = write_csv(
        tmp_path / "data.csv",
        ["id", "text"],
        [["007", " a "], ["42", "b"], [" 8 ", "  c"], ["0.50", "d "]],
    )
    state = tmp_path / "state"
    first = rowpilot.run(upper, source, key="id", workers=WORKERS, state=state, rows="0:2")
    assert first.summary.done == 2
    second = rowpilot.run(upper, source, key="id", workers=WORKERS, state=state, rows="2:4")
    assert (second.summary.done, second.summary.skipped) == (2, 0)

    frame = second.to_pandas()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["id", "text", "upper"]
    assert frame["id"].tolist() == ["007", "42", " 8 ", "0.50"]
    assert frame["text"].tolist() == [" a ", "b", "  c", "d "]
    assert frame["upper"].tolist() == [" A ", "B", "  C", "D "]
    assert keys_of(second) == ["007", "42", " 8 ", "0.50"]
    assert second.to_pandas(done_only=True).shape == (4, 3)


# -- resume ---------------------------------------------------------------------------------


def test_resume_skips_done_and_unchanged_rows(
    tmp_path: Path, write_csv: WriteCsv, tasks_file: Path, calls: CallsReader
) -> None:
    source = data_csv(write_csv, tmp_path, count=12)
    task = f"{tasks_file}:count_calls"
    state = tmp_path / "state"

    first = rowpilot.run(task, source, key="id", workers=WORKERS, state=state)
    assert first.summary.done == 12
    assert sorted(calls(tmp_path)) == [f"k{i:02d}" for i in range(12)]

    second = rowpilot.run(task, source, key="id", workers=WORKERS, state=state)
    assert second.summary.status == "completed"
    assert (second.summary.done, second.summary.skipped) == (0, 12)
    assert len(calls(tmp_path)) == 12  # nothing ran twice
    assert len(list(second)) == 12


def test_changed_row_and_changed_task_version_are_redone(
    tmp_path: Path, write_csv: WriteCsv, tasks_file: Path, calls: CallsReader
) -> None:
    task = f"{tasks_file}:count_calls"
    state = tmp_path / "state"
    rows = [[f"k{i:02d}", f"text {i}"] for i in range(8)]
    source = write_csv(tmp_path / "data.csv", ["id", "text"], rows)

    rowpilot.run(task, source, key="id", workers=WORKERS, state=state, task_version="v1")
    assert len(calls(tmp_path)) == 8

    rows[3][1] = "changed"
    write_csv(source, ["id", "text"], rows)
    second = rowpilot.run(task, source, key="id", workers=WORKERS, state=state, task_version="v1")
    assert (second.summary.done, second.summary.skipped) == (1, 7)
    assert calls(tmp_path)[8:] == ["k03"]
    assert {r.key: r.output for r in second}["k03"] == {"upper": "CHANGED"}

    third = rowpilot.run(task, source, key="id", workers=WORKERS, state=state, task_version="v2")
    assert (third.summary.done, third.summary.skipped) == (8, 0)
    assert sorted(calls(tmp_path)[9:]) == [f"k{i:02d}" for i in range(8)]

    fourth = rowpilot.run(task, source, key="id", workers=WORKERS, state=state, task_version="v2")
    assert (fourth.summary.done, fourth.summary.skipped) == (0, 8)
    assert len(calls(tmp_path)) == 17


def test_force_redoes_everything_selected(
    tmp_path: Path, write_csv: WriteCsv, tasks_file: Path, calls: CallsReader
) -> None:
    source = data_csv(write_csv, tmp_path, count=8)
    task = f"{tasks_file}:count_calls"
    state = tmp_path / "state"
    rowpilot.run(task, source, key="id", workers=WORKERS, state=state)
    assert len(calls(tmp_path)) == 8

    forced = rowpilot.run(
        task, source, key="id", workers=WORKERS, state=state, rows="2:5", force=True
    )
    assert (forced.summary.done, forced.summary.skipped) == (3, 0)
    assert sorted(calls(tmp_path)[8:]) == ["k02", "k03", "k04"]

    again = rowpilot.run(task, source, key="id", workers=WORKERS, state=state, force=True)
    assert again.summary.done == 8
    assert len(calls(tmp_path)) == 8 + 3 + 8


def test_failed_items_are_skipped_then_retried_with_retry_failed(
    tmp_path: Path, write_csv: WriteCsv, tasks_file: Path, calls: CallsReader
) -> None:
    source = data_csv(write_csv, tmp_path, count=6)
    task = f"{tasks_file}:fail_listed"
    state = tmp_path / "state"
    (tmp_path / "fail_keys.txt").write_text("k01\nk04\n", encoding="utf-8")

    first = rowpilot.run(task, source, key="id", workers=WORKERS, state=state)
    assert first.summary.status == "completed_with_failures"
    assert (first.summary.done, first.summary.failed) == (4, 2)
    assert first.summary.exit_code == 1
    failures = {r.key: r for r in first.failures()}
    assert sorted(failures) == ["k01", "k04"]
    assert failures["k01"].error_type == "ValueError"
    assert failures["k01"].error is not None
    assert "listed key k01" in failures["k01"].error
    assert failures["k01"].attempts == 1  # a ValueError is not retried by default
    assert len(calls(tmp_path)) == 6

    (tmp_path / "fail_keys.txt").write_text("", encoding="utf-8")
    plain = rowpilot.run(task, source, key="id", workers=WORKERS, state=state)
    assert (plain.summary.done, plain.summary.skipped, plain.summary.skipped_failed) == (0, 4, 2)
    assert len(calls(tmp_path)) == 6
    assert sorted(r.key for r in plain.failures()) == ["k01", "k04"]

    retried = rowpilot.run(task, source, key="id", workers=WORKERS, state=state, retry_failed=True)
    assert (retried.summary.done, retried.summary.failed, retried.summary.skipped) == (2, 0, 4)
    assert sorted(calls(tmp_path)[6:]) == ["k01", "k04"]
    assert retried.summary.status == "completed"
    assert retried.failures() == []


# -- retries and timeouts -------------------------------------------------------------------


def test_connection_errors_are_retried_until_done(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = fast_retry_run(flaky, rows_of(5), state, max_attempts=3)

    assert result.summary.status == "completed"
    assert result.summary.done == 5
    assert result.summary.retries == 10
    for record in result:
        assert record.status == "done"
        assert record.attempts == 3
        assert record.output == {"attempt": 3}


def test_connection_errors_beyond_max_attempts_fail(tmp_path: Path) -> None:
    result = fast_retry_run(flaky, rows_of(3), tmp_path / "state", max_attempts=2)
    assert (result.summary.done, result.summary.failed) == (0, 3)
    assert result.summary.status == "failed"
    for record in result:
        assert (record.status, record.attempts, record.error_type) == (
            "failed",
            2,
            "ConnectionError",
        )


def test_value_error_is_not_retried_by_default(tmp_path: Path) -> None:
    result = fast_retry_run(value_error_once, rows_of(3), tmp_path / "state", max_attempts=3)
    assert result.summary.failed == 3
    assert result.summary.retries == 0
    for record in result:
        assert (record.status, record.attempts, record.error_type) == ("failed", 1, "ValueError")


def test_value_error_is_retried_when_listed_in_retry_on(tmp_path: Path) -> None:
    result = fast_retry_run(
        value_error_once, rows_of(3), tmp_path / "state", max_attempts=3, retry_on=["ValueError"]
    )
    assert result.summary.done == 3
    for record in result:
        assert (record.status, record.attempts, record.output) == ("done", 2, {"attempt": 2})


def test_value_error_is_retried_through_the_public_api(tmp_path: Path) -> None:
    # The default delays: at most 0.5 s before the second attempt.
    result = rowpilot.run(
        value_error_once,
        rows_of(2),
        key="id",
        workers=WORKERS,
        state=tmp_path / "state",
        max_attempts=2,
        retry_on=["ValueError"],
    )
    assert [(r.status, r.attempts) for r in result] == [("done", 2), ("done", 2)]


def test_timeout_fails_an_async_task_that_sleeps_too_long(tmp_path: Path) -> None:
    CUT_SHORT.clear()
    result = rowpilot.run(
        waits_until_cancelled,
        rows_of(2),
        key="id",
        workers=WORKERS,
        state=tmp_path / "state",
        timeout=0.2,
        max_attempts=1,
    )
    assert sorted(CUT_SHORT) == sorted(record.key for record in result)  # cancelled, not awaited
    assert result.summary.failed == 2
    for record in result:
        assert record.status == "failed"
        assert record.error_type == "ItemTimeoutError"
        assert record.attempts == 1


def test_timeout_fails_a_sync_task_and_is_retried(tmp_path: Path) -> None:
    # The call never returns while the run lasts: the run must write it off, twice, and end
    # without waiting for its thread (a run that waited would hang here).
    RELEASE.clear()
    try:
        result = fast_retry_run(
            blocks_until_released, [{"id": "slow"}], tmp_path / "state", timeout=0.2, max_attempts=2
        )
    finally:
        RELEASE.set()
    (record,) = list(result)
    assert (record.status, record.error_type, record.attempts) == (
        "failed",
        "ItemTimeoutError",
        2,
    )


# -- selection ------------------------------------------------------------------------------


def test_rows_range_selects_rows_by_number(tmp_path: Path, write_csv: WriteCsv) -> None:
    source = data_csv(write_csv, tmp_path, count=8)
    result = rowpilot.run(upper, source, workers=WORKERS, state=tmp_path / "state", rows="2:5")
    assert result.summary.total == 3
    assert keys_of(result) == ["2", "3", "4"]
    assert [r.input["id"] for r in result] == ["k02", "k03", "k04"]


def test_shards_partition_the_keys(tmp_path: Path, write_csv: WriteCsv) -> None:
    source = data_csv(write_csv, tmp_path, count=40)
    shards = []
    for k in (1, 2, 3):
        result = rowpilot.run(
            upper, source, key="id", workers=WORKERS, state=tmp_path / f"shard{k}", shard=f"{k}/3"
        )
        shards.append(set(keys_of(result)))
        assert result.summary.done == len(shards[-1])
    everything = {f"k{i:02d}" for i in range(40)}
    assert shards[0] | shards[1] | shards[2] == everything
    assert sum(len(keys) for keys in shards) == 40  # no key in two shards
    assert all(keys for keys in shards)


def test_limit_takes_the_first_selected_rows(
    tmp_path: Path, write_csv: WriteCsv, tasks_file: Path, calls: CallsReader
) -> None:
    source = data_csv(write_csv, tmp_path, count=10)
    state = tmp_path / "state"
    task = f"{tasks_file}:count_calls"
    result = rowpilot.run(task, source, key="id", workers=WORKERS, state=state, limit=4)
    assert keys_of(result) == ["k00", "k01", "k02", "k03"]
    assert sorted(calls(tmp_path)) == ["k00", "k01", "k02", "k03"]

    rest = rowpilot.run(task, source, key="id", workers=WORKERS, state=state)
    assert (rest.summary.done, rest.summary.skipped) == (6, 4)
    assert len(calls(tmp_path)) == 10


def test_duplicate_keys_are_refused_unless_dedupe_first(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "text": "first a"},
        {"id": "b", "text": "b"},
        {"id": "a", "text": "second a"},
    ]
    state = tmp_path / "state"
    with pytest.raises(DuplicateKeyError, match="'a'"):
        rowpilot.run(upper, rows, key="id", workers=WORKERS, state=state)
    assert not state.exists()

    result = rowpilot.run(upper, rows, key="id", workers=WORKERS, state=state, dedupe="first")
    assert result.summary.done == 2
    assert {r.key: r.output for r in result} == {
        "a": {"upper": "FIRST A"},
        "b": {"upper": "B"},
    }


# -- sources --------------------------------------------------------------------------------


def test_dataframe_source(tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": ["x1", "x2", "x3"], "text": ["p", "q", "r"], "n": [1, 2, 3]})
    result = rowpilot.run(upper, frame, key="id", workers=WORKERS, state=tmp_path / "state")
    assert result.summary.total == 3
    assert {r.key: (r.input["n"], r.output) for r in result} == {
        "x1": (1, {"upper": "P"}),
        "x2": (2, {"upper": "Q"}),
        "x3": (3, {"upper": "R"}),
    }


def test_list_of_dicts_source(tmp_path: Path) -> None:
    result = rowpilot.run(upper, rows_of(5), key="id", workers=WORKERS, state=tmp_path / "state")
    assert result.summary.total == 5
    assert {r.key: r.output for r in result} == {
        f"k{i:02d}": {"upper": f"TEXT {i}"} for i in range(5)
    }


def test_generator_source_and_its_resume(tmp_path: Path) -> None:
    def generate(count: int) -> Iterator[dict[str, Any]]:
        for i in range(count):
            yield {"id": f"g{i}", "text": f"gen {i}"}

    state = tmp_path / "state"
    result = rowpilot.run(upper, generate(5), key="id", workers=WORKERS, state=state)
    assert result.summary.done == 5
    assert {r.key: r.output for r in result} == {f"g{i}": {"upper": f"GEN {i}"} for i in range(5)}

    again = rowpilot.run(upper, generate(7), key="id", workers=WORKERS, state=state)
    assert (again.summary.done, again.summary.skipped) == (2, 5)


def test_generator_source_with_duplicate_keys(tmp_path: Path) -> None:
    def generate() -> Iterator[dict[str, Any]]:
        yield from ({"id": "a", "text": "1"}, {"id": "a", "text": "2"}, {"id": "b", "text": "3"})

    result = rowpilot.run(
        upper, generate(), key="id", workers=WORKERS, state=tmp_path / "state", dedupe="first"
    )
    assert {r.key: r.output for r in result} == {"a": {"upper": "1"}, "b": {"upper": "3"}}


# -- the registry appears with the first commit ----------------------------------------------


def unstorable_for_two(row: dict[str, Any]) -> Any:
    if row["id"] == "k01":
        return None
    if row["id"] == "k02":
        return {"tags": {"a", "b"}}  # a set: not a JSON value
    return {"upper": row["text"].upper()}


def test_a_value_that_cannot_be_stored_fails_its_item_and_the_run_goes_on(
    tmp_path: Path, write_csv: WriteCsv
) -> None:
    source = data_csv(write_csv, tmp_path, count=12)
    result = rowpilot.run(unstorable_for_two, source, key="id", workers=WORKERS, state=tmp_path)
    assert (result.summary.done, result.summary.failed) == (10, 2)
    assert result.summary.causes == {"invalid_output": 2}
    errors = {record.key: record.error or "" for record in result.failures()}
    assert "returned a NoneType" in errors["k01"]
    assert "set" in errors["k02"]
    assert result.summary.exit_code == 1  # completed with failures, not a stopped run


def test_every_output_invalid_stops_early_and_leaves_the_rows_pending(
    tmp_path: Path, write_csv: WriteCsv
) -> None:
    source = data_csv(write_csv, tmp_path, count=40)
    state = tmp_path / "state"
    rowpilot.run(upper, source, key="id", workers=WORKERS, state=state, limit=3)
    before = registry_items(state)
    result = rowpilot.run(returns_str, source, key="id", workers=WORKERS, state=state)
    assert result.summary.status == "aborted"
    assert result.summary.exit_code == 2
    assert result.summary.stop_reason is not None
    assert "the first 5 items all failed alike" in result.summary.stop_reason
    assert "returned a str" in result.summary.stop_reason
    assert result.summary.done + result.summary.failed < 40  # it stopped early
    # The failures that decided it were never committed: the rows are as they were.
    assert registry_items(state) == before


# -- the run's logs and summary ------------------------------------------------------------


def flaky_then_broken(row: dict[str, Any], ctx: rowpilot.Ctx) -> dict[str, Any]:
    if row["id"] == "k01" and ctx.attempt == 1:
        raise ConnectionError("reset by peer")
    if row["id"] == "k02":
        raise ValueError("cannot parse this row")
    return {}


def test_event_log_records_start_retry_failure_and_end(write_csv: WriteCsv, tmp_path: Path) -> None:
    import json

    state = tmp_path / "state"
    config = build_config(
        {
            "task": flaky_then_broken,
            "source": str(data_csv(write_csv, tmp_path, count=4)),
            "key": "id",
            "state": state,
            "retry_delay": 0.01,
            "progress": False,
        }
    )
    result = run_sync(config)
    (log,) = (state / "logs").glob("*.jsonl")
    events = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    kinds = [event["event"] for event in events]
    assert kinds[0] == "run.started"
    assert kinds[-1] == "run.finished"
    retry = next(e for e in events if e["event"] == "item.retry")
    assert retry["key"] == "k01"
    assert "reset by peer" in retry["error"]
    failed = next(e for e in events if e["event"] == "item.failed")
    assert failed["key"] == "k02"
    assert failed["error_type"] == "ValueError"
    assert all(e["run_id"] == result.summary.run_id for e in events)
    text = log.with_suffix(".log").read_text(encoding="utf-8")
    assert "item.failed" in text
    assert "run.finished" in text
    summary = result.summary
    assert (summary.done, summary.failed, summary.retries) == (3, 1, 1)
    assert summary.status == "completed_with_failures"
    assert summary.exit_code == 1


class AllAtOnce:
    """A task whose calls each wait until ``width`` of them are running at once: a run
    that did not run them side by side would never end (the test's timeout says so)."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.running = 0
        self.most = 0
        self.full: asyncio.Event | None = None

    async def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if self.full is None:
            self.full = asyncio.Event()
        self.running += 1
        self.most = max(self.most, self.running)
        if self.running >= self.width:
            self.full.set()
        await self.full.wait()
        await asyncio.sleep(0.05)
        self.running -= 1
        return {}


def test_summary_speedup_is_task_time_over_wall_time(write_csv: WriteCsv, tmp_path: Path) -> None:
    source = data_csv(write_csv, tmp_path, count=40)
    task = AllAtOnce(20)
    result = rowpilot.run(task, source, key="id", workers=20, state=tmp_path / "state")
    summary = result.summary
    assert task.most == 20  # the 20 workers ran side by side
    assert summary.task_seconds >= 40 * 0.05
    assert summary.speedup == pytest.approx(summary.task_seconds / summary.elapsed)


class GroupedUpper(Task):
    """A task with a batch_call, as the built-in local tasks have: groups of rows at once."""

    name = "grouped_upper"
    version = "1"
    groups_rows = True
    rows_per_worker = 4

    def __init__(self) -> None:
        self.groups: list[list[str]] = []

    def batch_call(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.groups.append([row["id"] for row in rows])
        if any(row["text"] == "bad" for row in rows):
            raise ValueError("a bad row in the group")
        return [{"upper": row["text"].upper()} for row in rows]

    def call(self, row: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return self.batch_call([row])[0]


def test_grouped_tasks_commit_each_row_and_a_failing_group_runs_row_by_row(
    tmp_path: Path,
) -> None:
    rows = [{"id": f"k{i:02d}", "text": "bad" if i == 6 else f"text {i}"} for i in range(10)]
    task = GroupedUpper()
    from rowpilot.engine.job import prepare

    job = prepare(build_config({"task": task, "source": rows, "key": "id", "workers": 2}))
    assert (job.settings.group, job.settings.workers) == (4, 8)  # workers count groups
    result = run_sync(
        build_config({"task": task, "source": rows, "key": "id", "state": tmp_path / "s"})
    )
    by_key = {record.key: record for record in result}
    assert by_key["k06"].status == "failed" and by_key["k06"].error_type == "ValueError"
    for i in (0, 1, 2, 3, 4, 5, 7, 8, 9):
        assert by_key[f"k{i:02d}"].output == {"upper": f"TEXT {i}"}
    assert ["k00", "k01", "k02", "k03"] in task.groups  # grouped calls...
    assert ["k06"] in task.groups  # ...and the failed group's rows alone


class OneGroupAtATime(Task):
    """A grouped task that computes one group at a time behind a lock, as the local model
    does, and asks for a group in flight beyond its one worker (``groups_ahead``)."""

    name = "one_group_at_a_time"
    version = "1"
    groups_rows = True
    rows_per_worker = 4
    groups_ahead = 1

    def __init__(self, groups: int) -> None:
        self.groups = groups
        self.computing = threading.Lock()
        self.arrivals = threading.Condition()
        self.arrived = self.computed = 0
        self.next_was_waiting: list[bool] = []

    def batch_call(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with self.arrivals:
            self.arrived += 1
            self.arrivals.notify_all()
        with self.computing:
            with self.arrivals:  # the next group reaches the lock while this one holds it
                if self.computed + 1 < self.groups:
                    waiting = self.arrivals.wait_for(
                        lambda: self.arrived > self.computed + 1, timeout=30
                    )
                    self.next_was_waiting.append(waiting)
                self.computed += 1
            return [{"upper": row["text"].upper()} for row in rows]

    def call(self, row: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return self.batch_call([row])[0]


def test_a_group_ahead_waits_at_the_tasks_lock_while_one_computes(tmp_path: Path) -> None:
    # The next group must be handed to the executor before the one computing ends, so the
    # computing never waits for the event loop between groups; one worker still means one
    # group computed at a time. Without groups_ahead the next group is only handed over
    # once this one has returned: the wait above times out and the test fails.
    rows = [{"id": f"k{i:02d}", "text": f"text {i}"} for i in range(12)]
    task = OneGroupAtATime(groups=3)
    config = {"task": task, "source": rows, "key": "id", "workers": 1, "state": tmp_path / "s"}
    result = run_sync(build_config(config))
    assert task.next_was_waiting == [True, True]
    assert {record.key: record.output for record in result} == {
        row["id"]: {"upper": row["text"].upper()} for row in rows
    }


def test_the_summary_gives_shares_and_the_average_item() -> None:
    from rowpilot._result import Summary

    summary = Summary(
        run_id="r", state="s", status="completed_with_failures", total=40, done=30, failed=10,
        skipped=0, skipped_failed=0, pending=0, retries=0, elapsed=2.0, items_per_second=20.0,
        task_seconds=20.0, speedup=10.0, cost_usd=0.5, calls=40,
    )  # fmt: skip
    first, second = summary.lines()[:2]
    assert first.endswith("of 40 (75.0% ok, 25.0% failed)")
    assert "0.50s per item on average" in second and "speed-up 10.0x" in second


# -- outputs never overwrite inputs (issue 10, item 2) --------------------------------------


def echoes_the_key(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": "OUT-ID", "text": row["text"].upper()}


def clashes_from_row_3(row: dict[str, Any]) -> dict[str, Any]:
    if row["id"] == "k03":
        return {"text": "overwritten"}
    return {"upper": row["text"].upper()}


def test_an_output_named_like_an_input_column_stops_the_run_before_its_first_commit(
    tmp_path: Path, write_csv: WriteCsv
) -> None:
    source = data_csv(write_csv, tmp_path, count=8)
    state = tmp_path / "state"
    with pytest.raises(OutputCollisionError, match="'id'") as caught:
        rowpilot.run(echoes_the_key, source, key="id", workers=WORKERS, state=state)
    assert caught.value.column == "id"
    assert "--output-prefix" in (caught.value.hint or "")
    assert not state.exists()  # nothing was committed: no state is left


def test_output_prefix_names_outputs_apart_and_the_key_column_is_never_overwritten(
    tmp_path: Path, write_csv: WriteCsv
) -> None:
    source = data_csv(write_csv, tmp_path, count=8)
    result = rowpilot.run(
        echoes_the_key, source, key="id", workers=WORKERS, state=tmp_path, output_prefix="out_"
    )
    frame = result.to_pandas()
    assert list(frame.columns) == ["id", "text", "out_id", "out_text"]
    assert list(frame["id"]) == [f"k{i:02d}" for i in range(8)]
    assert set(frame["out_id"]) == {"OUT-ID"}


def test_a_later_row_whose_output_clashes_fails_with_that_cause(
    tmp_path: Path, write_csv: WriteCsv
) -> None:
    source = data_csv(write_csv, tmp_path, count=30)
    # One worker: the clashing row comes after the first commit.
    result = rowpilot.run(clashes_from_row_3, source, key="id", workers=1, state=tmp_path)
    assert (result.summary.done, result.summary.failed) == (29, 1)
    assert result.summary.causes == {"output_collision": 1}
    (failure,) = result.failures()
    assert failure.key == "k03"
    assert "'text'" in (failure.error or "")
    assert {record.input["text"] for record in result if record.key == "k03"} == {"text 3"}


# -- in-memory sources have a state of their own (item 4) -----------------------------------


def test_two_different_dataframes_never_share_a_state(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    first = pd.DataFrame({"id": [f"a{i}" for i in range(50)], "text": ["x"] * 50})
    second = pd.DataFrame({"id": [f"b{i}" for i in range(20)], "text": ["y"] * 20})
    one = rowpilot.run(upper, first, key="id", workers=WORKERS)
    two = rowpilot.run(upper, second, key="id", workers=WORKERS)
    assert one.state != two.state
    assert sorted(two.to_pandas()["id"]) == sorted(second["id"])
    assert len(two.to_pandas()) == 20
    # The same frame again finds its own state: everything was done before.
    again = rowpilot.run(upper, first.copy(), key="id", workers=WORKERS)
    assert again.state == one.state
    assert (again.summary.done, again.summary.skipped) == (0, 50)


def test_label_on_two_dataframes_returns_each_frames_own_rows(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    first = pd.DataFrame({"text": [f"great product {i}" for i in range(30)]})
    second = pd.DataFrame({"text": [f"terrible service {i}" for i in range(12)]})
    labels = ["praise", "complaint"]
    one = rowpilot.label(first, text_column="text", labels=labels, model="local/wordllama")
    two = rowpilot.label(second, text_column="text", labels=labels, model="local/wordllama")
    assert len(one) == 30
    assert len(two) == 12
    assert list(two["text"]) == list(second["text"])


# -- stale outputs are left out (item 5) ---------------------------------------------------


def spam_label(row: dict[str, Any]) -> dict[str, Any]:
    return {"spam": "1" in row["text"], "urgent": False}


def complaint_label(row: dict[str, Any]) -> dict[str, Any]:
    return {"complaint": "2" in row["text"]}


def test_a_changed_task_makes_older_outputs_stale_until_redone(
    tmp_path: Path, write_csv: WriteCsv
) -> None:
    source = data_csv(write_csv, tmp_path, count=60)
    state = tmp_path / "state"
    rowpilot.run(spam_label, source, key="id", workers=WORKERS, state=state, task_version="a")
    newer = rowpilot.run(
        complaint_label, source, key="id", workers=WORKERS, state=state, limit=10, task_version="b"
    )
    frame = newer.to_pandas()
    assert len(frame) == 10  # only the current version's outputs
    assert list(frame.columns) == ["id", "text", "complaint"]
    everything = newer.to_pandas(include_stale=True)
    assert len(everything) == 60
    assert {"spam", "urgent", "complaint"} <= set(everything.columns)
    from rowpilot.state.operations import status

    now = status(state)
    assert (now.done, now.stale, now.total, now.pending) == (10, 50, 60, 50)
    # The rest of the job under the new version redoes exactly the stale rows.
    rest = rowpilot.run(
        complaint_label, source, key="id", workers=WORKERS, state=state, task_version="b"
    )
    assert (rest.summary.done, rest.summary.skipped) == (50, 10)
    assert status(state).stale == 0


# -- early stop for every task kind (item 11) ----------------------------------------------


def looks_up_a_missing_field(row: dict[str, Any]) -> dict[str, Any]:
    return {"label": row["label"]}


async def async_looks_up_a_missing_field(row: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"label": row["label"]}


@pytest.mark.parametrize(
    "task", [looks_up_a_missing_field, async_looks_up_a_missing_field], ids=["sync", "async"]
)
def test_a_task_that_fails_on_every_row_stops_after_the_first_five_with_its_frame(
    tmp_path: Path, write_csv: WriteCsv, task: Any
) -> None:
    source = data_csv(write_csv, tmp_path, count=2000)
    result = rowpilot.run(task, source, key="id", workers=WORKERS, state=tmp_path / "state")
    summary = result.summary
    assert summary.status == "aborted"
    assert summary.exit_code == 2
    reason = summary.stop_reason or ""
    assert "KeyError: 'label'" in reason
    assert "test_engine.py line" in reason and "looks_up_a_missing_field" in reason
    assert summary.done + summary.failed <= 5 + 2 * WORKERS  # not 2,000 failures
    assert summary.failed == 0  # the rows are left pending
    assert summary.pending == 2000


def test_keep_going_runs_every_row_even_when_the_first_ones_fail_alike(
    tmp_path: Path, write_csv: WriteCsv
) -> None:
    source = data_csv(write_csv, tmp_path, count=12)
    result = rowpilot.run(
        looks_up_a_missing_field,
        source,
        key="id",
        workers=WORKERS,
        state=tmp_path / "state",
        keep_going=True,
    )
    assert (result.summary.status, result.summary.failed) == ("failed", 12)


# -- the summary's speed-up (item 22) -------------------------------------------------------


def burns_cpu(row: dict[str, Any]) -> dict[str, Any]:
    total = 0
    for n in range(800_000):  # about 30 ms of pure Python: the GIL is the bottleneck
        total += n * n
    return {"total": total}


def test_a_sync_tasks_cpu_time_is_counted(tmp_path: Path, write_csv: WriteCsv) -> None:
    started = time.thread_time()
    burns_cpu({})
    one = time.thread_time() - started  # what one item costs, measured alone
    source = data_csv(write_csv, tmp_path, count=20)
    result = rowpilot.run(burns_cpu, source, key="id", workers=8, state=tmp_path / "state")
    # CPU time, unlike wall time, does not grow when eight threads take turns.
    assert 0.5 * 20 * one <= result.summary.cpu_seconds <= 2 * 20 * one
    assert result.summary.task_seconds > result.summary.cpu_seconds


def summary_of(**figures: Any) -> Any:
    from rowpilot._result import Summary

    base: dict[str, Any] = {
        "run_id": "r", "state": "s", "status": "completed", "total": 20, "done": 20,
        "failed": 0, "skipped": 0, "skipped_failed": 0, "pending": 0, "retries": 0,
        "items_per_second": 20.0, "workers": 8,
    }  # fmt: skip
    return Summary(**{**base, **figures})


def test_the_speedup_is_left_out_for_cpu_bound_work_and_past_the_worker_count() -> None:
    # Eight threads of pure Python: their task times add up to 8x the wall time, but
    # they took turns on one core.
    cpu_bound = summary_of(elapsed=1.0, task_seconds=8.0, speedup=8.0, cpu_seconds=0.9)
    assert cpu_bound.cpu_bound and not cpu_bound.speedup_meaningful
    second = cpu_bound.lines()[1]
    assert "parallel speed-up" not in second and "CPU-bound" in second
    # Waiting work (I/O) on eight workers: the speed-up stands.
    waiting = summary_of(elapsed=1.0, task_seconds=7.5, speedup=7.5, cpu_seconds=0.05)
    assert "parallel speed-up 7.5x" in waiting.lines()[1]
    # Past the worker count the figure cannot be a speed-up (time counted twice).
    beyond = summary_of(elapsed=1.0, task_seconds=30.0, speedup=30.0, cpu_seconds=0.0)
    assert "speed-up" not in beyond.lines()[1]


def test_the_speedup_names_the_executor_and_stands_for_cpu_work_in_processes() -> None:
    # The same CPU-bound figures on threads say why there is no speed-up and what helps.
    threads = summary_of(elapsed=1.0, task_seconds=1.9, speedup=1.9, cpu_seconds=1.8, workers=2)
    assert "no speed-up to show; --executor process runs it on every core" in threads.lines()[1]
    # On two processes each has a core: their times add up for real, and it says where.
    processes = summary_of(
        elapsed=1.0, task_seconds=1.9, speedup=1.9, cpu_seconds=1.8, workers=2,
        executor="2 processes",
    )  # fmt: skip
    assert processes.lines()[1].endswith("parallel speed-up 1.9x on 2 processes")
    actors = summary_of(
        elapsed=2.0, task_seconds=7.0, speedup=3.5, workers=4, executor="4 Ray actors"
    )
    assert actors.lines()[1].endswith("parallel speed-up 3.5x on 4 Ray actors")
    # Past the number of workers it is no speed-up, wherever they ran.
    beyond = summary_of(
        elapsed=1.0, task_seconds=5.0, speedup=5.0, workers=2, executor="2 processes"
    )
    assert "speed-up" not in beyond.lines()[1]


def test_dedupe_first_counts_the_rows_it_leaves_out_as_such(tmp_path: Path) -> None:
    rows = [{"id": f"k{i % 7}", "text": f"t{i}"} for i in range(10)]  # 3 repeats
    result = rowpilot.run(
        upper, rows, key="id", workers=WORKERS, state=tmp_path / "state", dedupe="first"
    )
    summary = result.summary
    assert (summary.total, summary.done, summary.dropped, summary.pending) == (7, 7, 3, 0)
    text = "\n".join(summary.lines())
    assert "3 rows repeat an earlier row's key" in text
    assert "not processed yet" not in text
