"""The thread pool for sync calls: real threads, held and released with Events.

No test sleeps to wait for a thread or measures time: ``WAIT`` only bounds a wait that
a correct pool ends at once, so a broken one fails instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from rowpilot.executors.threads import (
    Abandoned,
    AbandonedCall,
    Call,
    CallTimeout,
    ThreadPool,
    ThreadStatistics,
    run_sync,
)

WAIT = 60.0

Gate = Callable[[], threading.Event]
Pools = Callable[..., ThreadPool]


@pytest.fixture
def gate() -> Iterator[Gate]:
    """Makes Events that hold calls; all are set at the end, so no thread outlives a test."""
    made: list[threading.Event] = []

    def make() -> threading.Event:
        made.append(threading.Event())
        return made[-1]

    yield make
    for event in made:
        event.set()


@pytest.fixture
def pool() -> Iterator[Pools]:
    made: list[ThreadPool] = []

    def make(capacity: int, **options: Any) -> ThreadPool:
        made.append(ThreadPool(capacity, **options))
        return made[-1]

    yield make
    for each in made:
        each.shutdown()


def started(call: Call[Any]) -> Call[Any]:
    assert call.started.wait(WAIT)
    return call


def stats(pool: ThreadPool, **expected: int) -> None:
    got = pool.statistics()
    assert {name: getattr(got, name) for name in expected} == expected


def running_thread(
    pool: ThreadPool, hold: threading.Event
) -> tuple[Call[bool], list[threading.Thread]]:
    """A call that holds its thread until ``hold`` is set, once running, and that thread."""
    threads: list[threading.Thread] = []
    entered = threading.Event()

    def held() -> bool:
        threads.append(threading.current_thread())
        entered.set()
        return hold.wait()

    call = pool.submit(held)
    assert entered.wait(WAIT)
    return call, threads


# -- running calls -------------------------------------------------------------------------


def test_calls_run_concurrently_up_to_capacity(pool: Pools, gate: Gate) -> None:
    threads = pool(3)
    together = threading.Barrier(3, timeout=WAIT)  # breaks unless three calls run at once
    hold = gate()

    def held(n: int) -> int:
        together.wait()
        hold.wait()
        return n

    calls = [threads.submit(held, n) for n in range(3)]
    fourth = threads.submit(str, 3)
    for call in calls:
        started(call)
    assert not fourth.started.is_set()
    stats(threads, running=3, queued=1, threads=3)
    hold.set()
    assert [call.result(WAIT) for call in calls] == [0, 1, 2]
    assert fourth.result(WAIT) == "3"


def test_the_started_event_and_on_start_fire_when_the_call_runs(pool: Pools, gate: Gate) -> None:
    threads = pool(1)
    hold = gate()
    running_thread(threads, hold)
    seen: list[str] = []
    second = threads.submit(seen.append, "ran", on_start=lambda: seen.append("started"))
    assert not second.started.is_set()
    assert seen == []
    hold.set()
    started(second).result(WAIT)
    assert seen == ["started", "ran"]


def test_an_exception_from_the_call_reaches_its_future(pool: Pools) -> None:
    threads = pool(1)

    def fails() -> None:
        raise ValueError("bad row")

    with pytest.raises(ValueError, match="bad row"):
        threads.submit(fails).result(WAIT)
    assert threads.submit(str, 7).result(WAIT) == "7"  # the thread lived on
    stats(threads, threads=1, running=0)


def test_a_raising_on_start_fails_the_call_instead_of_running_it(pool: Pools) -> None:
    threads = pool(1)
    ran: list[int] = []

    def closed_loop() -> None:
        raise RuntimeError("Event loop is closed")

    call = threads.submit(ran.append, 1, on_start=closed_loop)
    with pytest.raises(RuntimeError, match="closed"):
        call.result(WAIT)
    assert ran == []


def test_threads_are_named_daemons(pool: Pools) -> None:
    thread = pool(1, name="rowpilot-sub").submit(threading.current_thread).result(WAIT)
    assert thread.name.startswith("rowpilot-sub-")
    assert thread.daemon


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ThreadPool(0)
    with pytest.raises(ValueError, match="at least 0"):
        ThreadPool(1, max_abandoned=-1)


# -- abandoning -----------------------------------------------------------------------------


def test_an_abandoned_call_does_not_keep_new_calls_from_starting(pool: Pools, gate: Gate) -> None:
    threads = pool(1, max_abandoned=1)
    stuck, held_by = running_thread(threads, gate())
    assert threads.abandon(stuck) is Abandoned.REPLACED
    with pytest.raises(AbandonedCall):
        stuck.result(WAIT)  # at once: the caller need not wait for it
    assert threads.submit(str, "next").result(WAIT) == "next"
    stats(threads, running=0, abandoned=1, threads=2)
    assert held_by[0].name.endswith("(abandoned)")


def test_the_bound_on_abandoned_threads_holds_and_is_reported(pool: Pools, gate: Gate) -> None:
    threads = pool(1, max_abandoned=1)
    first_hold = gate()
    first, _ = running_thread(threads, first_hold)
    assert threads.abandon(first) is Abandoned.REPLACED
    second, _ = running_thread(threads, gate())
    assert threads.abandon(second) is Abandoned.AT_BOUND
    waiting = threads.submit(str, "waited")
    # Past the bound a stuck call keeps its slot: capacity + max_abandoned threads, no more.
    stats(threads, running=0, queued=1, abandoned=2, threads=2)
    assert not waiting.started.is_set()
    first_hold.set()  # one stuck call returns: the other is within the bound again
    assert waiting.result(WAIT) == "waited"
    stats(threads, abandoned=1, queued=0)


def test_an_abandoned_call_that_returns_gives_its_thread_back(pool: Pools, gate: Gate) -> None:
    threads = pool(1, max_abandoned=1)
    hold = gate()
    stuck, held_by = running_thread(threads, hold)
    threads.abandon(stuck)
    hold.set()
    held_by[0].join(WAIT)
    assert not held_by[0].is_alive()
    stats(threads, abandoned=0, threads=0)
    with pytest.raises(AbandonedCall):
        stuck.result(WAIT)  # what it returned was dropped
    # The capacity is back to one: a second held call waits behind the first.
    running_thread(threads, gate())
    behind = threads.submit(str, "behind")
    stats(threads, running=1, queued=1)
    assert not behind.started.is_set()


def test_abandoning_a_queued_call_cancels_it(pool: Pools, gate: Gate) -> None:
    threads = pool(1)
    hold = gate()
    running_thread(threads, hold)
    ran: list[int] = []
    queued = threads.submit(ran.append, 1)
    assert threads.abandon(queued) is Abandoned.NOT_STARTED
    assert threads.abandon(queued) is Abandoned.NOT_STARTED
    assert queued.cancelled()
    stats(threads, queued=0, abandoned=0)
    hold.set()
    threads.submit(ran.append, 2).result(WAIT)  # first in, first out: 1 would run before
    assert ran == [2]


def test_abandoning_a_finished_call_changes_nothing(pool: Pools) -> None:
    threads = pool(1)
    call = threads.submit(str, "kept")
    assert call.result(WAIT) == "kept"
    assert threads.abandon(call) is Abandoned.FINISHED
    assert call.result() == "kept"
    stats(threads, abandoned=0)


def test_abandoning_twice_counts_once(pool: Pools, gate: Gate) -> None:
    threads = pool(2, max_abandoned=1)
    stuck, _ = running_thread(threads, gate())
    assert threads.abandon(stuck) is Abandoned.REPLACED
    assert threads.abandon(stuck) is Abandoned.REPLACED
    stats(threads, abandoned=1)


# -- resizing and shutting down --------------------------------------------------------------


def test_growing_starts_queued_calls(pool: Pools, gate: Gate) -> None:
    threads = pool(1)
    running_thread(threads, gate())
    waiting = threads.submit(str, "grown")
    threads.resize(2)
    assert waiting.result(WAIT) == "grown"


def test_shrinking_retires_idle_threads_and_waits_for_running_ones(pool: Pools, gate: Gate) -> None:
    threads = pool(2)
    hold = gate()
    first, _ = running_thread(threads, hold)
    running_thread(threads, gate())
    threads.resize(1)
    stats(threads, capacity=1, running=2, threads=2)
    hold.set()
    assert first.result(WAIT)  # its thread leaves: the other call fills the one slot
    stats(threads, running=1, threads=1)
    waiting = threads.submit(str, "after")
    assert not waiting.started.is_set()
    stats(threads, running=1, queued=1)


def test_shrinking_lets_idle_threads_go(pool: Pools) -> None:
    threads = pool(2)
    together = threading.Barrier(2, timeout=WAIT)
    calls = [threads.submit(together.wait) for _ in range(2)]
    for call in calls:
        call.result(WAIT)
    stats(threads, threads=2)
    threads.resize(1)
    stats(threads, threads=1)


def test_shutdown_with_a_stuck_call_does_not_block(pool: Pools, gate: Gate) -> None:
    threads = pool(1)
    hold = gate()
    stuck, held_by = running_thread(threads, hold)
    queued = threads.submit(str, "never")
    threads.shutdown()  # returns with the call still running: it cannot be stopped
    assert queued.cancelled()
    assert not stuck.done()
    with pytest.raises(RuntimeError, match="shut down"):
        threads.submit(str, "late")
    hold.set()
    assert stuck.result(WAIT) is True  # not abandoned: its result is kept
    held_by[0].join(WAIT)
    assert not held_by[0].is_alive()
    assert threads.statistics() == ThreadStatistics(
        capacity=1, running=0, queued=0, abandoned=0, threads=0, max_abandoned=1
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "ending",
    [
        "pool.abandon(call)",
        "pool.shutdown()",
        "pass  # neither: daemon threads are not joined at exit anyway",
        "asyncio.run(timed_out())",
    ],
)
def test_a_process_with_a_call_stuck_forever_exits(ending: str) -> None:
    script = textwrap.dedent(f"""\
        import asyncio
        import threading

        from rowpilot.executors.threads import CallTimeout, ThreadPool, run_sync


        async def timed_out():
            pool = ThreadPool(1)  # main's pool has its one thread stuck
            try:
                await run_sync(pool, threading.Event().wait, timeout=0.01)
            except CallTimeout:
                return


        def main():
            pool = ThreadPool(1)
            call = pool.submit(threading.Event().wait)  # blocks forever
            call.started.wait()
            {ending}
            print("done", flush=True)


        main()
        """)
    # A pool that joined its threads at exit would make this wait out WAIT and fail.
    ran = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=WAIT
    )
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "done\n", "")


# -- run_sync: the event loop's side --------------------------------------------------------


def in_loop(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


async def turns(count: int = 10) -> None:
    """Let the loop run its ready callbacks and timers a few times."""
    for _ in range(count):
        await asyncio.sleep(0)


class FrozenClock:
    """The loop's clock, moved only by the test: the only thing these tests fake."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_run_sync_returns_the_result_and_raises_the_error(pool: Pools) -> None:
    threads = pool(1)

    def own_timeout() -> None:
        raise TimeoutError("the task's own")

    async def scenario() -> None:
        assert await run_sync(threads, str, 5, timeout=WAIT) == "5"
        with pytest.raises(TimeoutError, match="the task's own"):
            await run_sync(threads, own_timeout, timeout=WAIT)

    in_loop(scenario)


