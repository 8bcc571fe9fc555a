"""A prompt task's rows through the provider's Batch API (``--batch-api``; docs/batch.md).

``BatchRun`` answers a run's pending rows *ahead* of the scheduler: it journals every
batch answer in the registry exactly as an online answer is journaled (the request's call
key, a ``calls`` row per request and an ``answers`` row per row answered whole), so the
scheduler's pass that follows finds each answer in the cache and commits the row without
a call; ``--force``, exports and the spending figures see no difference. Its rules:

* **the online requests**: the rows in no recorded batch are grouped, in order, as the
  online batcher groups them (``batch_size`` rows a request, fewer once ``batch_tokens``
  is reached), each group into the very request an online call for it sends (the tagged
  prompt for several rows, the one-row request for one; the same max_tokens bound, body
  and call key). Rows answered before (in any mode) are not asked, nor rows a journaled
  request answered without a valid answer (the online path takes them); identical rows
  are asked once.
* **exactly once**: before a batch is created, the ledger (``state/batches.py``) records
  the intent: its content hash, its worst case, every request's ``custom_id``
  (``INTENT-CALLKEY``) and the rows it carries; right after, the provider's batch id.
  A row is reserved (by its row key) while a request of an unfinished batch carries it,
  so a resumed run groups only the free rows and never needs an earlier run's groups. A
  run killed between the intent and the id finds the batch again (``BatchClient.find``):
  OpenAI by the ``rowpilot_intent`` metadata; Anthropic, which keeps no metadata, by
  listing the batches created since the intent and reading one result of each ended one
  (the custom_id's prefix is the intent); until every such candidate has ended, the
  intent's rows stay reserved and are never sent again. An intent found nowhere is
  ``lost`` and its rows are free again. A resumed run looks at the batches it recorded
  before it submits anything.
* **files within the limits**: requests are packed, in order, into as few batches as each
  provider's limits allow (requests and bytes: ``batch_client.LIMITS``;
  ``ROWPILOT_BATCH_MAX_REQUESTS`` lowers the count, for rehearsals against a simulator).
* **budget**: a batch's worst case (every request's prompt bound and max_tokens at the
  batch price, ``find_price(batch=True)``) is reserved before it is submitted and settled at
  its real cost when it is collected; rows that do not fit are not submitted and the run
  ends ``budget_reached`` with them pending. A batch collected by a later run than the one
  that submitted it counts its cost in the collecting run's spending.
* **partial results**: the rows of a request a batch answered with an error, filtered, or
  left unanswered (expired, cancelled) go into a later batch, up to the run's
  ``max_attempts`` batches; with ``--batch-fallback online`` they are asked online instead
  (after one batch). A row still without an answer fails with a server error. A request
  answered is journaled as it came: the rows it answered whole are kept; each row it
  missed or answered invalid or cut is left to the scheduler's pass, which asks it
  online alone (a one-row answer: replayed and repaired; the retry at twice max_tokens),
  at the online price, never in a later batch.
* **provider errors**: a retryable one (5xx, timeout) while creating, looking or reading
  is tried again at the next look, up to ``TRANSIENT_FAILURES`` rounds in a row; any
  other ends the run (the batches stay recorded for the next).
* **steps**: a Python task's can-wait ``ctx.llm`` steps are submitted and waited for
  through ``run_asks`` by ``rowpilot.llm.step_batches`` (a ``BatchRun`` per model). Their
  requests come built, one row each: the step's item, keyed by the step's key (the key
  its answer is journaled under), so the ledger reserves, counts tries and marks answered
  by row key as for a prompt task's rows; its ``_row_answers`` journals the call only
  (the step's schema reads it where the step runs).
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
from rowpilot.llm.prompt import batch_request, parse_batch, parse_single, single_request
from rowpilot.llm.schema import OutputValidationError
from rowpilot.llm.tokens import upper_bound_tokens
from rowpilot.state.batches import BatchLedger, BatchMember, BatchRecord, BatchRow
from rowpilot.state.registry import CallRecord, RowAnswer
from rowpilot.tasks.values import Ahead

if TYPE_CHECKING:
    from rowpilot.engine.progress import Counters
    from rowpilot.llm.cost import Budget
    from rowpilot.llm.providers import ChatClient, Completion, ProviderSpec
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
class _Row:
    """One distinct row to answer: the item keys whose text it is (identical rows share
    one answer, as online), its text and its answer's key."""

    keys: list[str]
    text: str
    row_key: str


