"""Leaf value types shared by the engine, the scheduler and the steps: what an item used,
the count of its identical steps, and the stop that ends a run.

Kept apart from ``_task`` (the ``Ctx`` facade) so that the modules that use these
values need not import the task layer, which imports them back.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Ahead", "ItemUsage", "Parked", "RunStop", "StepTrail"]


@dataclass(frozen=True)
class Ahead:
    """What a task that answers rows ahead of the scheduler (``Task.answer_ahead``: a prompt
    task through a Batch API) leaves for the run: the item keys whose answers are not in
    (in open batches, or not submitted), and why the run stops short, if it must."""

    waiting: frozenset[str] = frozenset()
    stop: str | None = None  # a budget refusal: the run ends budget_reached
    # Items that parked at a step that can wait and whose answers are in now (or whose
    # batches gave up on them): the run runs them again (``Task.answer_parked``).
    ready: frozenset[str] = frozenset()
    batches: int = 0  # batches submitted by this run
    open_batches: int = 0  # batches still open at the provider


@dataclass
class ItemUsage:
    """What one item's provider calls used, over all its attempts."""

    calls: int = 0
    cached: int = 0  # answers found in the call cache: not paid again
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    step_seconds: float = 0.0  # time inside its ctx.llm and ctx.call steps, waits included


@dataclass
class StepTrail:
    """One item attempt's count of identical steps: the n-th identical step of a replay
    gets the n-th one's journal key, so a loop that asks the same twice gets two answers
    and a replay gets them back in order."""

    seen: collections.Counter[str] = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_key(self, signature: str) -> str:
        with self.lock:  # sync sub-items may ask from several threads at once
            occurrence = self.seen[signature]
            self.seen[signature] += 1
        text = f"rowpilot-step-1\0{signature}\0{occurrence}"
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()


class RunStop(BaseException):
    """Raised by a task to end the run without recording the item (it stays pending).

    The LLM layer raises it when the budget cannot cover another call. A BaseException,
    like ``asyncio.CancelledError``: a task's own ``except Exception`` must not swallow
    the stop and carry on spending.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        # A stop raised in a worker process crosses back to the driver as itself.
        return (type(self), (self.reason, str(self)))


class Parked(BaseException):
    """Raised by a ``ctx.llm(..., can_wait=True)`` step under ``--batch-api`` whose answer
    is not journaled yet: its request went to the batch pass, and the item ends this pass
    without an outcome (neither done nor failed). It runs again once the answer is
    journaled, its earlier steps replaying from the journal.

    A BaseException, like ``RunStop``: a task's own ``except Exception`` must not take the
    wait for a failure and carry on without the answer."""

    def __init__(self, key: str) -> None:
        super().__init__(f"item {key!r} waits for a batch answer")
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        # A park raised on the driver crosses to a worker process and back as itself.
        return (type(self), (self.key,))
