"""The driver's side of the process and Ray executors: items out in batches, outcomes
back, and every ``ctx`` step served here by the run's own ``Steps``.

A ``RemoteExecutor`` holds a set of ``Link`` s, one per worker (a process of this machine
in ``executors.process``, a Ray actor in ``executors.ray``); the links only carry bytes.
Everything that decides anything stays here, on the driver:

* **Dispatch.** Submitted items wait in one queue; each ready worker is sent what it has
  room for (``lanes`` running and as many queued), in one message. The batch size follows
  the items' own pace: about 100 ms of work per message, 1 to 64 items, so a no-op task
  pays one round trip per 64 items and a slow one keeps the workers balanced.
* **Steps.** A worker's ``ctx.llm`` runs here whole. A worker's ``ctx.call`` runs here
  too, through ``Steps.call_with``: journal lookup, budget reservation and the
  resource's permit happen here, then ``invoke`` asks the worker to run the function,
  and its result is journaled here before the reply lets the task see it. Limits and
  budget are therefore exact across workers: one bucket, one budget, one journal.
* **Faults.** A worker that dies (killed, out of memory, its node gone) loses no item:
  once the steps its items had in flight here have finished (and been journaled), the
  items go back to the front of the queue with fresh step trails, so their next run
  replays every answered step instead of paying for it again. An item alone in a worker
  that died is charged a crash; items that were there together run alone afterwards
  (suspects), so the one that kills its worker is charged by its next crash, and
  ``max_crashes`` crashes fail it (cause ``process_crash``): a row that kills its
  worker cannot kill them all, nor get the rows beside it failed.
  A new worker takes the dead one's place. A sync call past ``--timeout`` is reported
  by its worker, which the driver then kills: unlike a thread, a process can be stopped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from rowpilot.errors import ConfigError, RowpilotError, WorkerCrashError
from rowpilot.executors._wire import Message, WorkerLost, pack, portable, task_blob, unpack
from rowpilot.executors.base import Ran
from rowpilot.executors.threads import Abandoned, CallTimeout
from rowpilot.tasks.values import StepTrail

if TYPE_CHECKING:
    from rowpilot.tasks.base import Task
    from rowpilot.tasks.ctx import Ctx

_TARGET_BATCH_SECONDS = 0.1
_MAX_BATCH = 64
_START_FAILURES = 3  # workers in a row that die before they are ready: the task cannot run
# A worker silent this long past its call's timeout is stuck where its own watchdog cannot
# run (a C call holding the GIL): the driver kills it.
SILENCE_GRACE = 30.0


class Link(Protocol):
    """One worker as the driver sees it: bytes in, bytes out, and a way to kill it."""

    @property
    def alive(self) -> bool: ...

    def send(self, blob: bytes) -> None: ...

    def kill(self) -> None: ...


class LinkOwner(Protocol):
    """What a link reports to, on the driver's event loop."""

    def received(self, link: Link, blob: bytes) -> None: ...

    def lost(self, link: Link) -> None: ...


LinkFactory = Callable[[int, bytes, int, LinkOwner], Link]


@dataclass(eq=False)
class _Work:
    id: int
    what: str  # "call" or "group"
    payload: tuple[Any, ...]
    future: asyncio.Future[Any]
    ctx: Ctx | None = None
    steps: set[asyncio.Task[None]] = field(default_factory=set)
    crashes: int = 0
    suspect: bool = False  # with others in a worker that died: it runs alone until done


@dataclass(eq=False)
class _Worker:
    index: int
    link: Link
    ready: bool = False
    sent: dict[int, _Work] = field(default_factory=dict)  # in the order sent
    stuck: bool = False  # killed for a timeout: none of its items crashed it
    heard: float = field(default_factory=time.monotonic)  # its last message, or its start
    outbox: list[Message] = field(default_factory=list)  # sent together at the turn's end


