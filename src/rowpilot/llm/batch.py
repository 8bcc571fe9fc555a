"""A prompt task's rows through the provider's Batch API (``--batch-api``; docs/batch.md).

``BatchRun`` answers a run's pending rows *ahead* of the scheduler: it journals every
batch answer in the registry exactly as an online answer is journaled (the row's call key,
a ``calls`` row per request and an ``answers`` row per valid answer), so the scheduler's
pass that follows finds each answer in the call cache and commits the row without a call;
``--force``, exports and the spending figures see no difference. Its rules:

* **one request per row**, the very request an online single-row call sends (same body,
  same call key); rows whose request is journaled already (answered before, in any mode)
  are not asked. ``--batch-size`` does not pack rows into batch requests.
* **exactly once**: before a batch is created, the ledger (``state/batches.py``) records
  the intent: its content hash, its worst case and every row's ``custom_id``
  (``INTENT-CALLKEY``); right after, the provider's batch id. A run killed in between
  finds the batch again (``BatchClient.find``): OpenAI by the ``rowpilot_intent``
  metadata; Anthropic, which keeps no metadata, by listing the batches created since the
  intent and reading one result of each ended one (the custom_id's prefix is the intent);
  until every such candidate has ended, the intent's rows stay reserved and are never
  sent again. An intent found nowhere is ``lost`` and its rows are free again. A resumed
  run looks at the batches it recorded before it submits anything.
* **files within the limits**: rows are packed, in order, into as few batches as each
  provider's limits allow (requests and bytes: ``batch_client.LIMITS``;
  ``ROWPILOT_BATCH_MAX_REQUESTS`` lowers the count, for rehearsals against a simulator).
* **budget**: a batch's worst case (every row's prompt bound and max_tokens at the batch
  price, ``find_price(batch=True)``) is reserved before it is submitted and settled at
  its real cost when it is collected; rows that do not fit are not submitted and the run
  ends ``budget_reached`` with them pending. A batch collected by a later run than the one
  that submitted it counts its cost in the collecting run's spending.
* **partial results**: a row a batch answered with an error, filtered, or left unanswered
  (expired, cancelled) goes into a later batch, up to the run's ``max_attempts`` batches;
  with ``--batch-fallback online`` it is asked online instead (after one batch). A row
  still without an answer fails with a server error. An answer that is invalid or cut
  is journaled as it came and gets the online path's rules in the scheduler's pass:
  repairs and the retry at twice max_tokens are **online** calls.
* **provider errors**: a retryable one (5xx, timeout) while creating, looking or reading
  is tried again at the next look, up to ``TRANSIENT_FAILURES`` rounds in a row; any
  other ends the run (the batches stay recorded for the next).
* **steps**: a Python task's can-wait ``ctx.llm`` steps are submitted and waited for
  through ``run_asks`` by ``rowpilot.llm.step_batches`` (a ``BatchRun`` per model, whose
  ``_row_answers`` journals the call only: the step's schema reads it).
* **waiting**: the run looks at its open batches every ``batch_poll`` seconds (through
  ``sleep``, which tests replace with the simulator's batch clock); with ``--detach`` it
  submits, collects what has ended, and returns: the rows in open batches are ``waiting``.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from rowpilot.engine.items import encode_output
from rowpilot.errors import ProviderError
from rowpilot.llm.batch_client import BatchClient, RowResult, request_body
from rowpilot.llm.cost import Reservation, cost_usd, find_price, worst_case_cost
from rowpilot.llm.prompt import parse_single, single_request
from rowpilot.llm.schema import OutputValidationError
from rowpilot.llm.tokens import upper_bound_tokens
from rowpilot.state.batches import BatchLedger, BatchRecord, BatchRow
from rowpilot.state.registry import CallRecord, RowAnswer
from rowpilot.tasks.values import Ahead

if TYPE_CHECKING:
    from rowpilot.engine.progress import Counters
    from rowpilot.llm.cost import Budget
    from rowpilot.llm.providers import ChatClient, ProviderSpec
    from rowpilot.llm.spec import PromptSpec
    from rowpilot.state.registry import Registry

__all__ = ["MAX_REQUESTS_ENV", "BatchRun", "BatchSession", "pack", "poll_sleep"]

MAX_REQUESTS_ENV = "ROWPILOT_BATCH_MAX_REQUESTS"
_LOOKUP = 500
TRANSIENT_FAILURES = 5  # retryable failures in a row the batch pass rides out
_BODY_OVERHEAD = 1024  # bytes of a batch beyond its lines (brackets, the create's own keys)


async def poll_sleep(seconds: float) -> None:
    """The wait between looks at open batches: the clock tests replace (the simulator's
    batch clock moved instead of waiting)."""
    await asyncio.sleep(seconds)


async def _poll_wait(seconds: float) -> None:
    await poll_sleep(seconds)  # looked up at each wait, so that a test's clock is the one


@dataclass
class _Ask:
    """One request to send: the item keys it answers (identical rows share it)."""

    keys: list[str]
    row_key: str
    call_key: str
    body: dict[str, Any]
    worst: float
    size: int


@dataclass
class _Progress:
    submitted: int = 0
    collected: int = 0


def pack(sizes: Sequence[int], max_requests: int, max_bytes: int) -> list[int]:
    """How many of the requests (of ``sizes`` bytes, in order) each batch takes: in order,
    each batch as full as ``max_requests`` and ``max_bytes`` (less ``_BODY_OVERHEAD``)
    allow, so the fewest batches that keep the order. A request larger than the whole
    limit goes alone (and the provider refuses it)."""
    counts: list[int] = []
    size = count = 0
    for request in sizes:
        if count and (count >= max_requests or _BODY_OVERHEAD + size + request > max_bytes):
            counts.append(count)
            size = count = 0
        size += request
        count += 1
    return [*counts, count] if count else counts


def _within(asks: Sequence[_Ask], left: float | None) -> Sequence[_Ask]:
    """The first of ``asks`` whose worst cases fit in ``left`` USD (None: no limit)."""
    if left is None:
        return asks
    total = 0.0
    for count, ask in enumerate(asks):
        total += ask.worst
        if total > left:
            return asks[:count]
    return asks


class BatchSession(Protocol):
    """What the batch pass needs of the prompt task's session (``LLMSession``)."""

    spec: PromptSpec
    provider: ProviderSpec
    model: str
    client: ChatClient
    budget: Budget

    @property
    def registry(self) -> Registry: ...
    @property
    def counters(self) -> Counters: ...
    @property
    def run_id(self) -> str: ...
    def emit(self, event: str, **fields: Any) -> None: ...
    def batch_row_key(self, text: str) -> str: ...
    def batch_max_tokens(self) -> int: ...


