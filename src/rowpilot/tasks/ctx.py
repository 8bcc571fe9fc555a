"""``ctx``: a task's handle on the run, and the ``StepRunner`` seam behind its steps.

``Ctx`` is a plain value (run, key, row, attempt, logger, usage) plus a ``StepRunner``:
every step a task takes (``ctx.llm``, ``ctx.call``, ``ctx.map``, ``ctx.log``) is handed
to the runner, which owns the limits, the budget and the journal. ``Ctx`` holds no event
loop, lock or engine object of its own, so a task that runs in another process gets a
``Ctx`` whose runner forwards each step to the run's own runner in the parent (see
docs/architecture.md, "Steps across a process boundary"): limits, budget and journal
stay one per run whatever executor runs the task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from rowpilot.tasks.values import ItemUsage, StepTrail

T = TypeVar("T")


class StepRunner(Protocol):
    """What ``ctx`` asks of the run: the one path for a task's paid and logged steps."""

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
    ) -> Any: ...

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
    ) -> Any: ...

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
        """``call`` for a function that runs elsewhere (a worker process): ``invoke``
        runs it once the permit and the budget are held here."""
        ...

    async def map(
        self,
        subitems: Iterable[Any],
        fn: Callable[..., Any],
        ctx: Any,
        *,
        workers: int | None,
        return_exceptions: bool,
    ) -> list[Any]: ...

    def log(self, kind: str, record: dict[str, Any]) -> None: ...

    def blocking(self, step: Coroutine[Any, Any, T]) -> T:
        """Run ``step`` for a sync task's thread and wait for its result."""
        ...


@dataclass(frozen=True)
class Ctx:
    """The task's handle on the engine: which run and item it is working on, a logger, and
    the steps a multi-step task takes through the engine.

    In an async task, ``await ctx.llm(...)``, ``await ctx.call(...)`` and
    ``await ctx.map(...)``; in a sync task, ``ctx.llm_sync(...)``, ``ctx.call_sync(...)``
    and ``ctx.map_sync(...)`` do the same and wait. Each step is limited, retried, priced
    and journaled before it returns, so a resumed or retried item replays its answered
    steps instead of paying for them again (see ``rowpilot.tasks.steps``).
    """

    run_id: str
    key: str
    row: int
    attempt: int
    logger: logging.Logger
    usage: ItemUsage = field(default_factory=ItemUsage)
    steps: StepRunner | None = field(default=None, repr=False, compare=False)
    trail: StepTrail | None = field(default=None, repr=False, compare=False)

    # -- async ------------------------------------------------------------------------

    async def llm(
        self,
        prompt: str | Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        schema: Any = None,
        system: str | None = None,
        max_tokens: int | None = None,
        cache: bool = True,
        can_wait: bool = False,
        **params: Any,
    ) -> Any:
        """Ask an LLM; return its text, or with ``schema`` (a pydantic model or a JSON
        Schema) the validated instance or dict. ``model`` defaults to the job's
        ``--model``; ``params`` (temperature, ...) go to the provider.

        ``can_wait=True``: under ``--batch-api`` the step may be answered through the
        provider's Batch API (half price, within 24 hours). An item that reaches such a
        step before its answer is journaled stops there, neither done nor failed, and
        runs again from the top once the batch has answered (its earlier steps replay
        from the journal); without ``--batch-api`` (or with ``cache=False``) the step is
        asked online as any other (docs/batch.md, "ctx.llm steps that can wait")."""
        steps, trail = self._steps()
        return await steps.llm(
            self.usage,
            trail,
            self.key,
            prompt,
            model=model,
            schema=schema,
            system=system,
            max_tokens=max_tokens,
            cache=cache,
            params=params,
            can_wait=can_wait,
        )

    async def call(
        self,
        resource: str,
        fn: Callable[..., Any],
        *args: Any,
        cost: float | Callable[[Any], float] | None = None,
        max_cost: float | None = None,
        journal: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Call ``fn(*args, **kwargs)`` under ``resource``'s limits and retry policy
        (``[limits.NAME]``). ``cost`` (USD) counts against the budget: a number is reserved
        before the call; a function of the result needs ``max_cost``, which is reserved
        before the call and settled with what the function says after it. With
        ``journal`` (the default) the arguments and the result must be JSON values; the
        result is returned as its JSON round trip."""
        steps, trail = self._steps()
        return await steps.call(
            self.usage,
            trail,
            resource,
            fn,
            args,
            kwargs,
            cost=cost,
            max_cost=max_cost,
            journal=journal,
        )

    async def map(
        self,
        subitems: Iterable[Any],
        fn: Callable[..., Any],
        *,
        workers: int | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """``fn(subitem)`` or ``fn(subitem, ctx)`` for each sub-item, at most ``workers``
        at once and within the run's ``--workers``; results in order. A failed sub-item
        raises ``SubItemError`` naming each failure (or, with ``return_exceptions``, its
        exception is put in its place)."""
        steps, _ = self._steps()
        return await steps.map(
            subitems, fn, self, workers=workers, return_exceptions=return_exceptions
        )

    def log(self, kind: str, **data: Any) -> None:
        """Append ``data`` to the run's ``<kind>.jsonl`` log (e.g. review verdicts)."""
        steps, _ = self._steps()
        record = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "run_id": self.run_id,
            "key": self.key,
            "attempt": self.attempt,
            "kind": kind,
            **data,
        }
        steps.log(kind, record)

    # -- sync: for sync tasks, which run in threads -----------------------------------

    def llm_sync(
        self,
        prompt: str | Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        schema: Any = None,
        system: str | None = None,
        max_tokens: int | None = None,
        cache: bool = True,
        can_wait: bool = False,
        **params: Any,
    ) -> Any:
        """``ctx.llm`` for a sync task."""
        steps = self._steps()[0]
        call = self.llm(
            prompt,
            model=model,
            schema=schema,
            system=system,
            max_tokens=max_tokens,
            cache=cache,
            can_wait=can_wait,
            **params,
        )
        return steps.blocking(call)

    def call_sync(
        self,
        resource: str,
        fn: Callable[..., Any],
        *args: Any,
        cost: float | Callable[[Any], float] | None = None,
        max_cost: float | None = None,
        journal: bool = True,
        **kwargs: Any,
    ) -> Any:
        """``ctx.call`` for a sync task (``fn`` runs in a worker thread)."""
        steps = self._steps()[0]
        call = self.call(
            resource, fn, *args, cost=cost, max_cost=max_cost, journal=journal, **kwargs
        )
        return steps.blocking(call)

    def map_sync(
        self,
        subitems: Iterable[Any],
        fn: Callable[..., Any],
        *,
        workers: int | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """``ctx.map`` for a sync task."""
        steps = self._steps()[0]
        call = self.map(subitems, fn, workers=workers, return_exceptions=return_exceptions)
        result: list[Any] = steps.blocking(call)
        return result

    def _steps(self) -> tuple[StepRunner, StepTrail]:
        if self.steps is None or self.trail is None:
            raise RuntimeError("ctx.llm, ctx.call, ctx.map and ctx.log work inside a rowpilot run")
        return self.steps, self.trail


def run_blocking(loop: asyncio.AbstractEventLoop, step: Coroutine[Any, Any, T]) -> T:
    """A step from a sync task's thread: run on the run's loop, wait here."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:  # waiting here would block the loop the step needs
        step.close()
        raise RuntimeError(
            "the *_sync ctx methods are for sync tasks; in an async task, await ctx.llm(...)"
        )
    return asyncio.run_coroutine_threadsafe(step, loop).result()
