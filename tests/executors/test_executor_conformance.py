"""What every executor must do, run against each one (the process and Ray executors of
the next issue join ``EXECUTORS``): hand back a call's value or its exception, enforce
the timeout from the call's start, run groups with outputs encoded where they ran, and
report when stuck calls hold every worker. Synchronised on events, never on sleeps."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rowpilot.executors.base import Executor
from rowpilot.executors.local import LocalExecutor
from rowpilot.executors.threads import Abandoned, CallTimeout
from rowpilot.tasks.base import Task
from rowpilot.tasks.ctx import Ctx
from rowpilot.tasks.python import PythonTask

EXECUTORS: dict[str, Callable[[int], Executor]] = {"local": LocalExecutor}
NO_TIMEOUT = None
FOREVER = 3600.0  # a bound no call here comes near: the calls end on events


@pytest.fixture(params=sorted(EXECUTORS))
def make_executor(request: pytest.FixtureRequest) -> Iterator[Callable[[int], Executor]]:
    made: list[Executor] = []

    def make(workers: int = 2) -> Executor:
        executor = EXECUTORS[request.param](workers)
        made.append(executor)
        return executor

    yield make
    for executor in made:
        executor.close()


def ctx(key: str = "k1") -> Ctx:
    import logging

    return Ctx("run", key, 1, 1, logging.getLogger("test"))


def upper(row: dict[str, Any]) -> dict[str, Any]:
    return {"upper": row["text"].upper()}


async def async_upper(row: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"upper": row["text"].upper()}


def broken(row: dict[str, Any]) -> dict[str, Any]:
    raise KeyError(f"no column for {row['text']}")


class Grouped(Task):
    name = "grouped"
    version = "1"
    groups_rows = True
    rows_per_worker = 3

    def __init__(self, short_by: int = 0) -> None:
        self.short_by = short_by
        self.threads: set[str] = set()

    def call(self, row: dict[str, Any], ctx: Ctx) -> Any:
        return {"n": len(row["text"])}

    def batch_call(self, rows: list[dict[str, Any]]) -> list[Any]:
        self.threads.add(threading.current_thread().name)
        return [{"n": len(row["text"])} for row in rows[self.short_by :]]


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_a_sync_call_returns_its_value_and_cpu_time(make_executor: Any) -> None:
    executor = make_executor()
    task = PythonTask(upper)
    ran = run(executor.submit(task, {"text": "abc"}, ctx(), timeout=NO_TIMEOUT))
    assert ran.value == {"upper": "ABC"}
    assert ran.cpu_seconds >= 0.0


def test_an_async_call_returns_its_value(make_executor: Any) -> None:
    executor = make_executor()
    ran = run(executor.submit(PythonTask(async_upper), {"text": "abc"}, ctx(), timeout=FOREVER))
    assert ran.value == {"upper": "ABC"}


def test_a_calls_own_exception_comes_back_as_it_was(make_executor: Any) -> None:
    executor = make_executor()
    with pytest.raises(KeyError, match="no column for abc"):
        run(executor.submit(PythonTask(broken), {"text": "abc"}, ctx(), timeout=NO_TIMEOUT))


def test_a_sync_call_past_its_timeout_is_written_off(make_executor: Any) -> None:
    executor = make_executor(1)
    release = threading.Event()

    def stuck(row: dict[str, Any]) -> dict[str, Any]:
        release.wait()
        return {}

    try:
        with pytest.raises(CallTimeout) as caught:
            run(executor.submit(PythonTask(stuck), {}, ctx(), timeout=0.01))
        assert caught.value.abandoned is Abandoned.REPLACED
        assert executor.stuck == 1 and not executor.exhausted
        # Its thread was replaced: the next call runs.
        ran = run(executor.submit(PythonTask(upper), {"text": "x"}, ctx(), timeout=FOREVER))
        assert ran.value == {"upper": "X"}
    finally:
        release.set()


def test_stuck_calls_past_the_bound_exhaust_the_executor(make_executor: Any) -> None:
    executor = make_executor(1)
    release = threading.Event()

    def stuck(row: dict[str, Any]) -> dict[str, Any]:
        release.wait()
        return {}

    try:
        for _ in range(2):
            with pytest.raises(CallTimeout):
                run(executor.submit(PythonTask(stuck), {}, ctx(), timeout=0.01))
        assert executor.exhausted
    finally:
        release.set()


def test_an_async_call_past_its_timeout_is_cancelled(make_executor: Any) -> None:
    executor = make_executor()
    cancelled = threading.Event()

    async def waits_forever(row: dict[str, Any]) -> dict[str, Any]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    with pytest.raises(CallTimeout) as caught:
        run(executor.submit(PythonTask(waits_forever), {}, ctx(), timeout=0.01))
    assert caught.value.abandoned is Abandoned.CANCELLED
    assert cancelled.is_set()


def test_a_tasks_own_timeout_is_not_the_executors(make_executor: Any) -> None:
    executor = make_executor()

    async def own_timeout(row: dict[str, Any]) -> dict[str, Any]:
        raise TimeoutError("the task's own")

    with pytest.raises(TimeoutError, match="the task's own"):
        run(executor.submit(PythonTask(own_timeout), {}, ctx(), timeout=FOREVER))


def test_a_group_runs_in_a_worker_with_outputs_encoded_there(make_executor: Any) -> None:
    executor = make_executor()
    task = Grouped()
    rows = [{"text": "a"}, {"text": "bb"}, {"text": "ccc"}]
    encoded = run(executor.submit_group(task, rows, lambda value: f"n={value['n']}"))
    assert encoded == ["n=1", "n=2", "n=3"]
    assert threading.main_thread().name not in task.threads


def test_a_group_with_too_few_outputs_fails_whole(make_executor: Any) -> None:
    executor = make_executor()
    with pytest.raises(ValueError, match="gave 2 outputs for 3 rows"):
        run(executor.submit_group(Grouped(short_by=1), [{"text": "a"}] * 3, str))
