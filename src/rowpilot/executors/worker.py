"""The worker side of the process and Ray executors: a host for one task's calls.

A ``WorkerHost`` lives in a worker (a process of this machine, or a Ray actor) and is fed
messages by the driver (``rowpilot.executors._wire``). It owns no state of the run:

* sync items run one after another on each of ``lanes`` threads, async items on the
  worker's event loop; each outcome goes back with the CPU and wall seconds it took;
* a task's ``ctx`` steps go to the driver, which owns the limits, the budget and the
  journal (``WorkerSteps``). ``ctx.llm`` runs there whole. ``ctx.call`` asks the driver
  for a permit; the driver replies ``invoke`` when it holds it and the budget is reserved,
  the function runs *here*, and its result goes back to be journaled before the task sees
  it. ``ctx.map`` fans out here, each sub-item's own steps going to the driver likewise;
* a sync call past its timeout cannot be stopped in a thread, but a process can: the host
  reports the timeout and asks the driver to kill it (``("stuck", ...)``), and the driver
  starts a new worker in its place.

Messages leave in batches: whatever the worker produced in one turn of its loop goes as
one pickled message, so a no-op task costs one round trip per batch, not per item.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import itertools
import logging
import os
import pickle
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from rowpilot.errors import ConfigError, SubItemError
from rowpilot.executors._wire import Message, load_task_blob, pack, portable
from rowpilot.executors.threads import Abandoned, CallTimeout, ThreadPool, run_sync
from rowpilot.tasks.ctx import Ctx, run_blocking
from rowpilot.tasks.values import ItemUsage, StepTrail

if TYPE_CHECKING:
    from rowpilot.tasks.base import Task

T = TypeVar("T")
_WATCH_PERIOD = 0.05  # how often the watchdog looks at the lanes' clocks (seconds)
_OUTCOME_DELAY = 0.05  # the longest an outcome waits for others to go back with it
_logger = logging.getLogger("rowpilot.task")


class WorkerHost:
    """Runs the items the driver sends; ``send`` takes each packed batch going back.
    Made on the worker's running event loop, which must keep running."""

    def __init__(self, task: Task, send: Callable[[bytes], None], *, lanes: int = 1) -> None:
        self.task = task
        self.loop = asyncio.get_running_loop()
        self._send = send
        self._outbox: list[Message] = []
        self._outbox_lock = threading.Lock()
        self._flushing: str | None = None  # "now" or "later": a flush is on its way
        self._inbox: queue.SimpleQueue[tuple[int, str, Any] | None] = queue.SimpleQueue()
        self._running: dict[int, tuple[int, float, float | None]] = {}  # lane: work, since
        self._replies: dict[int, asyncio.Future[tuple[bool, Any]]] = {}
        self._invokes: dict[
            int, tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], Any]
        ] = {}
        self._step_ids = itertools.count(1)
        self._sub_pool = ThreadPool(max(4, 4 * lanes), name="rowpilot-worker-sub")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stuck = False
        self._lanes = [
            threading.Thread(target=self._lane, args=(n,), name=f"rowpilot-lane-{n}", daemon=True)
            for n in range(lanes)
        ]
        for lane in self._lanes:
            lane.start()
        self.loop.call_later(_WATCH_PERIOD, self._watch)

    # -- from the driver ------------------------------------------------------------------

    def deliver(self, blob: bytes) -> None:
        """Take a batch of the driver's messages (on the loop's thread)."""
        for message in pickle.loads(blob):
            kind = message[0]
            if kind == "run":
                for work_id, what, payload in message[1]:
                    self._start(work_id, what, payload)
            elif kind == "reply":
                future = self._replies.pop(message[1], None)
                if future is not None and not future.done():
                    future.set_result((message[2], message[3]))
            elif kind == "invoke":
                self._spawn(self._invoke(message[1]))

    def _start(self, work_id: int, what: str, payload: Any) -> None:
        if what == "call" and self.task.is_async:
            self._spawn(self._run_async(work_id, payload))
        else:
            self._inbox.put((work_id, what, payload))

    def close(self) -> None:
        for _ in self._lanes:
            self._inbox.put(None)
        self._sub_pool.shutdown()

    # -- items ----------------------------------------------------------------------------

    def _lane(self, lane: int) -> None:
        while (work := self._inbox.get()) is not None:
            work_id, what, payload = work
            timeout = payload[5] if what == "call" else None
            self._running[lane] = (work_id, time.monotonic(), timeout)
            cpu, clock = time.thread_time(), time.perf_counter()
            try:
                value: Any = self._group(*payload) if what == "group" else self._call(payload)
                ok = True
            except BaseException as exc:  # RunStop too: the driver decides what it means
                value, ok = portable(exc), False
            finally:
                self._running.pop(lane, None)
            seconds = time.perf_counter() - clock
            self.post(("done", work_id, ok, value, time.thread_time() - cpu, seconds))

    def _call(self, payload: tuple[Any, ...]) -> Any:
        row, run_id, key, seq, attempt, _ = payload
        return self.task.call(row, self._ctx(run_id, key, seq, attempt))

    def _group(
        self, rows: list[dict[str, Any]], encode: Callable[[list[Any]], list[Any]]
    ) -> list[Any]:
        outputs = self.task.batch_call(rows)
        if len(outputs) != len(rows):
            raise ValueError(f"batch_call gave {len(outputs)} outputs for {len(rows)} rows")
        return encode(outputs)

    async def _run_async(self, work_id: int, payload: tuple[Any, ...]) -> None:
        row, run_id, key, seq, attempt, timeout = payload
        clock = time.perf_counter()
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                value = await self.task.call(row, self._ctx(run_id, key, seq, attempt))
            outcome: Message = ("done", work_id, True, value)
        except TimeoutError as exc:
            error = CallTimeout(timeout or 0.0, Abandoned.CANCELLED) if deadline.expired() else exc
            outcome = ("done", work_id, False, portable(error))
        except BaseException as exc:
            outcome = ("done", work_id, False, portable(exc))
        self.post((*outcome, 0.0, time.perf_counter() - clock))

    def _ctx(self, run_id: str, key: str, seq: int, attempt: int) -> Ctx:
        steps = WorkerSteps(self, key)
        return Ctx(run_id, key, seq, attempt, _logger, ItemUsage(), steps, StepTrail())

    def _watch(self) -> None:
        """A sync call past its timeout: report it, then ask the driver to kill us."""
        now = time.monotonic()
        for work_id, since, timeout in list(self._running.values()):
            if timeout is not None and now - since > timeout and not self._stuck:
                self._stuck = True
                self.post(
                    ("done", work_id, False, CallTimeout(timeout, Abandoned.KILLED), 0.0, 0.0)
                )
                self.post(("stuck", work_id))
        if not self._stuck:
            self.loop.call_later(_WATCH_PERIOD, self._watch)

    # -- to the driver --------------------------------------------------------------------

    def post(self, message: Message) -> None:
        """Queue a message for the driver, from any thread. A step goes at the end of this
        turn of the loop (a task waits on its answer); an outcome may wait up to
        ``_OUTCOME_DELAY`` for the next ones while items are queued here, so that a Ray
        actor's outcomes go back in a few calls a second rather than one per item."""
        # An outcome is urgent too once this worker's queue has run dry: the driver must
        # hear it to send more (a no-op task would otherwise idle out each delay).
        urgent = message[0] != "done" or self._inbox.empty()
        with self._outbox_lock:
            self._outbox.append(message)
            if self._flushing == "now" or (self._flushing == "later" and not urgent):
                return
            self._flushing = "now" if urgent else "later"
        with contextlib.suppress(RuntimeError):  # the worker is closing: nobody to tell
            if urgent:
                self.loop.call_soon_threadsafe(self._flush)
            else:
                self.loop.call_soon_threadsafe(self.loop.call_later, _OUTCOME_DELAY, self._flush)

    def _flush(self) -> None:
        with self._outbox_lock:
            batch, self._outbox = self._outbox, []
            self._flushing = None
        if batch:
            self._send(pack(batch))

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = self.loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- steps ----------------------------------------------------------------------------

    async def ask(self, key: str, kind: str, payload: Any) -> Any:
        """Send a step to the driver and wait for its answer (on the loop)."""
        try:
            pickle.dumps(payload)
        except Exception as exc:
            raise TypeError(
                f"ctx.{kind}'s arguments must pickle to reach the driver: {exc}"
            ) from exc
        step_id = next(self._step_ids)
        future: asyncio.Future[tuple[bool, Any]] = self.loop.create_future()
        self._replies[step_id] = future
        self.post(("step", key, step_id, kind, payload))
        ok, value = await future
        if not ok:
            raise value
        return value

    def hold(
        self,
        step_id: int,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        cost: Any,
    ) -> None:
        self._invokes[step_id] = (fn, args, kwargs, cost)

    def next_step_id(self) -> int:
        return next(self._step_ids)

    def release(self, step_id: int) -> None:
        self._invokes.pop(step_id, None)

    async def _invoke(self, step_id: int) -> None:
        """The driver holds the permit for a ``ctx.call``: run its function here."""
        from rowpilot.tasks.steps import provider_error_of

        held = self._invokes.get(step_id)
        if held is None:
            self.post(("invoked", step_id, False, portable(RuntimeError("no such step")), None))
            return
        fn, args, kwargs, cost = held
        try:
            value = await self.run_function(fn, args, kwargs)
            spent = float(cost(value)) if callable(cost) else None
            self.post(("invoked", step_id, True, value, spent))
        except Exception as exc:
            error = provider_error_of(exc, "") or exc  # mapped here: the class may not pickle
            self.post(("invoked", step_id, False, portable(error), None))

    async def run_function(
        self, fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> Any:
        if inspect.iscoroutinefunction(fn):
            return await fn(*args, **kwargs)
        value = await run_sync(self._sub_pool, functools.partial(fn, *args, **kwargs))
        if inspect.isawaitable(value):
            return await value
        return value


class WorkerSteps:
    """A ``StepRunner`` in a worker: each step goes to the driver's ``Steps``."""

    def __init__(self, host: WorkerHost, key: str) -> None:
        self._host = host
        self._key = key

    async def llm(
        self,
        usage: ItemUsage,
        trail: StepTrail,
        key: str,
        prompt: str | Sequence[Mapping[str, Any]],
        *,
        model: str | None,
        schema: Any,
        system: str | None,
        max_tokens: int | None,
        cache: bool,
        params: dict[str, Any],
        can_wait: bool = False,
    ) -> Any:
        payload = {
            "prompt": prompt,
            "model": model,
            "schema": schema,
            "system": system,
            "max_tokens": max_tokens,
            "cache": cache,
            "params": params,
            "can_wait": can_wait,
        }
        return await self._host.ask(self._key, "llm", payload)

    async def call(
        self,
        usage: ItemUsage,
        trail: StepTrail,
        resource: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        cost: float | Callable[[Any], float] | None,
        max_cost: float | None,
        journal: bool,
    ) -> Any:
        from rowpilot.tasks.steps import callable_name

        host = self._host
        step_id = host.next_step_id()
        host.hold(step_id, fn, args, kwargs, cost)
        payload = {
            "step_id": step_id,
            "resource": resource,
            "label": callable_name(fn),
            "args": args,
            "kwargs": kwargs,
            "cost": cost if not callable(cost) else None,
            "cost_after": callable(cost),
            "max_cost": max_cost,
            "journal": journal,
        }
        try:
            return await host.ask(self._key, "call", payload)
        finally:
            host.release(step_id)

    async def call_with(
        self,
        usage: ItemUsage,
        trail: StepTrail,
        resource: str,
        label: str,
        invoke: Callable[[], Coroutine[Any, Any, Any]],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        cost: float | Callable[[Any], float] | None,
        max_cost: float | None,
        journal: bool,
    ) -> Any:
        raise NotImplementedError("a worker's steps are served by the driver")

    async def map(
        self,
        subitems: Iterable[Any],
        fn: Callable[..., Any],
        ctx: Any,
        *,
        workers: int | None,
        return_exceptions: bool,
    ) -> list[Any]:
        from rowpilot.tasks.steps import takes_two

        items = list(subitems)
        if workers is not None and workers < 1:
            raise ConfigError(f"ctx.map workers must be at least 1, not {workers}")
        lanes = asyncio.Semaphore(min(len(items), workers or len(items)) or 1)
        takes_ctx = takes_two(fn)

        async def one(subitem: Any) -> Any:
            async with lanes:
                arguments = (subitem, ctx) if takes_ctx else (subitem,)
                return await self._host.run_function(fn, arguments, {})

        results = await asyncio.gather(*(one(s) for s in items), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # a stop goes up
        failures: dict[int, tuple[Any, BaseException]] = {
            i: (items[i], r) for i, r in enumerate(results) if isinstance(r, Exception)
        }
        if failures and not return_exceptions:
            raise SubItemError.of(failures, total=len(items))
        return list(results)

    def log(self, kind: str, record: dict[str, Any]) -> None:
        self._host.post(("log", kind, record))

    def blocking(self, step: Coroutine[Any, Any, T]) -> T:
        return run_blocking(self._host.loop, step)


# -- a worker process -----------------------------------------------------------------------


def process_main(descriptor: int) -> None:
    """The life of a worker process: take the task from the driver's socket, then serve
    the driver until the socket closes. The driver's death closes it too (even by
    SIGKILL): a worker never outlives its run."""
    from multiprocessing.connection import Connection

    connection = Connection(descriptor)
    asyncio.run(_serve_pipe(connection))
    os._exit(0)  # lanes stuck in a call must not keep the process alive


async def _serve_pipe(connection: Any) -> None:
    loop = asyncio.get_running_loop()
    write_lock = threading.Lock()

    def send(blob: bytes) -> None:
        with write_lock, contextlib.suppress(OSError):
            connection.send_bytes(blob)

    try:
        task_blob, lanes = pickle.loads(connection.recv_bytes())
        task = load_task_blob(task_blob)
    except BaseException as exc:
        send(pack([("broken", f"{type(exc).__name__}: {exc}")]))
        return
    host = WorkerHost(task, send, lanes=lanes)
    send(pack([("ready", os.getpid())]))
    closed = asyncio.Event()

    def read() -> None:
        with contextlib.suppress(EOFError, OSError, RuntimeError):
            while True:
                blob = connection.recv_bytes()
                loop.call_soon_threadsafe(host.deliver, blob)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(closed.set)

    threading.Thread(target=read, name="rowpilot-worker-reader", daemon=True).start()
    await closed.wait()
    host.close()


if __name__ == "__main__":  # python -m rowpilot.executors.worker <fd>: see executors.process
    import sys

    process_main(int(sys.argv[1]))
