"""The Task seam: what the engine knows of a task, whatever its kind.

Every kind (a Python function, a prompt, the local model's embed and label) implements
``Task``; the engine, ``doctor`` and ``estimate`` talk to this interface only. They never
ask which kind a task is, never read its attributes by name, and never set anything on
it: a task wires itself to a run in ``open`` and lets go in ``close``.

The life of a task in a run:

1. ``check_columns(columns)`` and ``output_fields``, before anything is touched: a column
   the task reads is missing, or an output would overwrite an input;
2. ``await preflight()``, before the state is locked: a bad key or model fails once here;
3. ``await open(scope)``: the run exists (registry, counters, log, worker slots); the
   task's sessions attach to it, and the ``StepRunner`` its ``ctx`` uses is returned;
4. ``await answer_ahead(rows, scope)`` with the run's pending rows: a task that answers
   rows ahead (a prompt task through a Batch API) journals their answers, and says which
   rows are still waiting for theirs (the run leaves them pending); the others return None;
5. ``call(row, ctx)`` per row (an awaitable when ``is_async``), or ``batch_call(rows)``
   per group of ``rows_per_worker`` rows when ``groups_rows``; a call may end ``Parked``
   (a step that can wait handed its request to a Batch API): the item is left pending;
5b. ``await answer_parked(scope)`` after each pass of the scheduler: a task whose items
   parked submits their requests and (unless detached) waits for the answers, and says
   which items to run again now (``Ahead.ready``) and which still wait; None: no item
   parked, the run is over;
6. ``await close()``: sessions closed; what they learned (``resource_limits``,
   ``waited_seconds``) stays readable for the summary and ``estimate``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rowpilot.errors import ConfigError

if TYPE_CHECKING:
    from rowpilot._projection import Estimate
    from rowpilot.engine.events import EventLog
    from rowpilot.engine.progress import Counters
    from rowpilot.engine.sizing import Rates, TaskKind
    from rowpilot.engine.slots import Slots
    from rowpilot.llm.limits import Limits
    from rowpilot.state.registry import Registry
    from rowpilot.tasks.ctx import Ctx, StepRunner
    from rowpilot.tasks.values import Ahead


@dataclass(frozen=True)
class RunScope:
    """What a task's sessions need of the run they take part in."""

    registry: Registry
    counters: Counters
    events: EventLog
    run_id: str
    workers: Slots  # the run's worker slots: ctx.map sub-items take theirs from here


class Task(ABC):
    """One kind of work over rows. Subclasses set ``name``, ``version`` and ``is_async``
    and implement ``call``; the rest has defaults a plain function needs."""

    name: str
    version: str
    is_async: bool = False
    groups_rows: bool = False  # the engine calls batch_call on groups of rows
    rows_per_worker: int = 1  # rows one worker carries (a group, or an LLM batch)
    # Groups in flight beyond the workers' (grouped tasks): a task that computes one group
    # at a time anyway (a lock) has the next one waiting at the lock, not on the event loop.
    groups_ahead: int = 0
    sizing: TaskKind = "sync"  # how --workers auto makes its first guess
    output_fields: tuple[str, ...] | None = None  # known before the first answer, if at all
    vector_field: str | None = None  # the output a vector store takes, if the task makes one
    # Its calls may run in another process (--executor process|ray): it pickles without
    # the run's sessions. A task whose calls are the driver's own HTTP sessions is not.
    portable: bool = False

    @abstractmethod
    def call(self, row: dict[str, Any], ctx: Ctx) -> Any:
        """The task on one row: its output (or, when ``is_async``, an awaitable of it)."""

    def batch_call(self, rows: list[dict[str, Any]]) -> list[Any]:
        """The task on a group of rows, one output per row (when ``groups_rows``)."""
        return [self.call(row, _NO_CTX) for row in rows]

    def describe(self) -> str:
        """One line for ``doctor``: what this task is."""
        return self.name

    async def answer_ahead(
        self, rows: Iterable[tuple[str, dict[str, Any]]], scope: RunScope
    ) -> Ahead | None:
        """Answer the run's pending rows (item key, row) before the scheduler runs them,
        journaling each answer so that the row's ``call`` finds it (a prompt task through
        a Batch API); what is left for the run. None: the task answers rows as they come."""
        return None

    async def answer_parked(self, scope: RunScope) -> Ahead | None:
        """After a pass of the scheduler: the requests of the items that parked at a step
        that can wait, answered (or, detached, submitted); the items to run again
        (``ready``) and those still waiting. None: nothing parked."""
        return None

    def choices(self) -> dict[str, str]:
        """Settings the task chose itself (not given), by name: the value and why, one
        line each for ``doctor`` (a prompt task's max_tokens)."""
        return {}

    def check_columns(self, columns: Sequence[str]) -> None:
        """Raise a user error naming the column if the source lacks one the task reads."""
        return None  # a hook: by default, nothing to do

    def limits(self) -> Limits | None:
        """The provider limits given for the task's calls, when known before the run: the
        whole account's (a shard paces at its share of them)."""
        return None

    def rates(self) -> Rates | None:
        """The pace the run sees now (for ``--workers auto``), once it has any."""
        return None

    async def preflight(self) -> None:
        """Check keys and models once, before the state is touched."""
        return None  # a hook: by default, nothing to do

    async def open(self, scope: RunScope) -> StepRunner | None:
        """Attach to the run; the runner that ``ctx`` steps go through, if any."""
        return None

    async def close(self) -> None:
        """Let go of the run's sessions."""
        return None  # a hook: by default, nothing to do

    def waited_seconds(self) -> float:
        """Seconds the task's calls waited at rate limits over the run."""
        return 0.0

    def budget_stop(self) -> str | None:
        """Why the budget stopped the run, in the figures of its end (the calls in flight
        at the stop included), or None when the task's budget refused nothing."""
        return None

    def resource_limits(self) -> dict[str, Limits]:
        """The limits each resource the task used ended the run with (learned ones
        included), by model or ``ctx.call`` name: what ``estimate`` projects from."""
        return {}

    def resource_stats(self) -> dict[str, dict[str, Any]]:
        """Each resource's live figures (``Resource.stats``) and the limits in force, by
        model or ``ctx.call`` name: what the run's samples record for the report."""
        return {}

    def check_estimable(self) -> None:
        """Raise a user error if ``estimate`` has nothing to project for this task."""
        raise ConfigError(
            f"the {self.describe()} task makes no provider calls to estimate",
            hint="estimates are for prompt jobs and Python tasks that call providers",
        )

    def project(self, state: Path, total: int, *, workers: int) -> Estimate:
        """The rest of the job's cost and time, from what its state says so far."""
        self.check_estimable()
        raise NotImplementedError


_NO_CTX: Any = None  # grouped tasks never take a ctx
