"""Sizing: how many workers a run uses (``--workers auto``), and when admission waits for
memory (``--max-memory``).

Written by hand because it decides a run's speed and its safety. Pure: the clock, the
machine and the run's counters are given, so every rule is tested without a run. Workers
are counted in the unit of ``--workers``: items, or requests for a batched prompt task, or
groups for the local model's tasks.

**The start** (``choose_workers``) is one number with its reason:

* an async task: 8. Its items wait on I/O, so the CPU count says nothing of how many can
  overlap; the controller finds out.
* a sync task (threads): ``CPUs + 4``, at most 32, Python's own default for thread pools:
  enough to overlap I/O, few enough that CPU-bound work under the GIL does not thrash.
* either, when the task knows a pace before the run (a Python task's ``[limits.NAME]``
  tables: the tightest ``rpm``, as if an item made one call of it): Little's law as for a
  prompt task below, if that is more. It errs high, and the first look cuts it.
* the local model's grouped tasks: one group per CPU (the work is numpy, CPU-bound).
* a prompt task: Little's law, requests in flight = rate x latency: ``pace / 60 x 2 s``
  (a typical request's latency until one is measured) x 1.2 for jitter, capped by the
  model's ``max_concurrent``; 8 when no rate is known yet (the resource learns it from
  the first answer's headers, and the controller follows). The pace
  (``requests_per_minute``) is ``min(rpm, tpm / tokens a call)``: a call's tokens are the
  least a provider could count for it, what the answers say they used
  (``least_tokens_per_call``: a provider that keeps max_tokens charged makes the limiter
  hold the extra workers back, at no cost), before any answer the admission estimate,
  and before the run the least a request can cost (the prompt's own text and
  ``max_tokens``), so the start errs high.
* never more than one worker per ``ITEM_MEMORY_MB`` of the memory there is room for
  (``--max-memory`` less the resident size, else the machine's available memory), nor more
  than ``--max-workers`` (256), nor fewer than 1.

**The controller** (``WorkerSizer``) looks at the run once a ``period`` (1 s; longer until
``min_items`` items finished in it) and changes the count at most once per look:

1. 429s in the window: cut to 3/4 (at least one fewer), and no growth for ``cooldown``.
2. memory pressure (resident size at 90 % of ``--max-memory``, or the machine under 5 %
   available): the same cut.
3. above the ceiling: down to it. The ceiling is ``--max-workers``, the model's
   ``max_concurrent``, and for a known rate Little's law again with the *measured*
   latency: ``pace / 60 x latency x 1.2``, where latency is the mean time of the calls
   that ended since the last look, from their admission by the rate limiter to their
   answer (the wait for the limiter is not latency: counting it would let a queue justify
   itself), or the service time the task gives (``Rates.service_seconds``). A Python
   task's pace is per item: each step resource's pace over the calls an item makes of it
   (counted against the items started), the tightest; its service time is an item's
   calls (calls an item x their latency, per resource) plus its own work (its task time
   outside its steps). Since the last look, not over the window: while a growth step
   settles, the window spans several looks, and the calls of its first ones ran at the
   old count; a ceiling is judged on the freshest measure at every look, never waited
   out. The need is rounded to a millionth of a worker before it is rounded up: the float
   noise of the run's totals must not add a worker.
4. the last step was a growth by half: keep it only if throughput rose by at least 30 %
   of the ideal (a step from 8 to 12 workers should give 1.5x the items/s; it must give
   at least 1.15x); else go back and hold for ``plateau_hold`` before probing again.
5. the workers were busy (on average 80 % of them running), items finished, and the
   count is below the ceiling: with a known rate, go to its Little's-law bound at once,
   with no gain test (throughput counts finished items, which lag the step by a latency;
   the bound itself is measured again at every look); with none, grow by half (at least
   one). Idle workers say the source, the memory gate or the end of the run is the
   limit, not the worker count: no change.

Every change is a ``Decision`` with the old and new counts and why, logged by the scheduler
as ``workers.adjusted``.

**The memory gate** (``MemoryGate``) decides, before each admission under ``--max-memory``,
whether the resident size leaves room for one more item. What one item adds is learned
from the running items (resident size less the size at rest, per item; a decaying
maximum). An item's memory shows only once it runs, so items admitted less than ``settle``
ago count at that size too. An item is admitted when the resident size plus the unseen
items plus itself stays within the cap; until the size of an item is known, when the
resident size is under the cap and no admitted item is unseen (one new item at a time).
At or above the cap nothing is admitted, with one exception that keeps every run going: a
run with nothing in flight always admits one item, so a cap below the resident size at
rest (the baseline) slows the run to one item at a time, never to a halt. The peak it
keeps is the cap once an item's size is known, else the cap plus one item.
"""

