"""Progress: a rich bar on a terminal, plain periodic lines otherwise, or nothing."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol, TextIO, TypeVar

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rowpilot._format import usd

PROGRESS_TICK = 1.0  # seconds between progress refreshes while rows are answered ahead
T = TypeVar("T")


@dataclass
class Counters:
    """Live counts of one run, read by the progress view and the summary."""

    total: int | None = None
    done: int = 0
    failed: int = 0
    skipped: int = 0
    skipped_failed: int = 0
    retries: int = 0
    running: int = 0
    started: int = 0  # items whose first attempt began
    task_seconds: float = 0.0
    step_seconds: float = 0.0  # of the finished items' task time, inside their ctx steps
    cpu_seconds: float = 0.0  # of sync tasks' time, their threads' CPU time
    started_at: float = 0.0
    causes: Counter[str] = field(default_factory=Counter)  # failed items by cause class
    calls: int = 0  # provider calls paid for in this run
    cached: int = 0  # answers taken from the call cache instead
    batch_calls: int = 0  # of ``calls``, requests answered through a Batch API
    batch_answers: int = 0  # answers those requests journaled (then read back: in ``cached``)
    cost_usd: float = 0.0
    budget_usd: float | None = None
    rate_limited: int = 0  # 429s the provider answered
    splits: int = 0  # batches whose missing or invalid rows were asked again in halves
    workers: int | None = None  # --workers auto: the count now
    paused: str | None = None  # why admission waits (--max-memory), while it does
    batches: str | None = None  # --batch-api: the batches and their rows, as the run waits
    parked: int = 0  # --batch-api: item passes that ended at a step waiting for a batch

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.skipped + self.skipped_failed

    def processed_rate(self, now: float) -> float:
        elapsed = max(now - self.started_at, 1e-9)
        return (self.done + self.failed) / elapsed


class ProgressView(Protocol):
    def start(self, counters: Counters) -> None: ...
    def refresh(self, counters: Counters) -> None: ...
    def stop(self, counters: Counters, *, final: bool = True) -> None: ...
    def note(self, message: str) -> None:
        """One line the user should read once, above the progress (a shard's pace)."""
        ...


class NoProgress:
    def start(self, counters: Counters) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def refresh(self, counters: Counters) -> None:
        pass

    def stop(self, counters: Counters, *, final: bool = True) -> None:
        pass


def _status_text(c: Counters, now: float) -> str:
    text = (
        f"ok {c.done}  failed {c.failed}  skipped {c.skipped + c.skipped_failed}"
        f"  {c.processed_rate(now):,.0f} items/s"
    )
    if c.calls or c.cached or c.budget_usd is not None:
        budget = f" of {usd(c.budget_usd)}" if c.budget_usd is not None else ""
        text += f"  ${c.cost_usd:,.4f}{budget}"
    if c.workers is not None:
        text += f"  workers {c.workers}"
    if c.paused is not None:
        text += f"  paused: {c.paused}"
    if c.batches is not None:
        text += f"  {c.batches}"
    return text


def _count_text(c: Counters) -> str:
    return f"{c.finished:,}/{c.total:,}" if c.total is not None else f"{c.finished:,}"


class RichProgress:
    """A live bar: done/total, ok, failed, skipped, items/s, elapsed and ETA."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[count]}"),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task_id = self._progress.add_task("rowpilot", total=None, status="", count="")

    def start(self, counters: Counters) -> None:
        self._progress.start()
        self.refresh(counters)

    def refresh(self, counters: Counters) -> None:
        self._progress.update(
            self._task_id,
            total=counters.total,
            completed=counters.finished,
            count=_count_text(counters),
            status=_status_text(counters, time.monotonic()),
        )

    def stop(self, counters: Counters, *, final: bool = True) -> None:
        if final:
            self.refresh(counters)
        self._progress.stop()

    def note(self, message: str) -> None:
        self._progress.console.print(message, markup=False, highlight=False)


class PlainProgress:
    """One line every ``interval`` seconds, for logs and pipes."""

    def __init__(self, stream: TextIO, interval: float = 10.0) -> None:
        self._stream = stream
        self._interval = interval
        self._last = 0.0

    def start(self, counters: Counters) -> None:
        self._last = time.monotonic()

    def refresh(self, counters: Counters) -> None:
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._line(counters, now)

    def stop(self, counters: Counters, *, final: bool = True) -> None:
        if final:  # a run that ends in an error says so in one line, without this one
            self._line(counters, time.monotonic())

    def note(self, message: str) -> None:
        print(message, file=self._stream, flush=True)

    def _line(self, c: Counters, now: float) -> None:
        total = f"/{c.total:,}" if c.total is not None else ""
        print(
            f"progress {c.finished:,}{total}  {_status_text(c, now)}", file=self._stream, flush=True
        )


def default_view(enabled: bool | None) -> ProgressView:
    """A rich bar on a terminal (stderr), plain lines when not a TTY, none if disabled."""
    if enabled is False:
        return NoProgress()
    if sys.stderr.isatty():
        return RichProgress(Console(stderr=True))
    return PlainProgress(sys.stderr)


async def refreshing(work: Awaitable[T], progress: ProgressView, counters: Counters) -> T:
    """``work`` (a task's rows answered ahead: batches waited for), with the progress view
    refreshed every second meanwhile, as the scheduler's ticks refresh it later."""
    running = asyncio.ensure_future(work)
    try:
        while not running.done():
            progress.refresh(counters)
            await asyncio.wait({running}, timeout=PROGRESS_TICK)
    except BaseException:
        running.cancel()
        raise
    progress.refresh(counters)
    return running.result()
