"""What a run returns: its summary, and the whole job's table read from the registry."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rowpilot._format import usd
from rowpilot.sinks.exports import ExportRecord, to_dataframe
from rowpilot.state.registry import Registry

if TYPE_CHECKING:
    import pandas as pd

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_ABORTED = 2  # a cause of the whole run (auth, unknown model): fix the job, run again
EXIT_BUDGET = 3  # the budget is spent; the rest is pending for the next run
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Summary:
    """The figures of one run. ``speedup`` is the task time, less the waits for rate limits
    (``waited_seconds``), over the wall time: what one item at a time would take."""

    run_id: str
    state: str
    # completed, completed_with_failures, failed, interrupted, budget_reached, aborted, or
    # waiting (rows wait for open batches: --batch-api --detach)
    status: str
    total: int | None
    done: int
    failed: int
    skipped: int
    skipped_failed: int
    pending: int | None
    retries: int
    elapsed: float
    items_per_second: float
    task_seconds: float
    speedup: float
    stop_reason: str | None = None  # why a budget stop or an abort ended the run
    causes: dict[str, int] = field(default_factory=dict)  # failed items by cause class
    calls: int = 0
    cached: int = 0
    batch_calls: int = 0  # of ``calls``, through a Batch API
    batch_answers: int = 0  # of ``cached``, what those batch calls answered this run
    cost_usd: float = 0.0
    budget_usd: float | None = None
    batched: bool = False  # rows were computed or asked in batches
    rate_limited: int = 0  # 429s the provider answered (each waited its turn again)
    splits: int = 0  # batches asked again in halves for missing or invalid rows
    waited_seconds: float = 0.0  # of task_seconds, spent waiting for rate-limited resources
    cpu_seconds: float = 0.0  # of task_seconds, sync tasks' threads on the CPU
    workers: int | None = None  # the most items that ran at once (--workers, or auto's cap)
    dropped: int = 0  # rows whose key repeated an earlier row's (--duplicates first)
    executor: str = "threads"  # where the calls ran: "threads", "2 processes", "4 Ray actors"

    @property
    def exit_code(self) -> int:
        if self.status == "interrupted":
            return EXIT_INTERRUPTED
        if self.status == "aborted":
            return EXIT_ABORTED
        if self.status == "budget_reached":
            return EXIT_BUDGET
        return EXIT_FAILURES if self.failed or self.skipped_failed else EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        total = f" of {self.total:,}" if self.total is not None else ""
        if self.total == 0:
            return [
                "nothing selected: the selection (--rows, --shard, --limit) holds no rows",
                f"state: {self.state}",
            ]
        if self.status == "completed" and not self.done and not self.pending:
            return [
                f"nothing to do: all {self.skipped:,} items were done before",
                f"state: {self.state}",
            ]
        finished = self.done + self.failed
        shares = (
            f" ({self.done / finished:.1%} ok, {self.failed / finished:.1%} failed)"
            if finished
            else ""
        )
        lines = [
            f"{self.status.replace('_', ' ')}: {self.done:,} done, {self.failed:,} failed, "
            f"{self.skipped:,} skipped (done before){total}{shares}",
            f"elapsed {self.elapsed:.2f}s, {self.items_per_second:,.1f} items/s"
            + (
                ""
                if self.batched or not finished  # a batched row's task time is its batch's
                else f", {self.task_seconds / finished:.2f}s per item on average, "
                f"task time {self.task_seconds:.2f}s{self._waits()}{self._speedup()}"
            ),
        ]
        if self.stop_reason:
            lines.insert(1, f"stopped: {self.stop_reason}")
        if self.causes:
            shares = ", ".join(f"{cause} {n:,}" for cause, n in sorted(self.causes.items()))
            lines.append(f"failed by cause: {shares}")
        if self.calls or self.cached or self.budget_usd is not None:
            budget = f" of a {usd(self.budget_usd)} budget" if self.budget_usd is not None else ""
            lines.append(f"cost ${self.cost_usd:,.4f}{budget}: {self._calls_line()}")
        if self.rate_limited or self.splits:
            lines.append(
                f"{self.rate_limited:,} rate-limited requests waited their turn; "
                f"{self.splits:,} batches were split to ask again for missing rows"
            )
        if self.skipped_failed:
            lines.append(
                f"{self.skipped_failed:,} failed earlier and were not retried "
                "(add --retry-failed to retry them)"
            )
        if self.retries:
            lines.append(f"{self.retries:,} retries")
        if self.dropped:
            lines.append(
                f"{self.dropped:,} rows repeat an earlier row's key and were left out "
                "(--duplicates first)"
            )
        if self.pending:
            lines.append(f"{self.pending:,} items not processed yet")
        lines.append(f"state: {self.state}")
        return lines

    @property
    def cpu_bound(self) -> bool:
        """The task's threads kept a core busy: Python threads then take turns (the GIL),
        and their task times overlap without running at the same time. Worker processes
        and Ray actors each have a core of their own: their times add up for real."""
        threads = self.executor == "threads"
        return threads and self.elapsed > 0 and self.cpu_seconds >= 0.5 * self.elapsed

    @property
    def speedup_meaningful(self) -> bool:
        """False for CPU-bound sync work on threads, below 1.05 (nothing overlapped), and
        past the worker count (time counted twice, as a fan-out of sub-items can)."""
        beyond = self.workers is not None and self.speedup > 1.05 * self.workers
        overlapped = self.speedup >= 1.05  # below it nothing ran side by side to speak of
        return overlapped and not self.cpu_bound and not beyond

    def _speedup(self) -> str:
        if self.speedup_meaningful:
            return f", parallel speed-up {self.speedup:.1f}x on {self.executor}"
        if self.cpu_bound:
            return (
                ", CPU-bound (Python threads took turns on one core: no speed-up to show; "
                "--executor process runs it on every core)"
            )
        return ""

    def _calls_line(self) -> str:
        """Paid calls, and answers taken from the journal; a Batch API's answers are read
        back from the journal too, but were paid in this run: counted apart."""
        if not self.batch_calls:
            return (
                f"{self.calls:,} provider calls, "
                f"{self.cached:,} answers from the call cache (not paid again)"
            )
        earlier = max(0, self.cached - self.batch_answers)
        return (
            f"{self.calls:,} provider calls ({self.batch_calls:,} through the Batch API, "
            f"answering {self.batch_answers:,}), "
            f"{earlier:,} answers from the call cache (not paid again)"
        )

    def _waits(self) -> str:
        if self.waited_seconds < 0.005:
            return ""
        return f" ({self.waited_seconds:.2f}s of it waiting for rate limits)"


class Result:
    """A finished (or stopped) run: its summary and the job's records in the registry."""

    def __init__(self, summary: Summary, state: Path, written: list[str] | None = None) -> None:
        self.summary = summary
        self.state = state
        self.written = written or []

    def __repr__(self) -> str:
        s = self.summary
        return f"<Result {s.status}: {s.done} done, {s.failed} failed, {s.skipped} skipped>"

    def _registry(self) -> Registry | None:
        registry = Registry(self.state)
        return registry if registry.exists else None

    def __iter__(self) -> Iterator[ExportRecord]:
        """Every current item of the job in source order: key, status, input, output,
        error (items an older version of the task produced are left out)."""
        registry = self._registry()
        if registry is None:
            return
        try:
            yield from registry.records()
        finally:
            registry.close()

    def to_pandas(self, *, done_only: bool = False, include_stale: bool = False) -> pd.DataFrame:
        """The whole job's enriched table (input columns, then output columns); with
        ``include_stale``, also the items an older version of the task produced."""
        registry = self._registry()
        if registry is None:
            import pandas as pd

            return pd.DataFrame()
        try:
            records = functools.partial(registry.records, include_stale=include_stale)
            return to_dataframe(records, registry.input_columns(), done_only=done_only)
        finally:
            registry.close()

    def failures(self) -> list[ExportRecord]:
        return [record for record in self if record.status == "failed"]
