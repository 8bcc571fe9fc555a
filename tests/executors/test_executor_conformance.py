"""What every executor must do, run against each one (local threads, worker processes,
Ray actors): hand back a call's value or its exception, enforce the timeout from the
call's start, carry a stop back as a stop, run groups with outputs encoded where they
ran. The tasks live in ``conformance_tasks.py``, loaded by path as a user's task file is,
so worker processes run the driver's code. Synchronised on files and events, never on
sleeps; a timeout here is a bound no call comes near, or the very thing under test."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from rowpilot.executors.base import Executor
from rowpilot.executors.local import LocalExecutor
from rowpilot.executors.process import process_executor
from rowpilot.executors.threads import Abandoned, CallTimeout
from rowpilot.tasks.base import Task
from rowpilot.tasks.ctx import Ctx
from rowpilot.tasks.python import load_task
from rowpilot.tasks.values import RunStop

TASKS = Path(__file__).with_name("conformance_tasks.py")
NO_TIMEOUT = None
FOREVER = 3600.0  # a bound no call here comes near: the calls end on events

Make = Callable[[Task, int], Executor]


def _ray(task: Task, workers: int) -> Executor:
    from rowpilot.executors.ray import RayExecutor

    return RayExecutor(task, workers, max_crashes=3, started_here=False)


MAKERS: dict[str, Make] = {
    "local": lambda task, workers: LocalExecutor(workers),
    "process": lambda task, workers: process_executor(task, workers, max_crashes=3),
    "ray": _ray,
}
REMOTE = ("process", "ray")


@pytest.fixture(params=sorted(MAKERS))
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "ray":
        request.getfixturevalue("ray_session")
    name: str = request.param
    return name


def task(name: str) -> Task:
    return load_task(f"{TASKS}:{name}")


def tasks_module() -> Any:
    return sys.modules[load_task(f"{TASKS}:upper").fn.__module__]


def ctx(key: str = "k1") -> Ctx:
    return Ctx("run", key, 1, 1, logging.getLogger("test"))


def with_executor(
    kind: str,
    the_task: Task,
    body: Callable[[Executor], Coroutine[Any, Any, Any]],
    workers: int = 2,
) -> Any:
    async def main() -> Any:
        executor = MAKERS[kind](the_task, workers)
        try:
            return await body(executor)
        finally:
            executor.close()

    return asyncio.run(main())


def test_a_sync_call_returns_its_value_and_cpu_time(kind: str) -> None:
    the_task = task("upper")
    ran = with_executor(
        kind, the_task, lambda ex: ex.submit(the_task, {"text": "abc"}, ctx(), timeout=NO_TIMEOUT)
    )
    assert ran.value["upper"] == "ABC"
    assert ran.cpu_seconds >= 0.0
    assert (ran.value["pid"] != os.getpid()) is (kind in REMOTE)


def test_many_calls_each_get_their_own_value(kind: str) -> None:
    the_task = task("upper")

    async def body(executor: Executor) -> list[Any]:
        calls = [
            executor.submit(the_task, {"text": f"row{n}"}, ctx(f"k{n}"), timeout=None)
            for n in range(300)
        ]
        return await asyncio.gather(*calls)

    ran = with_executor(kind, the_task, body)
    assert [r.value["upper"] for r in ran] == [f"ROW{n}" for n in range(300)]


def test_an_async_call_returns_its_value(kind: str) -> None:
    the_task = task("async_upper")
    ran = with_executor(
        kind, the_task, lambda ex: ex.submit(the_task, {"text": "abc"}, ctx(), timeout=FOREVER)
    )
    assert ran.value == {"upper": "ABC"}


def test_a_calls_own_exception_comes_back_as_it_was(kind: str) -> None:
    the_task = task("broken")
    with pytest.raises(Exception, match="no column for abc") as caught:
        with_executor(
            kind, the_task, lambda ex: ex.submit(the_task, {"text": "abc"}, ctx(), timeout=None)
        )
    assert type(caught.value) is tasks_module().NoColumn


def test_an_exception_that_cannot_be_pickled_comes_back_by_name(kind: str) -> None:
    the_task = task("raises_unpicklable")
    with pytest.raises(Exception, match="1\\+2") as caught:
        with_executor(kind, the_task, lambda ex: ex.submit(the_task, {}, ctx(), timeout=None))
    assert "Unpicklable" in type(caught.value).__name__ + str(caught.value)


def test_a_value_that_cannot_be_sent_back_fails_its_own_call(kind: str) -> None:
    the_task = task("returns_a_lock")

    def call(ex: Executor) -> Coroutine[Any, Any, Any]:
        return ex.submit(the_task, {}, ctx(), timeout=None)

    if kind == "local":  # in this process any value can be handed back
        assert "lock" in with_executor(kind, the_task, call).value
        return
    with pytest.raises(Exception, match="cannot send the value back"):
        with_executor(kind, the_task, call)


def test_a_stop_comes_back_as_a_stop(kind: str) -> None:
    the_task = task("stops")
    with pytest.raises(RunStop, match="stop at here") as caught:
        with_executor(
            kind, the_task, lambda ex: ex.submit(the_task, {"text": "here"}, ctx(), timeout=None)
        )
    assert caught.value.reason == "interrupted"


def test_a_sync_call_past_its_timeout_is_stopped_or_written_off(kind: str, tmp_path: Path) -> None:
    the_task = task("stuck_until")
    row = {"started": str(tmp_path / "started"), "release": str(tmp_path / "release")}
    follow = task("upper")

    async def body(executor: Executor) -> Any:
        with pytest.raises(CallTimeout) as caught:
            await executor.submit(the_task, row, ctx(), timeout=0.05)
        assert (tmp_path / "started").exists()  # it ran, and ran past its timeout
        # Nothing stuck keeps the next call from running.
        if kind == "local":
            return (
                caught.value,
                executor.stuck,
                await executor.submit(follow, {"text": "x"}, ctx("k2"), timeout=FOREVER),
            )
        after = await executor.submit(
            the_task, {**row, "release": str(tmp_path)}, ctx("k2"), timeout=FOREVER
        )
        return caught.value, executor.stuck, after

    try:
        stuck, stuck_count, after = with_executor(kind, the_task, body, workers=1)
    finally:
        (tmp_path / "release").touch()
    if kind == "local":  # a thread cannot be stopped: written off, its slot refilled
        assert stuck.abandoned is Abandoned.REPLACED
        assert stuck_count == 1
        assert after.value["upper"] == "X"
    else:  # a process can: killed, and a new worker runs the next call
        assert stuck.abandoned is Abandoned.KILLED
        assert stuck_count == 0
        assert after.value == {}


def test_stuck_threads_past_the_bound_exhaust_only_the_local_executor(
    kind: str, tmp_path: Path
) -> None:
    the_task = task("stuck_until")
    row = {"started": str(tmp_path / "started"), "release": str(tmp_path / "release")}

    async def body(executor: Executor) -> bool:
        for n in range(2):
            with pytest.raises(CallTimeout):
                await executor.submit(the_task, row, ctx(f"k{n}"), timeout=0.05)
        return executor.exhausted

    try:
        exhausted = with_executor(kind, the_task, body, workers=1)
    finally:
        (tmp_path / "release").touch()
    assert exhausted is (kind == "local")


def test_an_async_call_past_its_timeout_is_cancelled(kind: str, tmp_path: Path) -> None:
    the_task = task("waits_forever")
    row = {"cancelled": str(tmp_path / "cancelled")}
    with pytest.raises(CallTimeout) as caught:
        with_executor(kind, the_task, lambda ex: ex.submit(the_task, row, ctx(), timeout=0.05))
    assert caught.value.abandoned is Abandoned.CANCELLED
    assert (tmp_path / "cancelled").exists()


def test_a_tasks_own_timeout_is_not_the_executors(kind: str) -> None:
    the_task = task("own_timeout")
    with pytest.raises(TimeoutError, match="the task's own"):
        with_executor(kind, the_task, lambda ex: ex.submit(the_task, {}, ctx(), timeout=FOREVER))


def encode(values: list[dict[str, Any]]) -> list[str]:
    return [f"n={value['n']}@{value['where']}" for value in values]


def test_a_group_runs_in_a_worker_with_outputs_encoded_there(kind: str) -> None:
    grouped = tasks_module().Grouped()
    rows = [{"text": "a"}, {"text": "bb"}, {"text": "ccc"}]
    ran = with_executor(kind, grouped, lambda ex: ex.submit_group(grouped, rows, encode))
    assert [text.split("@")[0] for text in ran.value] == ["n=1", "n=2", "n=3"]
    where = ran.value[0].split("@")[1]
    assert where != f"{os.getpid()}:MainThread"


def test_a_group_with_too_few_outputs_fails_whole(kind: str) -> None:
    grouped = tasks_module().Grouped(short_by=1)
    with pytest.raises(ValueError, match="gave 2 outputs for 3 rows"):
        with_executor(
            kind, grouped, lambda ex: ex.submit_group(grouped, [{"text": "a"}] * 3, encode)
        )


@pytest.mark.parametrize("kind", REMOTE)
def test_a_worker_silent_past_the_timeout_is_killed_from_the_driver(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """A call holding the GIL in C stops the worker's own watchdog too: the driver sees
    the worker fall silent past the timeout and kills it. (Not on threads: one holding
    the GIL would hold this very test.)"""
    if kind == "ray":
        request.getfixturevalue("ray_session")
    from rowpilot.executors import remote

    monkeypatch.setattr(remote, "SILENCE_GRACE", 0.2)
    the_task = task("holds_the_gil")
    row = {"started": str(tmp_path / "started")}

    async def body(executor: Executor) -> Any:
        with pytest.raises(CallTimeout) as caught:
            await executor.submit(the_task, row, ctx(), timeout=0.05)
        assert (tmp_path / "started").exists()
        return caught.value

    assert with_executor(kind, the_task, body, workers=1).abandoned is Abandoned.KILLED


@pytest.mark.parametrize("kind", REMOTE)
def test_items_travel_to_workers_in_batches(kind: str, request: pytest.FixtureRequest) -> None:
    if kind == "ray":
        request.getfixturevalue("ray_session")
    the_task = task("upper")

    async def body(executor: Any) -> tuple[int, int]:
        calls = [
            executor.submit(the_task, {"text": f"row{n}"}, ctx(f"k{n}"), timeout=None)
            for n in range(2000)
        ]
        ran = await asyncio.gather(*calls)
        assert [r.value["upper"] for r in ran] == [f"ROW{n}" for n in range(2000)]
        return executor.messages_sent, len(ran)

    sent, items = with_executor(kind, the_task, body)
    assert sent <= items / 10  # items submitted in one turn of the loop go together