class BatchRun:
    """One run's batch pass over its pending rows (see the module docstring)."""

    def __init__(
        self,
        session: BatchSession,
        ledger: BatchLedger,
        *,
        rounds: int,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        spec = session.spec
        self.session = session
        self.ledger = ledger
        self.client = BatchClient(session.client)
        self.price = find_price(session.provider.name, session.model, spec.prices, batch=True)
        self.rounds = 1 if spec.batch_fallback == "online" else max(1, rounds)
        self.sleep = sleep or _poll_wait
        self.clock = clock
        requests, size = self.client.limits
        lower = spec.environ.get(MAX_REQUESTS_ENV)
        self.max_requests = min(requests, int(lower)) if lower else requests
        self.max_bytes = size
        self.exhausted: dict[str, str] = {}  # item key -> why it has no batch answer
        self._answered: set[str] = set()  # call keys journaled in this run
        self._tries: collections.Counter[str] = collections.Counter()
        self._why: dict[str, str] = {}
        self._held: dict[str, Reservation] = {}
        self._progress = _Progress()
        self._failures = 0  # transient failures in a row (see _passing)

    async def run(self, rows: Iterable[tuple[str, dict[str, Any]]]) -> Ahead:
        """Answer ``rows`` (item key, row) through batches; what is left for the run."""
        return await self.run_asks(self._asks(rows))

    async def run_asks(self, asks: dict[str, _Ask], *, wait: bool = True) -> Ahead:
        """Submit ``asks`` (by call key) and follow the recorded batches until none is open
        (one look when detached or not ``wait``); what is left for the run."""
        stop: str | None = None
        detach = self.session.spec.detach or not wait
        while True:
            await self._settle_unfinished()
            free = self._free(asks)
            if free and stop is None:
                stop = await self._submit(free)
            self._show(asks)
            to_send = stop is None and bool(self._free(asks))  # a create that failed
            if detach or not (self.ledger.unfinished() or to_send):
                break
            await self.sleep(self.session.spec.batch_poll)
        return self._left(asks, stop)

    def _passing(self, error: ProviderError, doing: str) -> None:
        """A retryable failure (a 5xx, a timeout, a dropped connection) of a look, a read or
        a create is tried again at the next look: the batches stay recorded. Past
        ``TRANSIENT_FAILURES`` in a row, or any other failure, ends the run."""
        self._failures += 1
        if not error.retryable or self._failures > TRANSIENT_FAILURES:
            raise error
        self.session.emit("batch.retry", doing=doing, error=str(error), failures=self._failures)

    def _show(self, asks: dict[str, _Ask]) -> None:
        """The batches and their rows, for the progress view."""
        answered = sum(len(ask.keys) for key, ask in asks.items() if key in self._answered)
        rows = sum(len(ask.keys) for ask in asks.values())
        progress = self._progress
        self.session.counters.batches = (
            f"batches {len(self.ledger.unfinished())} open, {progress.collected} collected; "
            f"rows {answered:,}/{rows:,} answered"
        )

    # -- what to ask ------------------------------------------------------------------

    def _asks(self, rows: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, _Ask]:
        """The requests the rows need, by call key: rows answered before are left out."""
        asks: dict[str, _Ask] = {}
        chunk: list[tuple[str, str, str]] = []
        for key, fields in rows:
            text = self.session.spec.template.render(fields)
            chunk.append((key, text, self.session.batch_row_key(text)))
            if len(chunk) >= _LOOKUP:
                self._add_asks(chunk, asks)
                chunk = []
        self._add_asks(chunk, asks)
        return asks

    def _add_asks(self, chunk: list[tuple[str, str, str]], asks: dict[str, _Ask]) -> None:
        registry = self.session.registry
        cached = registry.cached_answers([row_key for _, _, row_key in chunk])
        spec = self.session.spec
        max_tokens = self.session.batch_max_tokens()
        for key, text, row_key in chunk:
            if row_key in cached:
                continue
            request = single_request(
                spec.system, text, spec.schema, key=key, structured=spec.structured
            )
            call_key = request.cache_key(
                self.session.provider.name, self.session.model, spec.params, max_tokens
            )
            if call_key in asks:
                asks[call_key].keys.append(key)
                continue
            if registry.cached_call(call_key) is not None:
                continue  # answered invalid or cut: the run's online path repairs it
            body = request_body(
                self.session.provider.kind,
                self.session.model,
                request.messages,
                system=request.system,
                max_tokens=max_tokens,
                json_schema=request.json_schema,
                params=spec.params,
            )
            worst = worst_case_cost(self.price, upper_bound_tokens(request.texts()), max_tokens)
            size = len(json.dumps(body)) + 200  # the line's custom_id, method and url
            asks[call_key] = _Ask([key], row_key, call_key, body, worst, size)

    def _free(self, asks: dict[str, _Ask]) -> list[_Ask]:
        """Requests to submit now: not answered, not in a batch, tries left."""
        waiting = [ask for key, ask in asks.items() if key not in self._answered]
        reserved = self.ledger.reserved([ask.call_key for ask in waiting])
        return [
            ask
            for ask in waiting
            if ask.call_key not in reserved and self._tries[ask.call_key] < self.rounds
        ]

    def _left(self, asks: dict[str, _Ask], stop: str | None) -> Ahead:
        unanswered = [ask for key, ask in asks.items() if key not in self._answered]
        reserved = self.ledger.reserved([ask.call_key for ask in unanswered])
        waiting: set[str] = set()
        for ask in unanswered:
            if ask.call_key in reserved or self._tries[ask.call_key] < self.rounds:
                waiting.update(ask.keys)  # in a batch, or not submitted (the budget)
            else:
                why = self._why.get(ask.call_key, "no answer")
                self.exhausted.update(dict.fromkeys(ask.keys, why))
        return Ahead(
            waiting=frozenset(waiting),
            stop=stop,
            batches=self._progress.submitted,
            open_batches=len(self.ledger.unfinished()),
        )

    # -- submitting -------------------------------------------------------------------

    async def _submit(self, free: list[_Ask]) -> str | None:
        """Submit ``free`` in as few batches as the limits allow; a budget refusal's line."""
        budget = self.session.budget
        for part in self._files(free):
            fits = _within(part, budget.remaining)
            worst = sum(ask.worst for ask in fits)
            reservation = budget.reserve(worst) if fits else None
            if reservation is None:
                return budget.refusal(part[0].worst, "a batch of 1 row")
            await self._create(fits, worst, reservation)
            if len(fits) < len(part):
                rest = part[len(fits)]
                return budget.refusal(rest.worst, f"the batch after {len(fits):,} rows")
        return None

    def _files(self, asks: Sequence[_Ask]) -> list[Sequence[_Ask]]:
        counts = pack([ask.size for ask in asks], self.max_requests, self.max_bytes)
        starts = [sum(counts[:index]) for index in range(len(counts))]
        return [asks[start : start + count] for start, count in zip(starts, counts, strict=True)]

    async def _create(self, part: Sequence[_Ask], worst: float, reservation: Reservation) -> None:
        intent = "rp" + uuid.uuid4().hex[:10]
        lines = [(f"{intent}-{ask.call_key}", ask.body) for ask in part]
        content = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines)
        record = BatchRecord(
            intent=intent,
            provider=self.session.provider.name,
            model=self.session.model,
            content_hash=hashlib.blake2b(content.encode(), digest_size=16).hexdigest(),
            intended_at=self.clock(),
            batch_id=None,
            status="intent",
            rows=len(part),
            worst_usd=worst,
            run_id=self.session.run_id,
            ended_at=None,
        )
        rows = [BatchRow(cid, ask.keys[0], ask.row_key, ask.call_key) for cid, ask in zip(
            (cid for cid, _ in lines), part, strict=True)]  # fmt: skip
        self.ledger.record_intent(record, rows)
        self._held[intent] = reservation
        try:
            batch_id = await self.client.create(intent, lines)
        except ProviderError as error:
            if error.status is not None or not error.sent:  # answered, or never sent
                self.ledger.mark(intent, "lost")
                self.session.budget.release(reservation)
            # else its fate is unknown: the next look finds it, or finds it lost
            self._passing(error, "create")
            return
        self._failures = 0
        self.ledger.record_batch_id(intent, batch_id)
        self._progress.submitted += 1
        self.session.emit("batch.submitted", intent=intent, batch=batch_id, rows=len(part))

    # -- waiting and collecting ---------------------------------------------------------

    async def _settle_unfinished(self) -> None:
        """Find the recorded intents' batches, look at the open ones, collect the ended."""
        failed: ProviderError | None = None
        for record in self.ledger.unfinished():
            try:
                await self._follow(record)
            except ProviderError as error:
                if not error.retryable:
                    raise
                failed = error  # the others are still looked at
        if failed is not None:
            self._passing(failed, "look at the open batches")  # once a round
        else:
            self._failures = 0

    async def _follow(self, record: BatchRecord) -> None:
        """One recorded batch: found, looked at, collected if it has ended."""
        batch_id = record.batch_id
        if batch_id is None:
            found = await self.client.find(
                record.intent, record.intended_at, self.ledger.known_ids()
            )
            if found is False:
                self.ledger.mark(record.intent, "lost")
                self._release(record.intent)
                self.session.emit("batch.lost", intent=record.intent)
                return
            if found is True:
                return  # a candidate batch has not ended: its rows stay reserved
            assert isinstance(found, str)
            batch_id = found
            self.ledger.record_batch_id(record.intent, batch_id)
            self.session.emit("batch.found", intent=record.intent, batch=batch_id)
        look = await self.client.look(batch_id)
        if look.done != record.done:
            self.ledger.record_look(record.intent, look.done)
        if look.ended:
            await self._collect(record, batch_id)

    async def _collect(self, record: BatchRecord, batch_id: str) -> None:
        rows = {row.custom_id: row for row in self.ledger.rows_of(record.intent)}
        results = {result.custom_id: result for result in await self.client.results(batch_id)}
        spent = 0.0
        answered = 0
        for custom_id, row in rows.items():
            result = results.get(custom_id, RowResult(custom_id, None, "no result"))
            completion = result.completion
            if completion is None or completion.finish_reason == "content_filter":
                self._tries[row.call_key] += 1
                self._why[row.call_key] = result.error or "refused by the content filter"
                continue
            cost = cost_usd(self.price, completion.input_tokens, completion.output_tokens)
            self._journal(row, completion.text, completion.finish_reason, cost, completion)
            spent += cost
            answered += 1
        self._settle(record.intent, spent)
        counters = self.session.counters
        counters.calls += answered
        counters.cost_usd += spent
        self.ledger.mark(record.intent, "collected")
        self._progress.collected += 1
        self.session.emit(
            "batch.collected", intent=record.intent, batch=batch_id, rows=len(rows),
            answered=answered, cost_usd=spent,
        )  # fmt: skip

    def _row_answers(
        self, row: BatchRow, text: str, finish: str, cost: float, usage: Any
    ) -> list[RowAnswer]:
        """The row's answer read from a batch answer, if valid (with the task's schema)."""
        try:
            valid = parse_single(text, self.session.spec.schema)
        except OutputValidationError:
            return []
        if finish == "length":
            return []
        return [RowAnswer(row.row_key, row.call_key, encode_output(valid), cost,
                          usage.input_tokens, usage.output_tokens)]  # fmt: skip

    def _journal(self, row: BatchRow, text: str, finish: str, cost: float, usage: Any) -> None:
        """The answer as an online call's: a ``calls`` row, and the row's answer if valid."""
        answers = self._row_answers(row, text, finish, cost, usage)
        record = CallRecord(
            call_key=row.call_key,
            provider=self.session.provider.name,
            model=self.session.model,
            run_id=self.session.run_id,
            rows=1,
            response=text,
            finish_reason=finish,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_usd=cost,
            seconds=0.0,
        )
        self.session.registry.journal(record, answers)
        self._answered.add(row.call_key)

    def _settle(self, intent: str, spent: float) -> None:
        budget = self.session.budget
        reservation = self._held.pop(intent, None)
        if reservation is None:  # submitted by an earlier run: its cost is this run's now
            reservation = budget.reserve(0.0)
        if reservation is not None:
            budget.settle(reservation, spent)

    def _release(self, intent: str) -> None:
        reservation = self._held.pop(intent, None)
        if reservation is not None:
            self.session.budget.release(reservation)
