"""LocalExecutor: async tasks on the run's event loop, sync ones in a daemon thread pool.

A sync call past its timeout cannot be stopped (Python has no way to kill a thread): it
is written off and its thread replaced, up to as many again as the pool holds, so one
stuck row neither starves the others nor keeps the process alive at exit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rowpilot.executors.base import Ran
from rowpilot.executors.threads import Abandoned, CallTimeout, ThreadPool, run_sync

if TYPE_CHECKING:
    from rowpilot.tasks.base import Task
    from rowpilot.tasks.ctx import Ctx


class LocalExecutor:
    """This process: ``threads`` threads for sync calls and groups; async calls on the loop."""

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPool(threads, max_abandoned=threads)
        self._threads = threads

    async def submit(
        self, task: Task, row: dict[str, Any], ctx: Ctx, *, timeout: float | None
    ) -> Ran:
        if not task.is_async:
            value, cpu = await run_sync(
                self._pool, _cpu_timed, task.call, row, ctx, timeout=timeout
            )
            return Ran(value, cpu)
        if timeout is None:
            return Ran(await task.call(row, ctx))
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return Ran(await task.call(row, ctx))
        except TimeoutError:
            if deadline.expired():
                raise CallTimeout(timeout, Abandoned.CANCELLED) from None
            raise  # the task's own timeout, not ours

    async def submit_group(
        self, task: Task, rows: list[dict[str, Any]], encode: Callable[[list[Any]], list[Any]]
    ) -> Ran:
        return Ran(await run_sync(self._pool, _group_call, task, rows, encode))

    @property
    def exhausted(self) -> bool:
        stats = self._pool.statistics()
        return stats.abandoned - stats.max_abandoned >= stats.capacity

    @property
    def stuck(self) -> int:
        return self._pool.statistics().abandoned

    @property
    def capacity(self) -> int:
        return self._threads

    @property
    def parallel(self) -> int:
        return self._threads

    @property
    def name(self) -> str:
        return "threads"

    def close(self) -> None:
        self._pool.shutdown()


def _cpu_timed(call: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    started = time.thread_time()
    value = call(*args)
    return value, time.thread_time() - started


def _group_call(
    task: Task, rows: list[dict[str, Any]], encode: Callable[[list[Any]], list[Any]]
) -> list[Any]:
    """In a worker: the task's batch call, its outputs checked and encoded there too."""
    outputs = task.batch_call(rows)
    if len(outputs) != len(rows):
        raise ValueError(f"batch_call gave {len(outputs)} outputs for {len(rows)} rows")
    return encode(outputs)