from __future__ import annotations

import collections
import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from rowpilot.llm.limits import Limits

TaskKind = Literal["async", "sync", "grouped", "prompt"]

MAX_WORKERS = 256  # the default ceiling of --workers auto (--max-workers)
ASYNC_START = 8
THREADS_MAX_START = 32
LLM_LATENCY = 2.0  # seconds of a request, assumed for the start until one is measured
RATE_MARGIN = 0.2  # Little's-law bound x (1 + margin): room for latency jitter
ITEM_MEMORY_MB = 64.0  # one worker's working memory, assumed for the start

_CUT = 0.75  # the count's cut on 429s or memory pressure
_GROWTH = 1.5
_GAIN_SHARE = 0.3  # of the ideal gain of a growth step, the least that keeps it
_SETTLE = 2.5  # item latencies a growth step runs before its gain is judged
_BUSY = 0.8  # mean share of workers running for the count to be the limit
_PRESSURE = 0.9  # of --max-memory, from which the resident size is pressure
_LOW_MEMORY = 0.05  # of the machine's memory available, below which it is pressure
_DECAY = 0.9  # of the learned per-item memory, per sample that shows less
_NEED_DIGITS = 6  # Little's-law needs are rounded to a millionth of a worker


def requests_per_minute(
    rpm: float | None, tpm: float | None = None, tokens_per_call: float | None = None
) -> float | None:
    """The requests a resource can start per minute: ``min(rpm, tpm / tokens_per_call)``
    of what is known; None when neither is."""
    paces = [rpm] if rpm is not None and rpm > 0 else []
    if tpm is not None and tpm > 0 and tokens_per_call is not None and tokens_per_call > 0:
        paces.append(tpm / tokens_per_call)
    return min(paces) if paces else None


def pace_name(rpm: float | None, tpm: float | None, tokens_per_call: float | None) -> str:
    """Which limit sets ``requests_per_minute``, in words for the log."""
    pace = requests_per_minute(rpm, tpm, tokens_per_call)
    if rpm is not None and pace == rpm:
        return f"rpm {rpm:g}"
    return f"tpm {tpm:g} / {tokens_per_call:.0f} tokens a call = {pace:.0f} rpm"


def littles_law_bound(rpm: float, latency: float, margin: float = RATE_MARGIN) -> int:
    """Requests in flight that ``rpm`` (requests a minute, whichever limit sets them:
    ``requests_per_minute``) keeps busy when each takes ``latency`` seconds."""
    need = rpm / 60.0 * max(0.0, latency) * (1.0 + margin)
    # A latency differenced from the run's totals is off in its last bits: 5.000000000001
    # is 5 workers, not 6.
    return max(1, math.ceil(round(need, _NEED_DIGITS)))


# -- the start ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """The starting count of ``--workers auto``, its ceiling, and why."""

    workers: int
    ceiling: int
    why: str


