"""``ctx.llm`` steps that can wait (``ctx.llm(..., can_wait=True)`` under ``--batch-api``):
their requests through the provider's Batch API (docs/batch.md, "ctx.llm steps that can
wait").

A Python task's requests are known only as its items run (a step's prompt may be built
from earlier answers), so they cannot be answered ahead of the scheduler as a prompt
task's rows are. Instead the run goes in passes:

* **park**: an item that reaches a can-wait step whose answer is not journaled hands the
  request (its call key, body, model) to ``StepBatches.park`` and stops with ``Parked``:
  it is neither done nor failed, and its window slot goes to the next item. Items whose
  steps cannot wait go on online meanwhile.
* **submit and wait**: after the pass, each model's requests go through that model's
  ``StepBatchRun`` (``rowpilot.llm.batch.BatchRun``: the same ledger, intent before the
  create, the id right after, found again after a kill, the budget reserved at batch
  prices, errors retried in later batches); unless ``--detach``, until every batch ended.
  A step's request is never packed with another: it carries one row, its item, whose row
  key is the step's key, so the ledger reserves it as it reserves a prompt task's row.
* **run again**: the parked items run again from the top; their earlier steps replay from
  the journal (nothing paid twice) and the can-wait step finds its answer, so the item
  goes on to its next step (which may park it again) or finishes.

A batch answer is journaled as the step's call (``calls``); the step's own schema reads it
when its item runs again (``LLMSession.journaled_step``), which journals the step's
answer then: the collecting run may not know the schema (a ``--detach`` run collects
before any item runs). An answer that is invalid or cut gets the online path's repairs.

Before a run's first pass, the batches earlier runs left open are looked at once (the
ended ones collected) and the items still waiting in them are kept out of the pass; they
are waited for with the pass's own batches.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rowpilot.llm.batch import BatchRun, _Ask, _Row
from rowpilot.llm.batch_client import request_body
from rowpilot.llm.cost import worst_case_cost
from rowpilot.llm.tokens import upper_bound_tokens
from rowpilot.state.batches import LEDGER_FILE, BatchLedger, BatchMember
from rowpilot.state.registry import RowAnswer
from rowpilot.tasks.values import Ahead, Parked

if TYPE_CHECKING:
    from rowpilot.llm.prompt import Request
    from rowpilot.llm.providers import Completion
    from rowpilot.llm.session import LLMSession

__all__ = ["StepBatchRun", "StepBatches"]

_LINE_OVERHEAD = 200  # bytes of a batch line beyond its body: custom_id, method, url


class StepBatchRun(BatchRun):
    """One model's batch pass for steps: answers are journaled as calls only, since each
    step's schema is known where the step runs (see the module docstring)."""

    def _row_answers(
        self,
        call_key: str,
        carried: Sequence[BatchMember],
        texts: Sequence[str],
        completion: Completion,
        cost: float,
    ) -> list[RowAnswer]:
        return []

    def _read_back(self, answers: Sequence[RowAnswer]) -> int:
        return 1  # the step reads the call itself, once


class StepBatches:
    """The run's can-wait requests, by model, and the batch passes that answer them."""

    def __init__(self, state: Path, session_for: Callable[[str], LLMSession]) -> None:
        self._state = state
        self._session_for = session_for  # a model's step session (made on first use)
        self._runs: dict[str, StepBatchRun] = {}
        self._ledgers: dict[tuple[str, str] | None, BatchLedger] = {}  # by model; None: all
        self._asks: dict[str, dict[str, _Ask]] = {}  # model -> call key -> request
        self._parked: set[str] = set()  # items parked in the pass going on
        self._kept_out: set[str] = set()  # items waiting in batches of earlier runs
        self.exhausted: dict[str, str] = {}  # item key -> why no batch answered its step

    def close(self) -> None:
        for ledger in self._ledgers.values():
            ledger.close()
        self._ledgers.clear()

    def park(
        self,
        session: LLMSession,
        request: Request,
        *,
        item_key: str,
        step_key: str,
        call_key: str,
        max_tokens: int,
        params: Mapping[str, Any],
    ) -> Parked:
        """Hold the step's request for the next submission; the ``Parked`` to raise."""
        run = self._run(session)
        body = request_body(
            session.provider.kind,
            session.model,
            request.messages,
            system=request.system,
            max_tokens=max_tokens,
            json_schema=request.json_schema,
            params=params,
        )
        worst = worst_case_cost(run.price, upper_bound_tokens(request.texts()), max_tokens)
        size = len(json.dumps(body)) + _LINE_OVERHEAD
        asks = self._asks.setdefault(session.spec.model, {})
        # One row, keyed by the step's key (its answer's key): reserved by it in the ledger
        row = _Row([item_key], "\n".join(request.texts()), step_key)
        asks[call_key] = _Ask([row], call_key, body, worst, size)
        self._parked.add(item_key)
        return Parked(item_key)

    async def look(self) -> Ahead:
        """Before the first pass: earlier runs' batches looked at once (the ended ones
        collected); the items still waiting in open ones, kept out of the pass."""
        if not (self._state / LEDGER_FILE).exists():
            return Ahead()  # no batch yet: the ledger is made with the first
        ledger = self._ledger(None)
        for provider, model in sorted(ledger.unfinished_models()):
            self._run(self._session_for(f"{provider}/{model}"))
        for run in self._runs.values():
            await run.run_asks([], wait=False)
        self._kept_out = ledger.waiting_items()
        return Ahead(waiting=frozenset(self._kept_out))

    async def answer_parked(self) -> Ahead | None:
        """After a pass: its parked requests submitted and, unless detached, waited for
        with every open batch. ``ready``: the items to run again now; ``waiting``: those
        still in open batches (or kept back by the budget). None: nothing parked."""
        waited = self._parked | self._kept_out
        if not waited:
            return None
        asks, self._asks = self._asks, {}
        self._parked, self._kept_out = set(), set()
        ends = await asyncio.gather(
            *(run.run_asks(list(asks.get(model, {}).values())) for model, run in self._runs.items())
        )
        # Items kept out wait in batches of earlier runs, which may still be open (detached)
        still = waited & self._ledger(None).waiting_items()
        waiting = frozenset(still).union(*(end.waiting for end in ends))
        for run in self._runs.values():
            self.exhausted.update(run.exhausted)
        return Ahead(
            waiting=waiting,
            stop=next((end.stop for end in ends if end.stop is not None), None),
            batches=sum(end.batches for end in ends),
            open_batches=sum(end.open_batches for end in ends),
            ready=frozenset(waited - waiting),
        )

    def _run(self, session: LLMSession) -> StepBatchRun:
        model = session.spec.model
        run = self._runs.get(model)
        if run is None:
            ledger = self._ledger((session.provider.name, session.model))
            run = StepBatchRun(session, ledger, rounds=session.spec.batch_rounds)
            self._runs[model] = run
        return run

    def _ledger(self, only: tuple[str, str] | None) -> BatchLedger:
        found = self._ledgers.get(only)
        if found is None:
            found = self._ledgers[only] = BatchLedger(self._state, only)
        return found
