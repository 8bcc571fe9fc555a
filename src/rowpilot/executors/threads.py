"""Threads for sync calls: daemon threads, and a call that never returns can be let go.

Written by hand because ``concurrent.futures.ThreadPoolExecutor`` can do neither: its
threads are joined at interpreter exit (one hung task keeps the CLI from exiting after its
summary), and a call its caller gave up on keeps its thread's slot (the other rows queue
behind it). Python cannot stop a thread, so this pool *abandons* one instead:

* threads are daemons, started on demand up to ``capacity``; idle ones wait for a hand-off;
* ``Call.started`` (or ``submit``'s ``on_start``) says when a call begins to run, so a
  caller's timeout counts from then: a call queued behind others is not late;
* ``abandon(call)``: the caller gave up on a running call. Its future fails with
  ``AbandonedCall`` at once, whatever it returns later is dropped, and its thread leaves
  the pool when it returns. Until then a new thread may take its slot, for at most
  ``max_abandoned`` stuck threads at once: past that bound a stuck call keeps its slot, so
  the threads alive never pass ``capacity + max_abandoned``;
* ``shutdown()`` cancels the queued calls and never waits for a running one.

``run_sync`` is the event loop's side: submit, start the clock when the call starts, and
abandon the call on a timeout or a cancellation.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import functools
import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar, TypeVarTuple

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class AbandonedCall(Exception):
    """The outcome of an abandoned call: what it returns, if it ever does, is dropped."""


class Abandoned(enum.Enum):
    """What ``ThreadPool.abandon`` did with a call."""

    NOT_STARTED = "not_started"  # it was queued: cancelled, it never runs
    FINISHED = "finished"  # it had returned: its future holds its outcome
    REPLACED = "replaced"  # written off: a new thread may take its slot
    AT_BOUND = "at_bound"  # written off, but max_abandoned are stuck already: it keeps its slot
    CANCELLED = "cancelled"  # an async call, cancelled at its deadline: nothing is left running
    KILLED = "killed"  # its worker process was killed: nothing is left running


class CallTimeout(Exception):
    """``run_sync``: the call ran ``seconds`` past its start and was abandoned."""

    def __init__(self, seconds: float, abandoned: Abandoned) -> None:
        super().__init__(seconds, abandoned)  # the arguments, so that it pickles
        self.seconds = seconds
        self.abandoned = abandoned

    def __str__(self) -> str:
        if self.abandoned in (Abandoned.CANCELLED, Abandoned.KILLED):
            return f"the call ran past {self.seconds:g}s and was stopped"
        return f"the call ran past {self.seconds:g}s; its thread cannot be stopped"


@dataclass(frozen=True)
class ThreadStatistics:
    capacity: int  # calls that may run at once, besides abandoned ones within the bound
    running: int  # calls on a thread that are not abandoned
    queued: int  # calls waiting for a thread
    abandoned: int  # abandoned calls that have not returned: threads nobody can stop
    threads: int  # threads in the pool: idle, running and abandoned
    max_abandoned: int


class Call(Future[T]):
    """A submitted call's future; ``started`` is set when the call begins to run."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()