def choose_workers(
    kind: TaskKind,
    *,
    cpus: int,
    available_mb: float | None,
    max_workers: int = MAX_WORKERS,
    max_memory_mb: float | None = None,
    rss_mb: float | None = None,
    limits: Limits | None = None,
    rates: Rates | None = None,
) -> Choice:
    """The start (see the module docstring): by the task's kind, then capped. ``rates``:
    what the task knows of its pace before the run (a prompt's least token cost, a Python
    task's step resources)."""
    ceiling = max(1, max_workers)
    if limits is not None and limits.max_concurrent is not None:
        ceiling = min(ceiling, limits.max_concurrent)
    tokens_per_call = rates.tokens_per_call if rates is not None else None
    workers, why = _by_kind(kind, cpus, limits, tokens_per_call)
    if kind in ("async", "sync") and rates is not None:
        workers, why = _paced_start(workers, why, rates)
    memory = _memory_bound(available_mb, max_memory_mb, rss_mb)
    if memory is not None and memory[0] < workers:
        workers, why = memory
    if workers > ceiling:
        workers = ceiling
        why += f", capped at {ceiling} ({_ceiling_name(ceiling, max_workers, limits)})"
    return Choice(max(1, workers), ceiling, why)


def _by_kind(
    kind: TaskKind, cpus: int, limits: Limits | None, tokens_per_call: float | None
) -> tuple[int, str]:
    cpus = max(1, cpus)
    if kind == "async":
        return ASYNC_START, f"{ASYNC_START} for an async task (its items wait on I/O, not CPUs)"
    if kind == "sync":
        workers = min(THREADS_MAX_START, cpus + 4)
        return workers, f"{workers} threads ({cpus} CPUs + 4, at most {THREADS_MAX_START})"
    if kind == "grouped":
        return cpus, f"{cpus}: one group per CPU for the local model"
    rpm, tpm = (limits.rpm, limits.tpm) if limits is not None else (None, None)
    pace = requests_per_minute(rpm, tpm, tokens_per_call)
    if pace is None:
        return ASYNC_START, f"{ASYNC_START}: the model's rate is not known until it answers"
    workers = littles_law_bound(pace, LLM_LATENCY)
    return workers, (
        f"{workers}: {pace_name(rpm, tpm, tokens_per_call)} x {LLM_LATENCY:g} s assumed "
        f"latency x {1 + RATE_MARGIN:g} (Little's law)"
    )


def _paced_start(workers: int, why: str, rates: Rates) -> tuple[int, str]:
    """A task whose steps' limits are known starts where Little's law says, if higher."""
    pace = rates.per_minute()
    if pace is None:
        return workers, why
    paced = littles_law_bound(pace, LLM_LATENCY)
    if paced <= workers:
        return workers, why
    return paced, (
        f"{paced}: {rates.describe()} x {LLM_LATENCY:g} s assumed latency x "
        f"{1 + RATE_MARGIN:g} (Little's law)"
    )


def _memory_bound(
    available_mb: float | None, max_memory_mb: float | None, rss_mb: float | None
) -> tuple[int, str] | None:
    if max_memory_mb is not None:
        room = max_memory_mb - (rss_mb or 0.0)
        where = f"--max-memory {max_memory_mb:g} MB less {rss_mb or 0.0:.0f} MB resident"
    elif available_mb is not None:
        room, where = available_mb, f"{available_mb:.0f} MB available"
    else:
        return None
    workers = max(1, math.floor(room / ITEM_MEMORY_MB))
    return workers, f"{workers}: {ITEM_MEMORY_MB:g} MB per worker of {where}"


def _ceiling_name(ceiling: int, max_workers: int, limits: Limits | None) -> str:
    if limits is not None and limits.max_concurrent == ceiling and ceiling < max_workers:
        return "the model's max_concurrent"
    return "--max-workers"


# -- the controller -------------------------------------------------------------------------