class RemoteExecutor:
    """An ``Executor`` whose calls run in ``workers`` workers made by ``factory``."""

    def __init__(
        self,
        task: Task,
        factory: LinkFactory,
        *,
        workers: int,
        lanes: int = 1,
        max_crashes: int = 3,
        kind: str = "processes",
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._blob = task_blob(task)
        self._factory = factory
        self._lanes = lanes
        self._max_crashes = max_crashes
        self._kind = kind
        self._size = workers
        self._async = task.is_async and not task.groups_rows
        self._group_rows = task.rows_per_worker if task.groups_rows else 0
        self._queue: collections.deque[_Work] = collections.deque()
        self._workers: dict[int, _Worker] = {}
        self._by_link: dict[int, _Worker] = {}
        self._ids = itertools.count(1)
        self._indexes = itertools.count(0)
        self._invokes: dict[tuple[int, int], asyncio.Future[tuple[bool, Any, Any]]] = {}
        self._runner: Any = None  # the run's StepRunner, for ctx.log lines
        self._pace = 0.0  # seconds per item, a moving mean of the workers' clocks
        self._failed_starts = 0
        self._broken: BaseException | None = None
        self._closed = False
        self._turn_scheduled = False  # a flush at the end of this loop turn is due
        self.messages_sent = 0  # batches sent to workers (each a socket write or an actor call)
        self.deaths = 0
        for _ in range(workers):
            self._spawn()
        self._watchdog = self._loop.call_later(1.0, self._watch)

    # -- the Executor protocol ------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"{self._size} {self._kind}"

    @property
    def exhausted(self) -> bool:
        return False  # a stuck call's worker is killed and replaced: it holds nothing

    @property
    def stuck(self) -> int:
        return 0

    @property
    def capacity(self) -> int:
        if self._group_rows:  # groups of rows: one running and one waiting per lane
            return self._size * self._lanes * 2 * self._group_rows
        return self._size * self._room_per_worker(_MAX_BATCH)

    @property
    def parallel(self) -> int:
        return self._size * self._lanes

    async def submit(
        self, task: Task, row: dict[str, Any], ctx: Ctx, *, timeout: float | None
    ) -> Ran:
        if ctx.steps is not None:
            self._runner = ctx.steps
        payload = (row, ctx.run_id, ctx.key, ctx.row, ctx.attempt, timeout)
        ran: Ran = await self._submit("call", payload, ctx)
        return ran

    async def submit_group(
        self, task: Task, rows: list[dict[str, Any]], encode: Callable[[list[Any]], list[Any]]
    ) -> Ran:
        ran: Ran = await self._submit("group", (rows, encode), None)
        return ran

    def close(self) -> None:
        self._closed = True
        self._watchdog.cancel()
        for worker in list(self._workers.values()):
            worker.link.kill()
        for work in self._queue:
            if not work.future.done():
                work.future.cancel()
        self._queue.clear()

    # -- dispatch -------------------------------------------------------------------------

    async def _submit(self, what: str, payload: tuple[Any, ...], ctx: Ctx | None) -> Any:
        if self._broken is not None:
            raise self._broken
        work = _Work(next(self._ids), what, payload, self._loop.create_future(), ctx)
        self._queue.append(work)
        self._end_of_turn()
        try:
            return await work.future
        finally:
            self._forget(work)

    def _forget(self, work: _Work) -> None:
        """A finished or cancelled item leaves the queue and its worker's list."""
        with contextlib.suppress(ValueError):
            self._queue.remove(work)
        for worker in self._workers.values():
            worker.sent.pop(work.id, None)

    def _end_of_turn(self) -> None:
        """Dispatch and send once this loop turn is over: the items submitted, the steps
        answered and the outcomes handled in one turn go to each worker as one message
        (a Ray actor call each, or a socket write)."""
        if not self._turn_scheduled:
            self._turn_scheduled = True
            self._loop.call_soon(self._turn)

    def _turn(self) -> None:
        self._turn_scheduled = False
        self._dispatch()
        for worker in self._workers.values():
            if worker.outbox:
                batch, worker.outbox = worker.outbox, []
                if worker.link.alive:
                    worker.link.send(pack(batch))
                    self.messages_sent += 1

    def _post(self, worker: _Worker, message: Message) -> None:
        worker.outbox.append(message)

    def _dispatch(self) -> None:
        if not self._queue:
            return
        batch = self._batch_size()
        for worker in sorted(self._workers.values(), key=lambda w: len(w.sent)):
            if not self._queue:
                return
            if not worker.ready or worker.stuck or not worker.link.alive:
                continue
            if self._queue[0].suspect or any(w.suspect for w in worker.sent.values()):
                self._send_suspect(worker)
                continue
            room = self._room_per_worker(batch) - len(worker.sent)
            if not worker.sent:
                worker.heard = time.monotonic()  # idle until now: its silence starts here
            taken: list[tuple[int, str, Any]] = []
            while self._queue and len(taken) < min(room, batch):
                work = self._queue.popleft()
                if work.future.done():
                    continue
                worker.sent[work.id] = work
                taken.append((work.id, work.what, work.payload))
            if taken:
                self._post(worker, ("run", taken))

    def _send_suspect(self, worker: _Worker) -> None:
        """A suspect goes alone to an idle worker; a worker running one takes nothing else."""
        if worker.sent or not self._queue[0].suspect:
            return
        work = self._queue.popleft()
        if work.future.done():
            return
        worker.sent[work.id] = work
        worker.heard = time.monotonic()
        self._post(worker, ("run", [(work.id, work.what, work.payload)]))

    def _batch_size(self) -> int:
        if self._pace <= 0:
            return 1  # no pace known yet: one at a time until the first outcome says
        return max(1, min(_MAX_BATCH, int(_TARGET_BATCH_SECONDS / self._pace)))

    def _room_per_worker(self, batch: int) -> int:
        if self._async:  # every item runs at once on the worker's loop: mostly waiting
            return _MAX_BATCH * 2
        return self._lanes * max(1, batch) * 2  # one batch running, one waiting

    # -- from the workers -----------------------------------------------------------------

    def received(self, link: Link, blob: bytes) -> None:
        worker = self._by_link.get(id(link))
        if worker is None:
            return
        worker.heard = time.monotonic()
        for message in unpack(blob):
            self._handle(worker, message)
        self._end_of_turn()

    def _watch(self) -> None:
        """Kill a worker gone silent past its oldest call's timeout (see SILENCE_GRACE):
        that call fails as a timeout, the others go back to the queue."""
        now = time.monotonic()
        for worker in list(self._workers.values()):
            calls = [w for w in worker.sent.values() if w.what == "call" and not w.future.done()]
            timeout = calls[0].payload[5] if calls and not self._async else None
            if worker.stuck or timeout is None or now - worker.heard <= timeout + SILENCE_GRACE:
                continue
            worker.stuck = True
            calls[0].future.set_exception(CallTimeout(timeout, Abandoned.KILLED))
            worker.link.kill()
        if not self._closed:
            self._watchdog = self._loop.call_later(1.0, self._watch)

    def _handle(self, worker: _Worker, message: Message) -> None:
        kind = message[0]
        if kind == "done":
            self._done(worker, *message[1:])
        elif kind == "step":
            self._step(worker, *message[1:])
        elif kind == "invoked":
            future = self._invokes.pop((worker.index, message[1]), None)
            if future is not None and not future.done():
                future.set_result((message[2], message[3], message[4]))
        elif kind == "log":
            if self._runner is not None:
                self._runner.log(message[1], message[2])
        elif kind == "ready":
            worker.ready = True
            self._failed_starts = 0
        elif kind == "stuck":
            worker.stuck = True
            worker.link.kill()
        elif kind == "broken":
            self._fail_all(
                ConfigError(
                    f"the task cannot be loaded in a worker: {message[1]}",
                    hint="make the task's module importable where the workers run, or use "
                    "--executor local",
                )
            )

    def _done(
        self, worker: _Worker, work_id: int, ok: bool, value: Any, cpu: float, seconds: float
    ) -> None:
        work = worker.sent.pop(work_id, None)
        if work is None or work.future.done():
            return
        if ok and work.what == "call":
            self._pace = seconds if self._pace <= 0 else 0.8 * self._pace + 0.2 * seconds
        elif ok:
            self._pace = 0.0
        if ok:
            work.future.set_result(Ran(value, cpu, seconds))
        else:
            work.future.set_exception(value)

    def lost(self, link: Link) -> None:
        worker = self._by_link.pop(id(link), None)
        if worker is None:
            return
        del self._workers[worker.index]
        self.deaths += 1
        for (index, step), future in list(self._invokes.items()):
            if index == worker.index and not future.done():
                del self._invokes[index, step]
                future.set_exception(WorkerLost(f"the worker running ctx.call step {step} died"))
        if not worker.ready:
            self._failed_starts += 1
        left = [work for work in worker.sent.values() if not work.future.done()]
        for work in reversed(left):
            self._charge(work, worker, alone=len(left) == 1)
            if work.crashes >= self._max_crashes:
                work.future.set_exception(
                    WorkerCrashError(
                        f"its worker died each of the {work.crashes} times it ran",
                        hint="run it alone with --executor local --rows to see why",
                    )
                )
                continue
            self._loop.create_task(self._requeue(work))
        if self._closed:
            return
        if self._failed_starts >= _START_FAILURES:
            self._fail_all(
                RowpilotError(
                    f"{self._failed_starts} worker {self._kind} in a row died before they "
                    "were ready",
                    hint="run with --executor local to see the task's own error",
                )
            )
            return
        self._spawn()

    def _charge(self, work: _Work, worker: _Worker, *, alone: bool) -> None:
        """Which item killed a worker is known only when it was the worker's one item
        (outcomes of finished ones may have died with it): that one is charged a crash.
        Items that were there with others become suspects and run alone until done, so a
        poison row is found by its second crash and the rows beside it are never charged.
        A worker killed for a timeout charges nobody."""
        if worker.stuck:
            return
        if alone:
            work.crashes += 1
        else:
            work.suspect = True

    async def _requeue(self, work: _Work) -> None:
        """Back to the front of the queue, once its steps in flight here have finished and
        journaled what they got: the next run of the item replays them."""
        if work.steps:
            await asyncio.gather(*work.steps, return_exceptions=True)
        if work.future.done():
            return
        if work.ctx is not None:  # a fresh trail: the replay counts its steps from the start
            work.ctx = dataclasses.replace(work.ctx, trail=StepTrail())
        self._queue.appendleft(work)
        self._end_of_turn()

    def _fail_all(self, error: BaseException) -> None:
        self._broken = error
        for work in list(self._queue):
            if not work.future.done():
                work.future.set_exception(error)
        for worker in self._workers.values():
            for work in worker.sent.values():
                if not work.future.done():
                    work.future.set_exception(error)

    def _spawn(self) -> None:
        index = next(self._indexes)
        link = self._factory(index, self._blob, self._lanes, self)
        worker = _Worker(index, link)
        self._workers[index] = worker
        self._by_link[id(link)] = worker

    # -- steps, served here ---------------------------------------------------------------

    def _step(self, worker: _Worker, key: str, step_id: int, kind: str, payload: Any) -> None:
        work = next(
            (w for w in worker.sent.values() if w.ctx is not None and w.ctx.key == key), None
        )
        if work is None:
            return  # its item was given up on: nobody waits for the answer
        step = self._loop.create_task(self._serve(worker, work, step_id, kind, payload))
        work.steps.add(step)
        step.add_done_callback(work.steps.discard)

    async def _serve(
        self, worker: _Worker, work: _Work, step_id: int, kind: str, payload: Any
    ) -> None:
        ctx = work.ctx
        assert ctx is not None
        try:
            if ctx.steps is None or ctx.trail is None:
                raise RuntimeError("ctx.llm, ctx.call and ctx.map work inside a rowpilot run")
            if kind == "llm":
                value = await ctx.steps.llm(ctx.usage, ctx.trail, ctx.key, **payload)
            else:
                value = await self._call(worker, ctx, payload)
            reply: Message = ("reply", step_id, True, value)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # RunStop and user errors go to the task as raised
            reply = ("reply", step_id, False, portable(exc))
        self._post(worker, reply)
        self._end_of_turn()

    async def _call(self, worker: _Worker, ctx: Ctx, payload: dict[str, Any]) -> Any:
        assert ctx.steps is not None
        assert ctx.trail is not None
        step_id = payload["step_id"]
        spent: dict[str, float] = {}

        async def invoke() -> Any:
            if not worker.link.alive:
                raise WorkerLost("the worker for this ctx.call died")
            future: asyncio.Future[tuple[bool, Any, Any]] = self._loop.create_future()
            self._invokes[worker.index, step_id] = future
            self._post(worker, ("invoke", step_id))
            self._end_of_turn()
            ok, value, cost = await future
            if not ok:
                raise value
            if cost is not None:
                spent["cost"] = cost
            return value

        cost: Any = payload["cost"]
        if payload["cost_after"]:
            cost = lambda result: spent.get("cost", 0.0)  # noqa: E731 - worked out in the worker
        return await ctx.steps.call_with(
            ctx.usage,
            ctx.trail,
            payload["resource"],
            payload["label"],
            invoke,
            payload["args"],
            payload["kwargs"],
            cost=cost,
            max_cost=payload["max_cost"],
            journal=payload["journal"],
        )