class _State(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    ABANDONED = "abandoned"


@dataclass(eq=False)
class _Work:
    call: Call[Any]
    run: Callable[[], Any]
    on_start: Callable[[], object] | None
    state: _State = _State.QUEUED
    verdict: Abandoned | None = None  # set by abandon
    thread: threading.Thread | None = None


class ThreadPool:
    """Runs sync calls on daemon threads, at most ``capacity`` at once (see the module)."""

    def __init__(
        self, capacity: int, *, max_abandoned: int | None = None, name: str = "rowpilot"
    ) -> None:
        _check_capacity(capacity)
        if max_abandoned is not None and max_abandoned < 0:
            raise ValueError(f"max_abandoned must be at least 0, not {max_abandoned}")
        self._capacity = capacity
        self._max_abandoned = capacity if max_abandoned is None else max_abandoned
        self._name = name
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()  # guards everything below
        self._queue: collections.deque[_Work] = collections.deque()
        self._works: dict[Call[Any], _Work] = {}  # queued and running, for abandon
        self._handoff: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()  # None: leave
        self._busy = 0  # threads running calls that are not abandoned
        self._idle = 0  # threads waiting on the hand-off, each owed at most one item
        self._abandoned = 0
        self._threads = 0
        self._closed = False

    # -- the caller's side ----------------------------------------------------------------

    def submit(
        self,
        fn: Callable[[*Ts], T],
        /,
        *args: *Ts,
        on_start: Callable[[], object] | None = None,
    ) -> Call[T]:
        """Queue ``fn(*args)``. ``on_start`` runs on the call's thread just before ``fn``
        (say ``loop.call_soon_threadsafe``); if it raises, the call fails with its error."""
        call: Call[T] = Call()
        work = _Work(call, functools.partial(fn, *args), on_start)
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the {self._name} thread pool is shut down")
            self._queue.append(work)
            self._works[call] = work
            spawn = self._dispatch()
        self._start(spawn)
        return call

    def abandon(self, call: Call[Any]) -> Abandoned:
        """The caller gave up on ``call``: cancel it if queued, write its thread off if running.
        Abandoning a call twice gives the first answer again."""
        with self._lock:
            work = self._works.get(call)
            verdict, first = self._write_off(call, work)
            spawn = self._dispatch()
        if verdict is Abandoned.NOT_STARTED:
            call.cancel()
        elif first and work is not None:
            _mark_stuck(work)
        self._start(spawn)
        return verdict

    def resize(self, capacity: int) -> None:
        """Growing starts queued calls at once; shrinking retires idle threads now and
        running ones as their calls return."""
        _check_capacity(capacity)
        with self._lock:
            self._capacity = capacity
            self._retire_idle()
            spawn = self._dispatch()
        self._start(spawn)

    def shutdown(self) -> None:
        """Cancel the queued calls and let the idle threads go. Running calls go on (their
        threads leave as they return): this never waits for one."""
        with self._lock:
            self._closed = True
            queued = list(self._queue)
            self._queue.clear()
            for work in queued:
                del self._works[work.call]
            self._retire_idle()
        for work in queued:
            work.call.cancel()

    def statistics(self) -> ThreadStatistics:
        with self._lock:
            return ThreadStatistics(
                capacity=self._capacity,
                running=self._busy,
                queued=sum(not work.call.cancelled() for work in self._queue),
                abandoned=self._abandoned,
                threads=self._threads,
                max_abandoned=self._max_abandoned,
            )

    # -- bookkeeping, under the lock ------------------------------------------------------

    def _dispatch(self) -> list[_Work]:
        """Hand queued calls to idle threads while slots are free; those returned need a
        thread each, started once the lock is released."""
        spawn: list[_Work] = []
        while (work := self._take()) is not None:
            if self._idle:
                self._idle -= 1
                self._handoff.put(work)
            else:
                self._threads += 1
                spawn.append(work)
        return spawn

    def _take(self) -> _Work | None:
        """The next queued call, now running, if a slot is free (cancelled ones are dropped)."""
        while self._queue and self._busy + self._stuck() < self._capacity:
            work = self._queue.popleft()
            # Under the lock, so abandon sees a call either queued or running, never between.
            if work.call.set_running_or_notify_cancel():
                work.state = _State.RUNNING
                self._busy += 1
                return work
            del self._works[work.call]
        return None

    def _stuck(self) -> int:
        """Abandoned calls past the bound: not replaced, they keep their slots."""
        return max(0, self._abandoned - self._max_abandoned)

    def _surplus(self) -> bool:
        """No room for one more idle thread."""
        return self._closed or self._busy + self._idle + self._stuck() >= self._capacity

    def _retire_idle(self) -> None:
        while self._idle and (
            self._closed or self._busy + self._idle + self._stuck() > self._capacity
        ):
            self._idle -= 1
            self._threads -= 1
            self._handoff.put(None)

    def _write_off(self, call: Call[Any], work: _Work | None) -> tuple[Abandoned, bool]:
        """The verdict on an abandoned call, and whether this is the first time."""
        if work is None:  # not ours any more: it ran, or was cancelled before it could
            return (Abandoned.NOT_STARTED if call.cancelled() else Abandoned.FINISHED), False
        if work.verdict is not None:
            return work.verdict, False
        if work.state is _State.QUEUED:
            self._queue.remove(work)
            del self._works[work.call]
            return Abandoned.NOT_STARTED, True
        work.state = _State.ABANDONED
        self._busy -= 1
        self._abandoned += 1
        replaced = self._abandoned <= self._max_abandoned
        work.verdict = Abandoned.REPLACED if replaced else Abandoned.AT_BOUND
        return work.verdict, True

    # -- the threads ----------------------------------------------------------------------

    def _start(self, spawn: list[_Work]) -> None:
        for work in spawn:
            name = f"{self._name}-{next(self._numbers)}"
            thread = threading.Thread(target=self._serve, args=(work,), name=name, daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # no thread can start: the interpreter is exiting
                self._unstarted(work, exc)

    def _unstarted(self, work: _Work, error: RuntimeError) -> None:
        with self._lock:
            self._threads -= 1
            abandoned = work.state is _State.ABANDONED
            self._works.pop(work.call, None)
            if abandoned:
                self._abandoned -= 1
            else:
                self._busy -= 1
        if not abandoned:
            work.call.set_exception(error)

    def _serve(self, first: _Work) -> None:
        """A thread's life: run calls until told to leave."""
        work: _Work | None = first
        while work is not None:
            result, error = _run(work)
            work = self._finish(work, result, error)

    def _finish(self, work: _Work, result: Any, error: BaseException | None) -> _Work | None:
        """Deliver a call's outcome, unless abandoned; then this thread's next call, or None
        when the thread leaves the pool."""
        with self._lock:
            del self._works[work.call]
            abandoned = work.state is _State.ABANDONED
            following, leave = self._after_call(abandoned)
            spawn = self._dispatch()  # a stuck thread leaving may free a slot
        self._start(spawn)
        if not abandoned:
            _settle(work.call, result, error)
        if following is not None or leave:
            return following
        return self._handoff.get()

    def _after_call(self, abandoned: bool) -> tuple[_Work | None, bool]:
        """Under the lock: a queued call for this thread, or whether the thread leaves
        (neither: it waits on the hand-off as an idle thread)."""
        if abandoned:
            self._abandoned -= 1
            self._threads -= 1
            return None, True
        self._busy -= 1
        following = self._take()
        if following is not None:
            return following, False
        if self._surplus():
            self._threads -= 1
            return None, True
        self._idle += 1
        return None, False


async def run_sync(
    pool: ThreadPool,
    fn: Callable[[*Ts], T],
    /,
    *args: *Ts,
    timeout: float | None = None,
) -> T:
    """``fn(*args)`` on ``pool``, awaited. ``timeout`` counts from the call's start on a
    thread, not from its submission. Past it the call is abandoned and ``CallTimeout``
    says whether its slot was refilled; a cancelled caller abandons its call too."""
    loop = asyncio.get_running_loop()
    started: asyncio.Future[None] = loop.create_future()
    on_start = functools.partial(loop.call_soon_threadsafe, started.set_result, None)
    call = pool.submit(fn, *args, on_start=on_start)
    outcome = asyncio.wrap_future(call)
    try:
        await asyncio.wait((started, outcome), return_when=asyncio.FIRST_COMPLETED)
        if timeout is None:
            return await outcome
        return await _within(pool, call, outcome, timeout)
    except asyncio.CancelledError:
        # Cancelled first, so that an AbandonedCall set on the call lands nowhere rather
        # than on a future nobody reads ("exception was never retrieved").
        outcome.cancel()
        pool.abandon(call)
        raise


async def _within(pool: ThreadPool, call: Call[T], outcome: asyncio.Future[T], timeout: float) -> T:
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            return await outcome
    except TimeoutError:
        if not deadline.expired():
            raise  # the call's own TimeoutError
    abandoned = pool.abandon(call)
    if abandoned is Abandoned.FINISHED:  # it returned as the clock ran out: keep its outcome
        return await asyncio.wrap_future(call)
    raise CallTimeout(timeout, abandoned)


def _run(work: _Work) -> tuple[Any, BaseException | None]:
    work.thread = threading.current_thread()
    work.call.started.set()
    try:
        if work.on_start is not None:
            work.on_start()
        return work.run(), None
    except BaseException as exc:  # like ThreadPoolExecutor: RunStop and the rest reach the future
        return None, exc


def _settle(call: Call[Any], result: Any, error: BaseException | None) -> None:
    if error is None:
        call.set_result(result)
    else:
        call.set_exception(error)


def _mark_stuck(work: _Work) -> None:
    """Fail the abandoned call's future now, and say so in its thread's name (stack dumps)."""
    work.call.set_exception(AbandonedCall("abandoned by its caller; its result is dropped"))
    if work.thread is not None:
        work.thread.name += " (abandoned)"


def _check_capacity(capacity: int) -> None:
    if capacity < 1:
        raise ValueError(f"a thread pool's capacity must be at least 1, not {capacity}")
