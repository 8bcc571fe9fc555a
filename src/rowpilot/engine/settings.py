"""How a run schedules its items (``RunSettings``) and how it ended (``RunEnd``): values the
engine builds from a job's settings and the scheduler reads."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rowpilot.engine.retry import RetryPolicy
from rowpilot.engine.sizing import AutoWorkers

if TYPE_CHECKING:
    from rowpilot.state.registry import PriorState


@dataclass(frozen=True)
class RunSettings:
    """How a run schedules its items."""

    workers: int = 8
    timeout: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    force_before: float | None = None  # redo items finished before this time (--force)
    retry_failed: bool = False
    grace: float = 30.0
    flush_interval: float = 0.05
    group: int = 1  # rows per call of a task's batch_call (workers counts rows, not calls)
    auto: AutoWorkers | None = None  # --workers auto: ``workers`` is where it starts
    max_memory: float | None = None  # MB of resident memory above which admission waits
    # Names no output field may take (input columns, the key column among them), and why.
    reserved: Mapping[str, str] = field(default_factory=dict)
    output_prefix: str = ""  # put before every output field name (--output-prefix)
    keep_going: bool = False  # no early stop when the first items all fail alike

    def runs_again(self, fingerprint: str, prior: PriorState | None) -> bool:
        """Whether an item (its fingerprint now, its record before) is to run in this run."""
        if prior is None or prior.fingerprint != fingerprint:
            return True
        if self.force_before is not None and prior.finished_at < self.force_before:
            return True
        return prior.status == "failed" and self.retry_failed

    @property
    def window(self) -> int:
        return self.window_of(self.workers)

    def window_of(self, workers: int) -> int:
        # Grouped rows get four groups' worth, so one group can be read, one computed and
        # one committed at the same time.
        return (2 if self.group == 1 else 4) * workers

    @property
    def most_workers(self) -> int:
        """Rows that may ever run at once (the thread pool's size)."""
        return self.workers if self.auto is None else self.auto.ceiling * self.group


class RunEnd(enum.Enum):
    COMPLETED = "completed"
    INTERRUPTED = "interrupted"
    BUDGET = "budget_reached"
    ABORTED = "aborted"
    WAITING = "waiting"  # rows wait for answers from open batches (--batch-api --detach)
