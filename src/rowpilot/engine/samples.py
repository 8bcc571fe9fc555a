"""Samples: the run's counters and each resource's figures, written to the event log as
``run.sample`` events while it runs, so ``rowpilot report`` and the dashboard can draw
throughput, workers, requests, 429s, limits and cost over time.

``Sampler`` is a progress view that wraps the real one: the scheduler's ticks (and the
waits for Batch API answers) already refresh the progress view, and every refresh may
also take a sample. A sample is taken at most every ``period`` seconds, and the period
grows with the run (``elapsed / MAX_DENSE``, never under one second), so a run of any
length writes a few thousand samples at most: a day-long run about 5,500. The last
sample is taken when the run ends (``final``), whatever the period.

A sample's fields (all counts are since the run started):

* ``elapsed``: seconds since the run started; ``done``, ``failed``, ``skipped``,
  ``retries``, ``running``, ``rate_limited`` (429s), ``cost_usd``, ``budget_usd``;
  ``workers`` (``--workers auto``: the count now), ``paused`` (why admission waits for
  memory, or null);
* ``resources``: by model or ``ctx.call`` name, ``requests``, ``rate_limited``,
  ``in_flight``, ``paused_seconds`` (a 429's pause still to run), ``learned`` (whether
  the limits in force came from the provider's headers), the limits in force (``rpm``,
  ``tpm``, ``max_concurrent``, ``input_tpm``, ``output_tpm``), ``call_seconds``,
  ``calls_ended`` and ``latency_counts`` (``rowpilot._latency`` buckets).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rowpilot.engine.events import EventLog
from rowpilot.engine.progress import Counters, ProgressView

if TYPE_CHECKING:
    from rowpilot.tasks.base import Task

SAMPLE_EVENT = "run.sample"
MIN_PERIOD = 1.0  # seconds between samples at least
MAX_DENSE = 1000  # the period is elapsed / MAX_DENSE once that is over MIN_PERIOD

_RESOURCE_FIELDS = (
    "requests",
    "rate_limited",
    "in_flight",
    "paused_seconds",
    "learned",
    "rpm",
    "tpm",
    "max_concurrent",
    "input_tpm",
    "output_tpm",
    "call_seconds",
    "calls_ended",
    "latency_counts",
)


def _rounded(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else value


class Sampler:
    """A progress view that passes every call on to ``inner`` and writes samples."""

    def __init__(
        self,
        inner: ProgressView,
        task: Task,
        events: EventLog,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.task = task
        self._events = events
        self._clock = clock
        self._started = clock()
        self._last: float | None = None

    def start(self, counters: Counters) -> None:
        self._started = self._clock()
        self.inner.start(counters)
        self.sample(counters, final=True)  # the run's zero point

    def refresh(self, counters: Counters) -> None:
        self.inner.refresh(counters)
        self.sample(counters)

    def stop(self, counters: Counters, *, final: bool = True) -> None:
        self.inner.stop(counters, final=final)

    def note(self, message: str) -> None:
        self.inner.note(message)

    def sample(self, counters: Counters, *, final: bool = False) -> None:
        """Write a sample if the period is over (always when ``final``)."""
        now = self._clock()
        elapsed = now - self._started
        period = max(MIN_PERIOD, elapsed / MAX_DENSE)
        if not final and self._last is not None and now - self._last < period:
            return
        self._last = now
        self._events.emit(SAMPLE_EVENT, **self.figures(counters, elapsed))

    def figures(self, c: Counters, elapsed: float) -> dict[str, Any]:
        resources = {
            name: {field: _rounded(stats.get(field)) for field in _RESOURCE_FIELDS}
            for name, stats in self.task.resource_stats().items()
        }
        return {
            "elapsed": round(elapsed, 3),
            "done": c.done,
            "failed": c.failed,
            "skipped": c.skipped + c.skipped_failed,
            "retries": c.retries,
            "running": c.running,
            "rate_limited": c.rate_limited,
            "cost_usd": round(c.cost_usd, 8),
            "budget_usd": c.budget_usd,
            "workers": c.workers,
            "paused": c.paused,
            "resources": resources,
        }