@dataclass
class _Ask:
    """One request to send: the rows it carries, as an online request would carry them."""

    rows: list[_Row]
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
    def batch_max_tokens(self, rows: int) -> int: ...
    def batch_row_tokens(self, text: str) -> int: ...


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
        self._answered: set[str] = set()  # row keys a collected request carried, this run
        self._tries: collections.Counter[str] = collections.Counter()
        self._why: dict[str, str] = {}
        self._held: dict[str, Reservation] = {}
        self._progress = _Progress()
        self._failures = 0  # transient failures in a row (see _passing)

    async def run(self, rows: Iterable[tuple[str, dict[str, Any]]]) -> Ahead:
        """Answer ``rows`` (item key, row) through batches; what is left for the run."""
        return await self._passes(self._pending(rows), self._asks, wait=True)

    async def run_asks(self, asks: Sequence[_Ask], *, wait: bool = True) -> Ahead:
        """Submit requests built elsewhere, one row each (a can-wait step's: its call key
        is its row key), and follow the recorded batches until none is open (one look when
        detached or not ``wait``); what is left for the run."""
        by_row = {ask.rows[0].row_key: ask for ask in asks}
        assert all(len(ask.rows) == 1 for ask in asks), "run_asks takes one-row requests"
        pending = {row_key: ask.rows[0] for row_key, ask in by_row.items()}
        return await self._passes(
            pending, lambda free: [by_row[row.row_key] for row in free], wait=wait
        )

    async def _passes(
        self,
        pending: dict[str, _Row],
        group: Callable[[Sequence[_Row]], list[_Ask]],
        *,
        wait: bool,
    ) -> Ahead:
        """Submit the free rows of ``pending``, as ``group`` makes them requests, and look
        at the recorded batches until none is open (once when detached or not ``wait``)."""
        stop: str | None = None
        detach = self.session.spec.detach or not wait
        while True:
            await self._settle_unfinished(pending)
            free = self._free(pending)
            if free and stop is None:
                stop = await self._submit(group(free))
            self._show(pending)
            to_send = stop is None and bool(self._free(pending))  # a create that failed
            if detach or not (self.ledger.unfinished() or to_send):
                break
            await self.sleep(self.session.spec.batch_poll)
        return self._left(pending, stop)

    def _passing(self, error: ProviderError, doing: str) -> None:
        """A retryable failure (a 5xx, a timeout, a dropped connection) of a look, a read or
        a create is tried again at the next look: the batches stay recorded. Past
        ``TRANSIENT_FAILURES`` in a row, or any other failure, ends the run."""
        self._failures += 1
        if not error.retryable or self._failures > TRANSIENT_FAILURES:
            raise error
        self.session.emit("batch.retry", doing=doing, error=str(error), failures=self._failures)

    def _show(self, pending: dict[str, _Row]) -> None:
        """The batches and their rows, for the progress view."""
        answered = sum(len(row.keys) for key, row in pending.items() if key in self._answered)
        rows = sum(len(row.keys) for row in pending.values())
        progress = self._progress
        self.session.counters.batches = (
            f"batches {len(self.ledger.unfinished())} open, {progress.collected} collected; "
            f"rows {answered:,}/{rows:,} answered"
        )

    # -- what to ask ------------------------------------------------------------------

    def _pending(self, rows: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, _Row]:
        """The rows to answer, by row key: rows answered before are left out."""
        pending: dict[str, _Row] = {}
        chunk: list[tuple[str, str, str]] = []
        for key, fields in rows:
            text = self.session.spec.template.render(fields)
            chunk.append((key, text, self.session.batch_row_key(text)))
            if len(chunk) >= _LOOKUP:
                self._add_pending(chunk, pending)
                chunk = []
        self._add_pending(chunk, pending)
        return pending

    def _add_pending(self, chunk: list[tuple[str, str, str]], pending: dict[str, _Row]) -> None:
        registry = self.session.registry
        row_keys = [row_key for _, _, row_key in chunk]
        cached = registry.cached_answers(row_keys)
        asked = self.ledger.collected_calls(row_keys)
        for key, text, row_key in chunk:
            if row_key in cached:
                continue
            if row_key in pending:
                pending[row_key].keys.append(key)
                continue
            if self._asked_before(key, text, asked.get(row_key, set())):
                continue  # answered invalid, cut or not at all: the online path takes it
            pending[row_key] = _Row([key], text, row_key)

    def _asked_before(self, key: str, text: str, group_calls: set[str]) -> bool:
        """Whether a request carrying the row was answered (journaled) without a valid
        answer for it: its one-row request (either mode), or a collected batch request."""
        registry = self.session.registry
        if any(registry.cached_call(call_key) is not None for call_key in group_calls):
            return True
        return registry.cached_call(self._ask([_Row([key], text, "")]).call_key) is not None

    def _free(self, pending: dict[str, _Row]) -> list[_Row]:
        """Rows to submit now, in order: not answered, not in a batch, tries left."""
        waiting = [row for key, row in pending.items() if key not in self._answered]
        reserved = self.ledger.reserved([row.row_key for row in waiting])
        return [
            row
            for row in waiting
            if row.row_key not in reserved and self._tries[row.row_key] < self.rounds
        ]

    def _asks(self, free: Sequence[_Row]) -> list[_Ask]:
        """The free rows grouped, in order, by the online batcher's rules: a request is full
        at ``batch_size`` rows or once its rows' tokens reach ``batch_tokens``."""
        spec = self.session.spec
        asks: list[_Ask] = []
        group: list[_Row] = []
        tokens = 0
        for row in free:
            group.append(row)
            tokens += self.session.batch_row_tokens(row.text)
            full = len(group) >= spec.batch_size or (
                spec.batch_tokens is not None and tokens >= spec.batch_tokens
            )
            if full:
                asks.append(self._ask(group))
                group, tokens = [], 0
        return [*asks, self._ask(group)] if group else asks

    def _ask(self, rows: list[_Row]) -> _Ask:
        """The request an online call for ``rows`` sends: the same body and call key."""
        spec = self.session.spec
        if len(rows) == 1:
            request = single_request(
                spec.system, rows[0].text, spec.schema, key=rows[0].keys[0],
                structured=spec.structured,
            )  # fmt: skip
        else:
            tagged = [(row.keys[0], row.text) for row in rows]
            request = batch_request(spec.system, tagged, spec.schema, structured=spec.structured)
        max_tokens = self.session.batch_max_tokens(len(rows))
        provider = self.session.provider
        call_key = request.cache_key(provider.name, self.session.model, spec.params, max_tokens)
        body = request_body(
            provider.kind,
            self.session.model,
            request.messages,
            system=request.system,
            max_tokens=max_tokens,
            json_schema=request.json_schema,
            params=spec.params,
        )
        worst = worst_case_cost(self.price, upper_bound_tokens(request.texts()), max_tokens)
        size = len(json.dumps(body)) + 200  # the line's custom_id, method and url
        return _Ask(rows, call_key, body, worst, size)

    def _left(self, pending: dict[str, _Row], stop: str | None) -> Ahead:
        unanswered = [row for key, row in pending.items() if key not in self._answered]
        reserved = self.ledger.reserved([row.row_key for row in unanswered])
        waiting: set[str] = set()
        for row in unanswered:
            if row.row_key in reserved or self._tries[row.row_key] < self.rounds:
                waiting.update(row.keys)  # in a batch, or not submitted (the budget)
            else:
                why = self._why.get(row.row_key, "no answer")
                self.exhausted.update(dict.fromkeys(row.keys, why))
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
                return budget.refusal(part[0].worst, "a batch of 1 request")
            await self._create(fits, worst, reservation)
            if len(fits) < len(part):
                rest = part[len(fits)]
                return budget.refusal(rest.worst, f"the batch after {len(fits):,} requests")
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
            rows=sum(len(ask.rows) for ask in part),
            worst_usd=worst,
            run_id=self.session.run_id,
            ended_at=None,
        )
        requests, members = [], []
        for (custom_id, _), ask in zip(lines, part, strict=True):
            first = ask.rows[0]
            requests.append(BatchRow(custom_id, first.keys[0], first.row_key, ask.call_key))
            members += [BatchMember(custom_id, row.keys[0], row.row_key) for row in ask.rows]
        self.ledger.record_intent(record, requests, members)
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
        self.session.emit(
            "batch.submitted", intent=intent, batch=batch_id, requests=len(part),
            rows=record.rows,
        )  # fmt: skip

    # -- waiting and collecting ---------------------------------------------------------

    async def _settle_unfinished(self, pending: dict[str, _Row]) -> None:
        """Find the recorded intents' batches, look at the open ones, collect the ended."""
        failed: ProviderError | None = None
        for record in self.ledger.unfinished():
            try:
                await self._follow(record, pending)
            except ProviderError as error:
                if not error.retryable:
                    raise
                failed = error  # the others are still looked at
        if failed is not None:
            self._passing(failed, "look at the open batches")  # once a round
        else:
            self._failures = 0

    async def _follow(self, record: BatchRecord, pending: dict[str, _Row]) -> None:
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
            await self._collect(record, batch_id, pending)

    async def _collect(self, record: BatchRecord, batch_id: str, pending: dict[str, _Row]) -> None:
        requests = {row.custom_id: row for row in self.ledger.rows_of(record.intent)}
        members = self.ledger.members_of(record.intent)
        results = {result.custom_id: result for result in await self.client.results(batch_id)}
        spent = 0.0
        answered = calls = 0
        for custom_id, request in requests.items():
            carried = members[custom_id]
            result = results.get(custom_id, RowResult(custom_id, None, "no result"))
            completion = result.completion
            if completion is None or completion.finish_reason == "content_filter":
                for member in carried:
                    self._tries[member.row_key] += 1
                    self._why[member.row_key] = result.error or "refused by the content filter"
                continue
            cost = cost_usd(self.price, completion.input_tokens, completion.output_tokens)
            texts = [pending[m.row_key].text if m.row_key in pending else "" for m in carried]
            journaled = self._journal(request.call_key, carried, texts, completion, cost)
            self.session.counters.batch_answers += journaled
            spent += cost
            calls += 1
            answered += len(carried)
        self._settle(record.intent, spent)
        counters = self.session.counters
        counters.calls += calls
        counters.batch_calls += calls
        counters.cost_usd += spent
        self.ledger.mark(record.intent, "collected")
        self._progress.collected += 1
        self.session.emit(
            "batch.collected", intent=record.intent, batch=batch_id, rows=record.rows,
            answered=answered, cost_usd=spent,
        )  # fmt: skip

    def _row_answers(
        self,
        call_key: str,
        carried: Sequence[BatchMember],
        texts: Sequence[str],
        completion: Completion,
        cost: float,
    ) -> list[RowAnswer]:
        """An ``answers`` row for each row the request answered whole (read with the task's
        schema), its share of the cost by its text's length (as online). The rows it
        missed, or answered invalid or cut, get none: the run's online path takes them."""
        answer = self._read(completion, [member.item_key for member in carried])
        shares = _shares([len(text) for text in texts])
        answers = []
        for member, share in zip(carried, shares, strict=True):
            valid = answer.get(member.item_key)
            if valid is not None:
                answers.append(
                    RowAnswer(member.row_key, call_key, encode_output(valid), cost * share,
                              round(completion.input_tokens * share),
                              round(completion.output_tokens * share))
                )  # fmt: skip
        return answers

    def _journal(
        self,
        call_key: str,
        carried: Sequence[BatchMember],
        texts: Sequence[str],
        completion: Completion,
        cost: float,
    ) -> int:
        """The answer as an online call's: a ``calls`` row, and the rows' answers
        (``_row_answers``). Returns how many answers the run will read back from it."""
        answers = self._row_answers(call_key, carried, texts, completion, cost)
        record = CallRecord(
            call_key=call_key,
            provider=self.session.provider.name,
            model=self.session.model,
            run_id=self.session.run_id,
            rows=len(carried),
            response=completion.text,
            finish_reason=completion.finish_reason,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            cost_usd=cost,
            seconds=0.0,
        )
        self.session.registry.journal(record, answers)
        self._answered.update(member.row_key for member in carried)
        return self._read_back(answers)

    def _read_back(self, answers: Sequence[RowAnswer]) -> int:
        """How many times the run reads this request's answer back from the journal."""
        return len(answers)

    def _read(self, completion: Completion, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The valid answers of a request's rows, by the item key its prompt tagged: a
        one-row answer whole and not cut, a batched answer's rows read whole."""
        schema = self.session.spec.schema
        if len(keys) > 1:
            return parse_batch(completion.text, keys, schema).valid
        if completion.finish_reason == "length":
            return {}
        try:
            return {keys[0]: parse_single(completion.text, schema)}
        except OutputValidationError:
            return {}

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


def _shares(weights: Sequence[int]) -> list[float]:
    """Each row's share of a request's cost: by its text's length (the online rule)."""
    total = sum(weights)
    if total <= 0:
        return [1 / len(weights)] * len(weights)
    return [weight / total for weight in weights]
