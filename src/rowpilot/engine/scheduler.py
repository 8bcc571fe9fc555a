"""The scheduler: admits items under the worker limit, runs them, commits their outcomes.

Written by hand because it is the product's core. Its rules:

* an item holds a slot of the in-flight *window* from admission until its outcome is
  committed, so the source is never read far ahead and a crash loses at most a window;
* at most ``workers`` items run at once; the window is twice that, so a batch can be
  committing while the next runs;
* outcomes are committed in batches: when half a window is waiting, when nothing else is
  running, or ``flush_interval`` after the first one arrived; on the loop, except for a
  grouped task, whose batches go to a commit thread (``engine.grouped.CommitThread``,
  its own connection) so that SQLite's work overlaps the model's. Either way an item counts as
  done, and gives back its window slot, only once its batch is committed;
* on a stop request no item is admitted; in-flight items get ``grace`` seconds, then are
  cancelled; cancelled items are not recorded and run again on resume;
* a task with a ``batch_call(rows) -> outputs`` (the built-in local tasks) is called on
  groups of ``group`` rows in the thread pool, ``workers // group`` groups at once: its
  window slots taken, one call, one hand-off, one future per group; its outputs encoded at
  once where it ran (``group_parts``) and its outcomes recorded together; each row still
  gets its own outcome. A group whose call raises runs again row by row, so one bad row
  fails alone;
* a task that raises ``RunStop`` (the budget cannot cover another call) stops the run the
  same graceful way; its item is not recorded and stays pending; one that raises
  ``Parked`` (its step waits for a Batch API) leaves it so too, and the run goes on;
* with ``--workers auto`` the worker limit (and the window with it) changes during the run
  as ``_sizing.WorkerSizer`` decides; with ``--max-memory`` admission waits while
  ``_sizing.MemoryGate`` says the resident size leaves no room (in-flight items go on);
* honest endings: a provider failure that concerns the whole run (auth, an unknown model)
  aborts it at once, and so do the first ``PROBE`` outcomes all failing with the same
  provider cause (a bad base_url, a parameter every call rejects): their items are not
  left as failed but go back to pending, so the fixed job picks them up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from rowpilot.engine.crashes import PROCESS_CRASH, CrashPolicy, InFlightLog, Verdict
from rowpilot.engine.events import EventLog
from rowpilot.engine.grouped import CommitThread, call_group, group_outcomes
from rowpilot.engine.items import Encoded, Item, encode_items
from rowpilot.engine.machine import memory_mb, rss_mb
from rowpilot.engine.probe import PROBE, PROBED_CAUSES, abort_message, likeness
from rowpilot.engine.progress import Counters, ProgressView
from rowpilot.engine.retry import failure_cause
from rowpilot.engine.settings import RunEnd, RunSettings
from rowpilot.engine.sizing import Admit, MemoryGate, Reading, WorkerSizer
from rowpilot.engine.slots import Slots
from rowpilot.errors import (
    ItemTimeoutError,
    OutputCollisionError,
    ProviderError,
    RowpilotError,
    TaskOutputError,
    UserError,
)
from rowpilot.executors.base import Executor, Ran
from rowpilot.executors.threads import Abandoned, CallTimeout
from rowpilot.state.registry import Outcome, PriorState, Registry
from rowpilot.tasks.base import Task
from rowpilot.tasks.ctx import Ctx, StepRunner
from rowpilot.tasks.output import output_parts
from rowpilot.tasks.values import ItemUsage, Parked, RunStop, StepTrail

_ERROR_CHARS = 1000
_PROGRESS_PERIOD = 0.1
_MEMORY_POLL = 0.01  # seconds between looks at the resident size while admission waits
_RUN_LEVEL_CAUSES = frozenset({"auth", "not_found"})


FirstCommit = Callable[[], tuple[dict[str, str], dict[str, Any]]]


class Scheduler:
    """Runs one job's selected items against its registry."""

    def __init__(
        self,
        *,
        task: Task,
        executor: Executor,
        registry: Registry,
        run_id: str,
        settings: RunSettings,
        events: EventLog,
        progress: ProgressView,
        counters: Counters,
        first_commit: FirstCommit,
        crashes: CrashPolicy | None = None,
        inflight: InFlightLog | None = None,
        steps: StepRunner | None = None,
        workers: Slots | None = None,
    ) -> None:
        self.task = task
        self._executor = executor
        self.registry = registry
        self.run_id = run_id
        self.settings = settings
        self.events = events
        self.progress = progress
        self.counters = counters
        self._first_commit: FirstCommit | None = first_commit
        self._probe: list[tuple[str, ...]] | None = None if settings.keep_going else []
        self._held: list[Outcome] = []  # failures on probation until the probe decides
        # While the probe decides, the window has room for the failures it holds back.
        self._probe_room = 0 if self._probe is None else PROBE
        self._window = Slots(settings.window + self._probe_room)
        # The run's worker slots, shared with the steps' ctx.map sub-items when given.
        self._workers = workers if workers is not None else Slots(settings.workers)
        self._groups = Slots(max(1, settings.workers // settings.group) + task.groups_ahead)
        self._tasks: set[asyncio.Task[None]] = set()
        self._buffer: list[Outcome] = []
        self._uncommitted = 0  # admitted items whose outcome is not committed yet
        self._flush_timer: asyncio.TimerHandle | None = None
        self._sizer: WorkerSizer | None = None
        if settings.auto is not None:
            self._sizer = WorkerSizer(
                settings.auto.workers, settings.auto.ceiling, max_memory_mb=settings.max_memory
            )
        self._gate: MemoryGate | None = None
        if settings.max_memory is not None:
            self._gate = MemoryGate(settings.max_memory, rss_mb)
        self._task_logger = events.task_logger()
        self._stopping = False
        self._stop_deadline: float | None = None
        self._hard_stop = asyncio.Event()
        self._fatal: BaseException | None = None
        self._end = RunEnd.INTERRUPTED  # what a stop means, unless a budget or abort says
        self.stop_message: str | None = None
        self._abort_cause: str | None = None
        self._steps = steps  # where ctx.llm/call/map go (a Python task's Steps)
        self._crashes = crashes
        self._inflight = inflight
        self._running_keys: set[str] = set()  # admitted, outcome not committed yet
        self._unlogged: list[str] = []  # admitted, not yet in the in-flight log
        self._idle = asyncio.Event()  # set while nothing is admitted and uncommitted
        self._idle.set()
        self._suspects_running = False  # suspects of earlier crashes are in flight
        self._suspect_room = 0  # more suspects that may join the group in flight
        self._cleared: list[str] = []  # suspects that ended: their crash records go
        self._admitted_all = False  # the source was read to its end
        self._left_pending = 0  # admitted items that ended without an outcome
        # Grouped tasks commit on a thread (the model computes meanwhile); the others on
        # the loop, where a small batch's commit is cheaper than the hand-off.
        self._writer = CommitThread(registry) if task.groups_rows else None
        self._committing = 0  # outcomes handed to the writer, not yet durable
        self._written = asyncio.Event()  # set while nothing is with the writer
        self._written.set()
        self._fresh = not registry.has_items()  # nothing to look up: every row is to do

    @property
    def workers(self) -> Slots:
        """The run's worker slots: one per running task function (ctx.map sub-items too)."""
        return self._workers

    # -- stopping ---------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def in_flight(self) -> int:
        return self._uncommitted

    def request_stop(self) -> None:
        """First call: stop admitting and let in-flight items finish. Second: cancel them."""
        if self._stopping:
            self._hard_stop.set()
            return
        self._stopping = True
        self._stop_deadline = time.monotonic() + self.settings.grace

    def _stop_for(self, end: RunEnd, message: str) -> None:
        """A stop with a reason of the run's own (budget, abort), not a signal's."""
        if self._stopping:
            return
        self._end = end
        self.stop_message = message
        self.events.emit("run.stopping", reason=end.value, message=message)
        self.request_stop()

    def _abort(self, error: ProviderError) -> None:
        if self._abort_cause is None:
            self._abort_cause = error.cause
            self._stop_for(RunEnd.ABORTED, _one_line(error))
            self._hard_stop.set()  # the other in-flight calls would fail the same way

    def _fail_run(self, error: BaseException) -> None:
        if self._fatal is None:
            self._fatal = error
        self._stopping = True
        self._hard_stop.set()

    # -- the run ------------------------------------------------------------------------

    async def run(self, chunks: Iterator[list[Item]]) -> RunEnd:
        self._admitted_all = False  # run is called again for items that parked (engine.job)
        self._left_pending = 0
        self._announce_workers()
        ticker = asyncio.create_task(self._tick())
        try:
            admission = asyncio.create_task(self._admit(chunks))
            await self._until_admitted(admission)
            await self._drain()
        finally:
            ticker.cancel()
            if self._writer is not None:
                self._writer.close()
        if self._fatal is not None:
            raise self._fatal
        if self._stopping and not self._nothing_left():
            return self._end
        self.stop_message = None  # a stop after the last outcome stopped nothing
        return RunEnd.COMPLETED

    def _nothing_left(self) -> bool:
        """Every row of the selection was admitted and got its outcome: a stop asked for
        after that stopped nothing."""
        return self._admitted_all and self._uncommitted == 0 and self._left_pending == 0

    async def _until_admitted(self, admission: asyncio.Task[None]) -> None:
        stop_wait = asyncio.create_task(self._wait_for_stop())
        await asyncio.wait({admission, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        if not admission.done():
            admission.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await admission
        if not admission.cancelled() and admission.exception() is not None:
            self._fail_run(admission.exception())  # type: ignore[arg-type]

    async def _wait_for_stop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(_PROGRESS_PERIOD)

    async def _admit(self, chunks: Iterator[list[Item]]) -> None:
        try:
            await self._admit_all(chunks)
        finally:
            self._log_started()  # the last keys admitted, before their tasks start

    async def _admit_all(self, chunks: Iterator[list[Item]]) -> None:
        for items in chunks:
            gathered = await self._admit_chunk(self._to_do(items), [])
            if gathered is None:
                return  # a stop: nothing more is admitted
            if gathered:  # the end of a chunk: do not wait for the next read to fill a group
                self._spawn_group(gathered)
            self._log_started()
            await asyncio.sleep(0)  # let outcomes, timers and the progress bar run
        self._admitted_all = True

    async def _admit_chunk(self, to_do: list[Item], group: list[Item]) -> list[Item] | None:
        """Admit a chunk's rows to do; the group still being gathered, or None on a stop."""
        index = 0
        while index < len(to_do):
            taken = self._admit_into_group(to_do, index, group)
            if taken:
                index += taken
                if len(group) >= self.settings.group:
                    self._spawn_group(group)
                    group = []
                continue
            admitted = await self._admit_one(to_do[index], group)
            if admitted is None:
                return None
            group = admitted
            index += 1
        return group

    async def _admit_one(self, item: Item, group: list[Item]) -> list[Item] | None:
        """One row through its verdict and a window slot (waiting for one if need be)."""
        verdict = self._verdict(item)
        if verdict is Verdict.RUN and self._plain_admission():
            self._window.take()
        else:
            group = await self._make_room(verdict, group)
        if self._stopping:  # a stop while waiting for a slot admits nothing more
            self._window.release_many(1 + len(group))
            return None
        return self._place(item, verdict, group)

    def _admit_into_group(self, to_do: list[Item], index: int, group: list[Item]) -> int:
        """A grouped task's rows take the window's free slots a group at a time; how many
        joined ``group`` (0: rows go one by one, as with suspects, a memory cap, a stop)."""
        grouped = self.task.groups_rows and self._crashes is None and not self._stopping
        if not grouped or not self._plain_admission():
            return 0
        taken = self._window.take_up_to(min(self.settings.group - len(group), len(to_do) - index))
        group.extend(to_do[index : index + taken])
        return taken

    def _plain_admission(self) -> bool:
        """A slot is free and nothing else must be waited for: no suspects, no memory cap."""
        return self._window.ready and not self._suspects_running and self._gate is None

    async def _make_room(self, verdict: Verdict, group: list[Item]) -> list[Item]:
        """A suspect waits for its turn; every item for a window slot (and memory). The
        keys admitted so far are logged before any wait, since their tasks can start."""
        if verdict in (Verdict.GROUP, Verdict.ALONE) or self._suspects_running:
            if group:  # rows gathered for a group call must not run beside a suspect
                self._spawn_group(group)
                group = []
            self._log_started()
            await self._suspect_turn(verdict)
        if not self._window.ready or self._gate is not None:
            self._log_started()
        await self._window.acquire()
        if self._gate is not None:
            await self._memory_room(self._gate)
        return group

    def _place(self, item: Item, verdict: Verdict, group: list[Item]) -> list[Item]:
        """Start the admitted item (or add it to the group being gathered)."""
        if verdict is Verdict.FAIL:
            self._fail_crashed(item)
        elif not self.task.groups_rows or verdict is not Verdict.RUN:
            self._spawn(item)
        else:
            group.append(item)
            if len(group) >= self.settings.group:
                self._spawn_group(group)
                return []
        return group

    # -- suspects of earlier crashes (see rowpilot.engine.crashes) ----------------------------

    def _verdict(self, item: Item) -> Verdict:
        return Verdict.RUN if self._crashes is None else self._crashes.verdict(item.key)

    async def _suspect_turn(self, verdict: Verdict) -> None:
        """Suspects never run beside ordinary items: a group of them (or one alone, when
        its next crash would be its last) runs with nothing else in flight."""
        if verdict is Verdict.GROUP and self._suspect_room > 0:
            self._suspect_room -= 1
            return
        await self._quiet()
        suspect = verdict in (Verdict.GROUP, Verdict.ALONE)
        self._suspects_running = suspect
        size = self._crashes.group_size if self._crashes is not None else 1
        self._suspect_room = size - 1 if verdict is Verdict.GROUP else 0

    async def _quiet(self) -> None:
        """Until every admitted item is committed."""
        while self._uncommitted:
            self._idle.clear()
            await self._idle.wait()

    def _fail_crashed(self, item: Item) -> None:
        """A key that crashed the process too often fails without running (it holds the
        window slot it was admitted with, like any outcome)."""
        assert self._crashes is not None
        self._uncommitted += 1
        self._idle.clear()
        outcome = self._crashes.failed_outcome(item, self.run_id, self.task.version)
        self.events.emit("item.failed", key=item.key, row=item.seq, cause=PROCESS_CRASH)
        self._record(outcome)

    def _to_do(self, items: list[Item]) -> list[Item]:
        encode_items(items, self.task.version)
        if self._fresh:  # no row was recorded before this run, which admits each key once
            return items
        prior = self.registry.lookup([item.key for item in items])
        return [item for item in items if self._needs_work(item, prior.get(item.key))]

    def _needs_work(self, item: Item, prior: PriorState | None) -> bool:
        if self.settings.runs_again(item.fingerprint, prior):
            return True
        if prior is not None and prior.status == "failed":
            self.counters.skipped_failed += 1
            self._clear_if_suspect(item.key)
            return False
        self.counters.skipped += 1
        self._clear_if_suspect(item.key)
        return False

    def _clear_if_suspect(self, key: str) -> None:
        """A suspect that will not run (its outcome stands): its crash record goes."""
        if self._crashes is not None and key in self._crashes.counts:
            self._cleared.append(key)

    def _spawn(self, item: Item) -> None:
        # _started for one item, written out: this runs for every item.
        self._uncommitted += 1
        if self._uncommitted == 1:
            self._idle.clear()
        self._running_keys.add(item.key)
        if self._inflight is not None:
            self._unlogged.append(item.key)
        self._track(self._process(item))

    def _started(self, items: list[Item]) -> None:
        """Admitted: counted as in flight; logged (by ``_log_started``) before admission
        next yields to the loop, so before they can run."""
        self._uncommitted += len(items)
        self._idle.clear()
        keys = [item.key for item in items]
        self._running_keys.update(keys)
        if self._inflight is not None:
            self._unlogged.extend(keys)

    def _log_started(self) -> None:
        """One write of the keys admitted since the last (engine.crashes: what a dead run had
        in flight); admission calls it before each point where it yields to their tasks."""
        if self._inflight is not None and self._unlogged:
            self._inflight.started(self._unlogged, self._running_keys)
        self._unlogged = []

    def _settled(self, keys: list[str]) -> None:
        """Committed (or dropped, to run again on resume): no longer in flight."""
        self._uncommitted -= len(keys)
        self._settle_uncommitted(keys)

    def _settle_uncommitted(self, keys: list[str]) -> None:
        """Keys no longer counted as uncommitted give back their window slots."""
        self._running_keys.difference_update(keys)
        self._window.release_many(len(keys))
        if self._uncommitted == 0:
            self._idle.set()

    def _track(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn_group(self, group: list[Item]) -> None:
        self._started(group)
        self._track(self._process_group(group))

    async def _process_group(self, group: list[Item]) -> None:
        """One batch_call for the group; its rows alone again if the call raises."""
        started = time.time()
        async with self._groups:
            self.counters.running += len(group)
            try:
                outputs, seconds = await call_group(self._executor, self.task, group, self.settings)
            finally:
                self.counters.running -= len(group)
        if outputs is None:
            for item in group:  # they hold their window slots already
                self._track(self._process(item))
            return
        # All done: none is held back nor the run's cause, and the first ends the probe.
        outcomes = group_outcomes(group, outputs, started, seconds, self.run_id, self.task.version)
        self.counters.task_seconds += seconds * len(group)
        self._buffer.extend(outcomes)
        self._watch_probe(outcomes[0])
        self._maybe_flush()

    async def _drain(self) -> None:
        while self._tasks and not self._hard_stop.is_set():
            hard = asyncio.create_task(self._hard_stop.wait())
            timeout = None
            if self._stop_deadline is not None:
                timeout = max(0.0, self._stop_deadline - time.monotonic())
            done, _ = await asyncio.wait(
                {*self._tasks, hard}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            hard.cancel()
            if not done:  # the grace period is over
                break
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._held and self._abort_cause is None:
            self._end_probe(commit_held=True)  # fewer than PROBE outcomes: they stand
        if not (isinstance(self._fatal, UserError) and self._first_commit is not None):
            self._flush()  # a user error before the first commit leaves the state untouched
        await self._written.wait()

    async def _tick(self) -> None:
        while True:
            self.progress.refresh(self.counters)
            self._adjust_workers()
            await asyncio.sleep(_PROGRESS_PERIOD)

    # -- sizing -------------------------------------------------------------------------

    def _announce_workers(self) -> None:
        auto = self.settings.auto
        if auto is None:
            return
        self.counters.workers = auto.workers
        self.events.emit(
            "workers.chosen",
            workers=auto.workers,
            ceiling=auto.ceiling,
            why=auto.why,
            message=f"--workers auto: {auto.workers} to start, {auto.ceiling} at most; {auto.why}",
        )

    def _adjust_workers(self) -> None:
        """--workers auto: feed the sizer, and apply its decision when it makes one."""
        sizer, auto = self._sizer, self.settings.auto
        if sizer is None or auto is None or self._stopping:
            return
        sizer.note(self.counters.running / self.settings.group)
        if not sizer.due():
            return
        total, available = memory_mb()
        c = self.counters
        decision = sizer.update(
            Reading(
                now=time.monotonic(),
                finished=c.done + c.failed + len(self._buffer),
                task_seconds=c.task_seconds,
                rate_limited=c.rate_limited,
                rss_mb=rss_mb(),
                available_mb=available,
                total_mb=total,
                rates=auto.rates() if auto.rates is not None else None,
            )
        )
        if decision is None:
            return
        rows = decision.new * self.settings.group
        self._workers.resize(rows)
        self._groups.resize(decision.new + self.task.groups_ahead)
        self._window.resize(self.settings.window_of(rows) + self._probe_room)
        c.workers = decision.new
        self.events.emit(
            "workers.adjusted",
            old=decision.old,
            new=decision.new,
            why=decision.why,
            message=f"workers {decision.old} -> {decision.new}: {decision.why}",
        )

    async def _memory_room(self, gate: MemoryGate) -> None:
        """--max-memory: wait until the resident size leaves room for one more item."""
        paused_at: float | None = None
        while not self._stopping:
            running = self._uncommitted - len(self._buffer)  # admitted and not finished
            verdict = gate.check(running, self.counters.running)
            if verdict is Admit.YES:
                break
            if verdict is Admit.FULL and paused_at is None:
                paused_at = time.monotonic()
                item = gate.per_item_mb
                self.counters.paused = f"memory {gate.rss_mb:,.0f} of {gate.cap_mb:,g} MB"
                self.events.emit(
                    "admission.paused",
                    rss_mb=round(gate.rss_mb, 1),
                    item_mb=round(item, 1) if item is not None else None,
                    max_memory_mb=gate.cap_mb,
                    in_flight=running,
                    message=f"admission paused: {gate.rss_mb:,.0f} MB resident"
                    + (f" + {item:,.0f} MB an item" if item is not None else "")
                    + f" does not fit --max-memory {gate.cap_mb:,g} MB; "
                    f"{running} item(s) in flight go on",
                )
            await asyncio.sleep(_MEMORY_POLL)
        if paused_at is not None:
            self.counters.paused = None
            self.events.emit(
                "admission.resumed",
                rss_mb=round(gate.rss_mb, 1),
                paused_seconds=round(time.monotonic() - paused_at, 3),
                message=f"admission resumed: {gate.rss_mb:,.0f} MB resident",
            )
        gate.admitted()

    # -- one item -----------------------------------------------------------------------

    async def _process(self, item: Item) -> None:
        handed_over = False
        try:
            outcome = await self._attempts(item)
            if outcome is not None:
                self._record(outcome)
                handed_over = True
        except RunStop as stop:
            self._stop_for(
                RunEnd.BUDGET if stop.reason == "budget" else RunEnd.INTERRUPTED, str(stop)
            )
        except Parked:
            self.counters.parked += 1  # it waits for a batch: pending, the run goes on
        except UserError as error:
            self._fail_run(error)
        finally:
            if not handed_over:
                self._left_pending += 1
                self._settled([item.key])
                self._maybe_flush()

    async def _attempts(self, item: Item) -> Outcome | None:
        started = time.time()
        task_seconds = 0.0
        attempt = 0
        usage = ItemUsage()
        trace: str | None = None
        while True:
            attempt += 1
            async with self._workers:
                clock = time.perf_counter()
                self.counters.running += 1
                if attempt == 1:
                    self.counters.started += 1
                ran_for: float | None = None  # the executor's own clock, where it has one
                try:
                    ran = await self._call(item, attempt, usage)
                    value, ran_for = ran.value, ran.seconds
                    error: Exception | None = None
                except (UserError, RunStop, Parked):
                    raise
                except Exception as exc:
                    error = exc
                    trace = traceback.format_exc()
                finally:
                    self.counters.running -= 1
                    task_seconds += time.perf_counter() - clock if ran_for is None else ran_for
            if error is None:
                output, error, trace = self._checked_output(value, item.key)
            if error is None:
                self.counters.step_seconds += usage.step_seconds
                return self._outcome(
                    item, "done", attempt, started, task_seconds, usage, output=output
                )
            if isinstance(error, ProviderError) and error.cause in _RUN_LEVEL_CAUSES:
                self._abort(error)
                return None
            if not self.settings.retry.should_retry(error, attempt):
                self._log_failure(item, error, attempt)
                self.counters.step_seconds += usage.step_seconds
                return self._outcome(
                    item, "failed", attempt, started, task_seconds, usage, error=error, trace=trace
                )
            if self._stopping:
                return None  # retried on resume rather than recorded as failed
            await self._wait_to_retry(item, error, attempt)

    def _checked_output(
        self, value: Any, key: str
    ) -> tuple[Encoded | None, Exception | None, None]:
        """The task's return value encoded, or the reason it cannot be stored: the item
        fails (cause invalid_output), the run goes on. An output field named like an input
        column stops the run instead while nothing of it is committed: every row would
        collide the same way."""
        try:
            encoded = output_parts(
                value,
                task=self.task.name,
                key=key,
                prefix=self.settings.output_prefix,
                taken=self.settings.reserved,
            )
            return encoded, None, None
        except TaskOutputError as error:
            if isinstance(error, OutputCollisionError) and self._first_commit is not None:
                raise
            return None, error, None

    async def _call(self, item: Item, attempt: int, usage: ItemUsage) -> Ran:
        trail = StepTrail() if self._steps is not None else None
        ctx = Ctx(
            self.run_id, item.key, item.seq, attempt, self._task_logger, usage, self._steps, trail
        )
        timeout = self.settings.timeout
        try:
            ran = await self._executor.submit(self.task, item.fields, ctx, timeout=timeout)
        except CallTimeout as stuck:
            if stuck.abandoned is Abandoned.AT_BOUND and self._executor.exhausted:
                self._too_many_stuck()
            raise ItemTimeoutError(
                f"attempt {attempt} ran past --timeout {stuck.seconds:g}s", key=item.key
            ) from None
        self.counters.cpu_seconds += ran.cpu_seconds
        return ran

    def _too_many_stuck(self) -> None:
        """Threads cannot be stopped: past the bound, stuck calls would take every slot."""
        assert self.settings.timeout is not None
        self._stop_for(
            RunEnd.ABORTED,
            f"{self._executor.stuck} calls of the task are stuck past --timeout "
            f"{self.settings.timeout:g}s and Python cannot stop their threads; the rest is "
            "left pending (find why the task hangs on those rows: rowpilot failures lists "
            "the timed-out keys)",
        )
        self._hard_stop.set()  # rows waiting for a thread can never get one

    async def _wait_to_retry(self, item: Item, error: Exception, attempt: int) -> None:
        # A provider that said when to come back is believed (capped by the policy's ceiling).
        told = error.retry_after if isinstance(error, ProviderError) else None
        at_least = min(told, self.settings.retry.max_delay) if told is not None else 0.0
        delay = self.settings.retry.delay(attempt, at_least=at_least)
        self.counters.retries += 1
        self.events.emit(
            "item.retry",
            key=item.key,
            row=item.seq,
            attempt=attempt,
            delay=round(delay, 3),
            error=_one_line(error),
            resource=getattr(error, "resource", None),  # the model whose retries a report counts
            message=f"key={item.key!r} attempt {attempt} failed "
            f"({_one_line(error)}); retrying in {delay:.2f}s",
        )
        await asyncio.sleep(delay)

    def _log_failure(self, item: Item, error: Exception, attempt: int) -> None:
        self.events.emit(
            "item.failed",
            key=item.key,
            row=item.seq,
            attempts=attempt,
            error_type=type(error).__name__,
            error=_one_line(error),
            message=f"key={item.key!r} failed after {attempt} attempt(s): {_one_line(error)}",
        )

    def _outcome(
        self,
        item: Item,
        status: str,
        attempts: int,
        started: float,
        task_seconds: float,
        usage: ItemUsage,
        *,
        output: Encoded | None = None,
        error: Exception | None = None,
        trace: str | None = None,
    ) -> Outcome:
        return Outcome(
            key=item.key,
            seq=item.seq,
            fingerprint=item.fingerprint,
            input_json=item.input_json,
            status=status,
            attempts=attempts,
            output_json=output[0] if output is not None else None,
            error=_one_line(error) if error is not None else None,
            error_type=type(error).__name__ if error is not None else None,
            traceback=trace,
            started_at=started,
            finished_at=time.time(),
            task_seconds=task_seconds,
            run_id=self.run_id,
            cause=failure_cause(error) if error is not None else None,
            cost_usd=usage.cost_usd,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            calls=usage.calls,
            task_version=self.task.version,
            vectors=output[1] if output is not None else None,
        )

    # -- committing ---------------------------------------------------------------------

    def _record(self, outcome: Outcome) -> None:
        self.counters.task_seconds += outcome.task_seconds
        if outcome.status == "failed" and outcome.cause == self._abort_cause:
            # The run's cause, not the row's: the row stays pending, as it was.
            self._uncommitted -= 1
            self._left_pending += 1
            self._settle_uncommitted([outcome.key])
            return
        if self._on_probation(outcome):
            # Not committed until the probe decides: if the job is broken, these rows go
            # back to pending exactly as they were (an older done output is not lost).
            self._held.append(outcome)
            self._uncommitted -= 1
            if self._uncommitted == 0:
                self._idle.set()
        else:
            self._buffer.append(outcome)
        self._watch_probe(outcome)
        self._maybe_flush()

    def _on_probation(self, outcome: Outcome) -> bool:
        return self._probe is not None and outcome.status == "failed"

    def _watch_probe(self, outcome: Outcome) -> None:
        """Stop the run when its first ``PROBE`` outcomes all failed alike: the same
        provider cause, or the same error (type and message) from the task, whatever its
        kind. Those rows go back to pending (the job, not the rows, is broken)."""
        if self._probe is None:
            return
        if outcome.status == "done" or outcome.cause == PROCESS_CRASH:
            self._end_probe(commit_held=True)  # the job works (or fails row by row)
            return
        self._probe.append(likeness(outcome))
        if len(self._probe) < PROBE:
            return
        alike = len(set(self._probe)) == 1 and self._abort_cause is None
        self._end_probe(commit_held=not alike)
        if alike:
            cause = self._abort_cause = outcome.cause or "task_error"
            self._stop_for(RunEnd.ABORTED, abort_message(outcome, cause))
            if cause in PROBED_CAUSES:
                # The provider refuses every call alike: cancel the rest at once. A task's
                # own error lets the items in flight finish, so the steps they paid for
                # are journaled for the fixed task to replay.
                self._hard_stop.set()

    def _end_probe(self, *, commit_held: bool) -> None:
        """The probe decided: its held failures are committed, or dropped (pending)."""
        self._probe = None
        held, self._held = self._held, []
        if commit_held and held:
            self._uncommitted += len(held)
            self._idle.clear()
            self._buffer.extend(held)
        elif held:
            self._left_pending += len(held)
            self._settle_uncommitted([outcome.key for outcome in held])
        self._window.resize(self._window.capacity - self._probe_room)
        self._probe_room = 0

    def _maybe_flush(self) -> None:
        if not self._buffer:
            return
        # Held ones are not counted; those with the writer are finished.
        nothing_running = len(self._buffer) + self._committing >= self._uncommitted
        if nothing_running or len(self._buffer) >= self._workers.capacity:
            self._flush()
        elif self._flush_timer is None:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(self.settings.flush_interval, self._flush)

    def _flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if not self._buffer and not self._cleared:
            return
        batch, self._buffer = self._buffer, []
        if self._writer is not None:
            self._hand_to_writer(self._writer, batch)
            return
        try:
            self._commit(batch)
        except Exception as exc:
            # A registry that cannot be written must stop the run: going on would do
            # (and maybe pay for) work that is then lost.
            self._fail_run(exc)
            return
        self._committed(batch)

    def _committed(self, batch: list[Outcome]) -> None:
        """Durable: counted, and no longer in flight (their window slots come back)."""
        for outcome in batch:
            if outcome.status == "done":
                self.counters.done += 1
            else:
                self.counters.failed += 1
                self.counters.causes[outcome.cause or "task_error"] += 1
        self._settled([outcome.key for outcome in batch])

    def _commit(self, batch: list[Outcome]) -> None:
        cleared = self._cleared_with(batch)
        if self._first_commit is not None:
            meta, run = self._first_commit()
            self.registry.commit(batch, meta=meta, run=run, cleared=cleared)
            self._first_commit = None
        else:
            self.registry.commit(batch, cleared=cleared)

    def _cleared_with(self, batch: list[Outcome]) -> list[str]:
        """Keys whose crash records go with this batch: suspects that ended."""
        crashes = self._crashes.counts if self._crashes is not None else {}
        cleared = [outcome.key for outcome in batch if outcome.key in crashes]
        cleared += self._cleared
        self._cleared = []
        return cleared

    def _hand_to_writer(self, writer: CommitThread, batch: list[Outcome]) -> None:
        """The batch goes to the commit thread; it counts as done when that says durable."""
        meta, run = self._first_commit() if self._first_commit is not None else (None, None)
        self._first_commit = None
        cleared = self._cleared_with(batch)
        writer.commit(batch, meta, run, cleared, lambda error: self._write_ended(error, batch))
        self._committing += len(batch)
        self._written.clear()

    def _write_ended(self, error: BaseException | None, batch: list[Outcome]) -> None:
        self._committing -= len(batch)
        if self._committing == 0:
            self._written.set()
        if error is not None:
            self._fail_run(error)  # as on the loop: the run stops at once
            return
        self._committed(batch)
        self._maybe_flush()


def _one_line(error: BaseException) -> str:
    if isinstance(error, RowpilotError):
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    text = " ".join(text.split())
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 1] + "…"