def test_run_sync_abandons_a_call_past_its_timeout(pool: Pools, gate: Gate) -> None:
    threads = pool(1, max_abandoned=1)
    hold = gate()

    async def scenario() -> None:
        with pytest.raises(CallTimeout) as raised:
            await run_sync(threads, hold.wait, timeout=0.001)
        assert raised.value.abandoned is Abandoned.REPLACED
        assert "0.001s" in str(raised.value)
        stats(threads, abandoned=1, running=0)
        assert await run_sync(threads, str, "next", timeout=WAIT) == "next"

    in_loop(scenario)


def test_run_sync_counts_the_timeout_from_the_start(pool: Pools, gate: Gate) -> None:
    threads = pool(1)
    hold = gate()

    running_thread(threads, hold)  # out of the loop: it waits for the thread

    async def scenario() -> None:
        clock = FrozenClock()
        asyncio.get_running_loop().time = clock  # type: ignore[method-assign]
        queued = asyncio.create_task(run_sync(threads, str, "on time", timeout=1.0))
        await turns()
        stats(threads, queued=1)
        clock.now += 100.0  # a hundred timeouts pass while it waits for a thread
        await turns()
        assert not queued.done()
        hold.set()
        assert await queued == "on time"

    in_loop(scenario)


def test_a_cancelled_run_sync_abandons_its_running_call(pool: Pools, gate: Gate) -> None:
    threads = pool(1, max_abandoned=1)
    entered = threading.Event()
    hold = gate()

    def held() -> bool:
        entered.set()
        return hold.wait()

    async def scenario() -> None:
        task = asyncio.create_task(run_sync(threads, held))
        await asyncio.to_thread(entered.wait, WAIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats(threads, abandoned=1, running=0)

    in_loop(scenario)


def test_a_cancelled_run_sync_cancels_its_queued_call(pool: Pools, gate: Gate) -> None:
    threads = pool(1)
    hold = gate()
    ran: list[int] = []

    running_thread(threads, hold)

    async def scenario() -> None:
        task = asyncio.create_task(run_sync(threads, ran.append, 1))
        await turns()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats(threads, queued=0, abandoned=0)
        hold.set()
        await run_sync(threads, ran.append, 2)  # first in, first out: 1 would run before

    in_loop(scenario)
    assert ran == [2]
