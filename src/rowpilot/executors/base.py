"""The Executor seam: where a task's calls run.

The scheduler decides *what* runs and *when* (admission, retries, commits); an executor
only runs a call and hands back its outcome: the value, or the task's own exception, or
``CallTimeout``. It never writes state, so an executor that loses a call (a dead process,
a lost node) costs a retry, never a wrong row.

``ctx`` steps never cross into an executor's workers on their own: ``Ctx`` talks to a
``StepRunner``. In this process that is the run's ``Steps``; an executor whose workers
are other processes gives each call a ``Ctx`` whose runner forwards every step to the
run's ``Steps`` in the parent, so the limits, the budget and the journal stay one per run
(docs/architecture.md, "Steps across a process boundary").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rowpilot.tasks.base import Task
    from rowpilot.tasks.ctx import Ctx


@dataclass(frozen=True)
class Ran:
    """A call that returned: its value, and the CPU seconds its thread spent (0.0 where
    it ran on the event loop), which tell CPU-bound work from waiting work. ``seconds`` is
    how long it ran where it ran, when that is not this process (a worker's own clock:
    the driver's would count the call's wait in the worker's queue too)."""

    value: Any
    cpu_seconds: float = 0.0
    seconds: float | None = None


class Executor(Protocol):
    """Runs a task's calls; raises the task's exception, or ``CallTimeout`` past
    ``timeout`` seconds counted from when the call starts (not while it waits)."""

    async def submit(
        self, task: Task, row: dict[str, Any], ctx: Ctx, *, timeout: float | None
    ) -> Ran: ...

    async def submit_group(
        self, task: Task, rows: list[dict[str, Any]], encode: Callable[[list[Any]], list[Any]]
    ) -> Ran:
        """``task.batch_call(rows)``, its outputs encoded by ``encode`` (the group's list
        at once) where it ran: a ``Ran`` whose value is the list of encoded outputs.
        ``encode`` pickles, for executors whose workers are other processes."""
        ...

    @property
    def exhausted(self) -> bool:
        """Calls stuck past their timeout hold every worker: nothing more can start."""
        ...

    @property
    def stuck(self) -> int:
        """Calls written off past their timeout and still running."""
        ...

    @property
    def capacity(self) -> int:
        """Rows it can hold at once and keep every worker busy: the scheduler's --workers
        for an executor of worker processes."""
        ...

    @property
    def parallel(self) -> int:
        """The most calls that run at the same time."""
        ...

    @property
    def name(self) -> str:
        """What the summary calls it: "threads", "2 processes", "4 Ray actors"."""
        ...

    def close(self) -> None: ...