@dataclass(frozen=True)
class Rates:
    """The pace the run sees now, in the unit of workers: a prompt task's model (its
    requests), or a Python task's items at its tightest step resource's pace."""

    rpm: float | None  # the pace in force (after any cut), else the limit
    max_concurrent: int | None = None
    calls: int = 0  # calls ended so far
    call_seconds: float = 0.0  # their time from admission to end: the latency that counts
    tpm: float | None = None  # the token pace in force, else the limit
    tokens_per_call: float | None = None  # the least a call costs a token bucket: its usage
    service_seconds: float | None = None  # a unit's time less its waits, when known whole
    source: str = ""  # where a task's pace comes from (its tightest resource), for the log

    def per_minute(self) -> float | None:
        """The requests (or items) a minute the limits allow: ``requests_per_minute``."""
        return requests_per_minute(self.rpm, self.tpm, self.tokens_per_call)

    def describe(self) -> str:
        return self.source or pace_name(self.rpm, self.tpm, self.tokens_per_call)


@dataclass(frozen=True)
class Reading:
    """The run's counters at one moment; the totals are since the start of the run."""

    now: float
    finished: int  # items done or failed
    task_seconds: float  # their task time (all attempts)
    rate_limited: int  # 429s answered
    rss_mb: float | None = None
    available_mb: float | None = None
    total_mb: float | None = None
    rates: Rates | None = None


@dataclass(frozen=True)
class Decision:
    old: int
    new: int
    why: str


@dataclass(frozen=True)
class _Probe:
    workers: int  # the count before the growth
    throughput: float  # items/s it gave


