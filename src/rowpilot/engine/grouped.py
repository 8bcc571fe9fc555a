"""The grouped path's parts (tasks with ``batch_call``, the local model): a group's
call, its outcomes built at once (an ``Outcome`` is the registry's row, a tuple), and the
thread that commits them.

An outcome of a grouped task counts as done only when the ``CommitThread`` has committed
it: the scheduler keeps each item's window slot until then, which also bounds what waits
for the thread (memory stays flat).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from operator import attrgetter
from typing import Any

from rowpilot.engine.items import Encoded, Item
from rowpilot.engine.settings import RunSettings
from rowpilot.executors.base import Executor
from rowpilot.state.registry import Outcome, Registry
from rowpilot.tasks.base import Task
from rowpilot.tasks.output import group_parts


def group_encoder(task: str, settings: RunSettings) -> Callable[[list[Any]], list[Encoded]]:
    """A group's encoder: a plain function of the outputs, so that it pickles to the
    worker process that runs the group."""
    prefix, taken = settings.output_prefix, settings.reserved
    return functools.partial(group_parts, task=task, prefix=prefix, taken=taken)


async def call_group(
    executor: Executor, task: Task, group: list[Item], settings: RunSettings
) -> tuple[list[Encoded] | None, float]:
    """One ``batch_call`` of the group in the executor: its encoded outputs (None if the
    call raised: any row may be the cause) and the seconds it took a row."""
    clock = time.perf_counter()
    try:
        rows = [item.fields for item in group]
        ran = await executor.submit_group(task, rows, group_encoder(task.name, settings))
    except Exception:
        return None, (time.perf_counter() - clock) / len(group)
    measured = time.perf_counter() - clock if ran.seconds is None else ran.seconds
    return ran.value, measured / len(group)


def group_outcomes(
    group: list[Item],
    outputs: list[Encoded],
    started: float,
    seconds: float,
    run_id: str,
    version: str | None,
) -> list[Outcome]:
    """The outcome of each row of a group that ran: done, one attempt, no provider calls,
    one finishing time. Built by ``tuple.__new__`` over zipped columns (the length is
    checked once, on the first), not a 21-argument constructor a row: this runs for every row."""
    if len(outputs) != len(group):
        raise ValueError(f"a group of {len(group)} rows came back with {len(outputs)} outputs")
    texts, vectors = zip(*outputs, strict=True)
    nothing, free = repeat(None), repeat(0)
    columns = (
        *(map(attrgetter(name), group) for name in ("key", "seq", "fingerprint", "input_json")),
        repeat("done"), repeat(1), texts, nothing, nothing, nothing,  # status ... traceback
        repeat(started), repeat(time.time()), repeat(seconds), repeat(run_id),
        nothing, repeat(0.0), free, free, free,  # cause, cost, tokens in and out, calls
        repeat(version), vectors,
    )  # fmt: skip
    # tuple.__new__ at C speed: Outcome._make is a Python call a row.
    make = functools.partial(tuple.__new__, Outcome)
    outcomes = list(map(make, zip(*columns, strict=False)))  # the repeats are endless
    if len(outcomes[0]) != len(Outcome._fields):
        raise AssertionError(f"an outcome of {len(outcomes[0])} fields, not {len(Outcome._fields)}")
    return outcomes


class CommitThread:
    """Commits of a registry on a thread of their own, in the order they were handed over.

    For grouped tasks (the local model): the SQLite work of a batch (binding, writing the
    WAL) releases the GIL, so it overlaps the model's next group instead of holding the
    event loop. The thread has its own connection (WAL: readers on the run's connection
    see each commit once it is whole). An outcome counts as done only when its commit's
    future has finished: the caller keeps the items' window slots until then, which is
    what bounds the work queued here.
    """

    def __init__(self, registry: Registry) -> None:
        self._own = Registry(registry.directory)  # used on the commit thread only
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rowpilot-commit")

    def commit(
        self,
        outcomes: Sequence[Outcome],
        meta: dict[str, str] | None,
        run: dict[str, Any] | None,
        cleared: Sequence[str],
        then: Callable[[BaseException | None], None],
    ) -> None:
        """``Registry.commit`` on the thread; ``then`` runs on the caller's event loop
        once the batch is durable (with None) or failed (with the error)."""
        loop = asyncio.get_running_loop()
        done = self._thread.submit(self._commit, outcomes, meta, run, cleared)
        done.add_done_callback(lambda ended: loop.call_soon_threadsafe(then, ended.exception()))

    def _commit(
        self,
        outcomes: Sequence[Outcome],
        meta: dict[str, str] | None,
        run: dict[str, Any] | None,
        cleared: Sequence[str],
    ) -> None:
        self._own.commit(outcomes, meta=meta, run=run, cleared=cleared)

    def close(self) -> None:
        """After the commits handed over so far."""
        self._thread.shutdown(wait=True)
        self._own.close()