class WorkerSizer:
    """The controller of ``--workers auto`` (see the module docstring)."""

    def __init__(
        self,
        start: int,
        ceiling: int,
        *,
        max_memory_mb: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        period: float = 1.0,
        min_items: int = 4,
        cooldown: float = 10.0,
        plateau_hold: float = 10.0,
    ) -> None:
        self.ceiling = max(1, ceiling)
        self.workers = min(self.ceiling, max(1, start))
        self.max_memory_mb = max_memory_mb
        self.period = period
        self.min_items = min_items
        self.cooldown = cooldown
        self.plateau_hold = plateau_hold
        self._clock = clock
        self._since = Reading(now=clock(), finished=0, task_seconds=0.0, rate_limited=0)
        self._look = self._since  # the last look: the window's start, or a settling look
        self._running_sum = 0.0
        self._samples = 0
        self._hold_until = -math.inf
        self._probe: _Probe | None = None
        self._latency: float | None = None  # the last window's mean item latency

    def note(self, running: float) -> None:
        """How many workers are running now; the busy share is their mean over a window."""
        self._running_sum += running
        self._samples += 1

    def due(self) -> bool:
        return self._clock() - self._since.now >= self.period

    def update(self, reading: Reading) -> Decision | None:
        """Look at the window since the last look; a change of the count, or None."""
        since = self._since
        elapsed = reading.now - since.now
        if elapsed < self.period:
            return None
        finished = reading.finished - since.finished
        limited = reading.rate_limited - since.rate_limited
        pressure = self._memory_pressure(reading)
        if (
            finished < self.min_items
            and not limited
            and pressure is None
            and elapsed < 5 * self.period
        ):
            return None  # too few items to judge: the window grows
        settle = _SETTLE * self._latency if self._latency is not None else 0.0
        ceiling = self._ceiling(reading, self._freshest(reading))
        settling = self._probe is not None and not limited and pressure is None
        if settling and elapsed < settle and self.workers <= ceiling.workers:
            # A growth step shows in throughput only once the items it admitted finish:
            # judged sooner, a slow task's growth always looks like no gain. The window
            # grows, unless the count is above a ceiling, which is never waited out.
            self._look = reading
            return None
        window = _Window(
            elapsed=elapsed,
            finished=finished,
            latency=_latency(since, reading),
            busy=self._running_sum / self._samples / self.workers if self._samples else 0.0,
            limited=limited,
            pressure=pressure,
        )
        self._since = self._look = reading
        self._running_sum, self._samples = 0.0, 0
        if window.latency is not None:
            self._latency = window.latency
        new, why = self._decide(reading, window, ceiling)
        new = min(self.ceiling, max(1, new))
        if new == self.workers:
            return None
        decision = Decision(self.workers, new, why)
        self.workers = new
        return decision

    def _decide(self, now: Reading, w: _Window, bound: _Bound) -> tuple[int, str]:
        current = self.workers
        ceiling, ceiling_why = bound.workers, bound.why
        if w.limited or w.pressure is not None:
            self._hold_until = now.now + self.cooldown
            self._probe = None
            cut = min(current - 1, math.floor(current * _CUT), ceiling)
            if w.limited:
                return cut, f"{w.limited} rate-limited (429) answers in {w.elapsed:.1f}s"
            return cut, f"memory pressure: {w.pressure}"
        if current > ceiling:
            self._probe = None
            return ceiling, f"above the ceiling: {ceiling_why}"
        throughput = w.finished / w.elapsed
        probe, self._probe = self._probe, None
        if probe is not None and w.busy >= _BUSY and probe.throughput > 0:
            ideal = current / probe.workers
            gain = throughput / probe.throughput
            if gain - 1.0 < _GAIN_SHARE * (ideal - 1.0):
                self._hold_until = now.now + self.plateau_hold
                return probe.workers, (
                    f"no gain from {probe.workers} to {current} workers "
                    f"({probe.throughput:.1f} -> {throughput:.1f} items/s)"
                )
        if now.now < self._hold_until or w.busy < _BUSY or current >= ceiling:
            return current, ""
        if w.finished == 0:
            return current, ""  # busy, but nothing finished: no evidence that more would help
        in_flight = throughput * (w.latency or 0.0)
        busy = (
            f"{min(1.0, w.busy):.0%} of {current} workers busy: {throughput:.1f} items/s x "
            f"{w.latency or 0.0:.3f} s = {in_flight:.1f} in flight (Little's law), "
            "no 429s or memory pressure"
        )
        if bound.by_rate:
            # A known rate and a measured latency say how many are needed: go there at
            # once, and keep it without a gain test, which judges by finished items that
            # lag the step by a latency; the bound is measured again at every look.
            return ceiling, f"{busy}: going to the rate's bound, {ceiling_why}"
        grown = min(ceiling, max(current + 1, math.ceil(current * _GROWTH)))
        self._probe = _Probe(current, throughput)
        return grown, f"{busy}: trying {grown}"

    def _freshest(self, now: Reading) -> Reading:
        """Where the ceiling's measure starts: the last look, unless nothing ended since."""
        return self._look if now.finished > self._look.finished else self._since

    def _ceiling(self, now: Reading, since: Reading) -> _Bound:
        """The count not to exceed, and why, measured on what ended between the readings."""
        ceiling, why = self.ceiling, f"--max-workers {self.ceiling}"
        latency = _latency(since, now)
        rates = now.rates
        if rates is None:
            return _Bound(ceiling, why)
        if rates.max_concurrent is not None and rates.max_concurrent < ceiling:
            ceiling, why = rates.max_concurrent, f"max_concurrent {rates.max_concurrent}"
        pace = rates.per_minute()
        if pace is None or latency is None:
            return _Bound(ceiling, why)
        service = latency  # an item's, when the calls say nothing
        before = since.rates or Rates(rpm=None)
        if rates.service_seconds is not None:
            service = rates.service_seconds
        elif rates.calls > before.calls:
            service = (rates.call_seconds - before.call_seconds) / (rates.calls - before.calls)
        bound = littles_law_bound(pace, service)
        if bound >= ceiling:
            return _Bound(ceiling, why)
        return _Bound(
            bound,
            f"{rates.describe()} x {service:.2f} s latency x {1 + RATE_MARGIN:g} "
            f"= {bound} in flight (Little's law)",
            by_rate=True,
        )

    def _memory_pressure(self, r: Reading) -> str | None:
        cap = self.max_memory_mb
        if cap is not None and r.rss_mb is not None and r.rss_mb >= _PRESSURE * cap:
            return f"{r.rss_mb:.0f} MB resident of --max-memory {cap:g} MB"
        if r.available_mb is not None and r.total_mb and r.available_mb < _LOW_MEMORY * r.total_mb:
            return f"{r.available_mb:.0f} MB of the machine's {r.total_mb:.0f} MB available"
        return None


def _latency(since: Reading, now: Reading) -> float | None:
    """The mean task time of the items that finished between two readings."""
    finished = now.finished - since.finished
    return (now.task_seconds - since.task_seconds) / finished if finished > 0 else None


@dataclass(frozen=True)
class _Bound:
    workers: int
    why: str
    by_rate: bool = False  # Little's law of a known rate: a target, not only a limit


@dataclass(frozen=True)
class _Window:
    elapsed: float
    finished: int
    latency: float | None
    busy: float
    limited: int
    pressure: str | None


# -- the memory gate ------------------------------------------------------------------------


class Admit(enum.Enum):
    YES = "yes"
    SETTLE = "settle"  # items admitted just now may not show yet: look again shortly
    FULL = "full"  # no room under the cap for one more item: admission is paused


class MemoryGate:
    """Admission under ``--max-memory`` (see the module docstring)."""

    def __init__(
        self,
        cap_mb: float,
        read_rss: Callable[[], float],
        *,
        clock: Callable[[], float] = time.monotonic,
        settle: float = 0.05,
    ) -> None:
        self.cap_mb = cap_mb
        self.rss_mb = 0.0  # at the last check
        self._read_rss = read_rss
        self._clock = clock
        self._settle = settle
        self._baseline: float | None = None  # resident size with nothing running
        self._per_item: float | None = None  # MB a running item adds
        self._recent: collections.deque[float] = collections.deque()  # admission times

    @property
    def per_item_mb(self) -> float | None:
        return self._per_item

    def check(self, in_flight: int, running: int) -> Admit:
        """May one more item be admitted, with ``in_flight`` admitted and ``running`` running?"""
        now = self._clock()
        rss = self._read_rss()
        self.rss_mb = rss
        while self._recent and now - self._recent[0] >= self._settle:
            self._recent.popleft()
        self._learn(rss, running)
        if in_flight <= 0:
            return Admit.YES  # the rule that keeps a run going: one item at a time
        if rss >= self.cap_mb:
            return Admit.FULL
        unseen = len(self._recent)
        if self._per_item is None:
            return Admit.SETTLE if unseen else Admit.YES
        if rss + self._per_item * (unseen + 1) <= self.cap_mb:
            return Admit.YES
        return Admit.SETTLE if unseen else Admit.FULL

    def admitted(self) -> None:
        self._recent.append(self._clock())

    def _learn(self, rss: float, running: int) -> None:
        if running <= 0:
            self._baseline = rss if self._baseline is None else min(self._baseline, rss)
            return
        if self._recent or self._baseline is None:
            return  # an item admitted just now may not have allocated yet
        sample = max(0.0, rss - self._baseline) / running
        if self._per_item is None:
            self._per_item = sample
        else:
            self._per_item = max(sample, self._per_item * _DECAY)


# -- what a run holds -----------------------------------------------------------------------


@dataclass(frozen=True)
class AutoWorkers:
    """``--workers auto`` as a run holds it: the start, and the rates to watch, if any."""

    workers: int
    ceiling: int
    why: str
    rates: Callable[[], Rates | None] | None = None  # a prompt task's model, read each look

    @classmethod
    def of(cls, choice: Choice, rates: Callable[[], Rates | None] | None = None) -> AutoWorkers:
        return cls(choice.workers, choice.ceiling, choice.why, rates)
