"""Prompt tasks: an LLM call per row, or per batch of rows, at the provider's ceiling.

One call's path, in this order (steps 2 to 5 are ``rowpilot.llm.paid``, the one path every
paid call takes, ``ctx.call``'s too, with the billing rule for failed calls):

1. **cache**: a row whose answer was journaled before (in this run or an earlier one,
   whatever batch it came in) is answered from the registry; a request sent before is
   replayed from its journaled response. Neither is paid again.
2. **budget**: the worst case (a hard upper bound of the prompt's tokens plus max_tokens,
   at the model's price) is reserved; when it does not fit, the run stops with "budget
   reached" and the row stays pending.
3. **limits**: a slot of the provider/model resource (rpm, tpm, concurrency), paced just
   under the provider's limits; a 429 slows the whole resource and the call waits its turn
   again, at most ``RATE_LIMIT_WAITS`` times.
4. **the call**, through the official SDK with its own retries off.
5. **journal**: the response, its usage and cost are committed together with the row
   answers read from it, before anything uses them; the reservation is then settled with
   the real cost.
6. **parse**: each row's answer is validated against the schema. A batch's missing or
   invalid rows are asked again in halves (bisection) down to single rows; a single row's
   invalid answer gets ``repair_attempts`` repair calls, then fails with the validation
   error. An answer cut at max_tokens before every row was read is first asked once more
   at twice the limit (a call of its own in the journal); a single row cut again fails
   with ``OutputTruncatedError``.

max_tokens is the user's, else the output schema's bound (``rowpilot.llm.answer_bound``);
a batch of N rows asks the wrapper's part plus N rows' (``AnswerTokens.for_rows``).

Other failures (5xx, timeouts, resets, malformed bodies) raise a ``ProviderError`` and the
scheduler retries the item under its policy; a batch's failure is each of its rows'.

With ``--batch-api`` the task answers the run's pending rows ahead
(``PromptTask.answer_ahead``: ``rowpilot.llm.batch``, the providers' Batch APIs), and each
row's call then finds its answer in step 1 (a batch request is the online request for the
same rows: ``batch_size`` rows, the same call key). A row the batches left without a valid
answer takes the one-row online path: a one-row answer replayed and repaired, a row a
packed answer missed or spoilt asked alone (steps 2 to 6, online calls), asked online with
``--batch-fallback online``, or failed when it had no answer in ``max_attempts`` batches
(docs/batch.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rowpilot.engine.events import EventLog
from rowpilot.engine.items import encode_output
from rowpilot.engine.progress import Counters
from rowpilot.engine.sizing import Rates
from rowpilot.errors import (
    ConfigError,
    ContentFilterError,
    InvalidOutputError,
    OutputTruncatedError,
    ProviderError,
    ProviderServerError,
    ProviderSetupError,
)
from rowpilot.llm.cost import (
    Budget,
    Price,
    cost_usd,
    find_price,
    worst_case_cost,
)
from rowpilot.llm.limits import Limits, Permit, Resource
from rowpilot.llm.paid import BudgetShort, PaidCall
from rowpilot.llm.prompt import (
    BatchAnswer,
    Request,
    batch_request,
    parse_batch,
    parse_single,
    repair_request,
    row_cache_key,
    single_request,
)
from rowpilot.llm.providers import ChatClient, Completion, accounting_rule, parse_model
from rowpilot.llm.schema import OutputSchema, OutputValidationError
from rowpilot.llm.spec import (
    DEFAULT_MAX_TOKENS,
    LABEL_SYSTEM,
    PromptSpec,
    build_prompt_spec,
    build_step_spec,
)
from rowpilot.llm.tokens import TokenEstimator, upper_bound_tokens
from rowpilot.state.registry import CallRecord, Registry, RowAnswer
from rowpilot.tasks.base import RunScope, Task
from rowpilot.tasks.values import Ahead, ItemUsage, RunStop

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "LABEL_SYSTEM",
    "LLMSession",
    "PromptSpec",
    "PromptTask",
    "build_prompt_spec",
    "build_step_spec",
]

if TYPE_CHECKING:
    from rowpilot._projection import Projection
    from rowpilot.tasks.ctx import Ctx

BATCH_LINGER = 0.02  # seconds a partial batch waits for more rows
SAMPLE_ROWS = 50  # done rows the estimate renders for a one-row request's prompt tokens
MAX_REQUEST_TOKENS = 16_384  # cap on a batch request's max_tokens


class PromptTask(Task):
    """The built-in task of ``--prompt``: render the row, ask the model, return the fields.

    Its session (client, limits, budget, cache) is made and checked in ``preflight``,
    attached to the run in ``open``; its batches ride on ``--workers``: a worker carries
    a batch, so ``--workers`` counts requests at once."""

    name = "prompt"
    is_async = True
    sizing = "prompt"

    def __init__(self, spec: PromptSpec, version: str | None = None) -> None:
        self.spec = spec
        self.version = version or spec.version()
        self.rows_per_worker = spec.batch_size
        # Every row's answer has these: checked against the input columns up front.
        self.output_fields = tuple(spec.schema.field_names)
        self._session: LLMSession | None = None

    def describe(self) -> str:
        return f"prompt task on {self.spec.model}"

    def check_columns(self, columns: Sequence[str]) -> None:
        self.spec.template.check(list(columns))

    def limits(self) -> Limits:
        return self.spec.limits

    def rates(self) -> Rates | None:
        """The model's pace as its resource holds it now (learned limits and 429 cuts
        included). Before the run, the given limits and the least a request costs at
        admission: the prompt's own text with empty cells, plus max_tokens. Rows only add
        to it, so the tpm pace this says errs high, and the start with it."""
        spec = self.spec
        if self._session is None:
            blank = spec.template.render(dict.fromkeys(spec.template.columns, ""))
            least = single_request(
                spec.system, blank, spec.schema, key="", structured=spec.structured
            )
            messages = len(least.messages) + (1 if least.system else 0)
            tokens = TokenEstimator().estimate(least.chars(), messages) + spec.max_tokens
            return Rates(
                rpm=spec.limits.rpm,
                tpm=spec.limits.tpm,
                max_concurrent=spec.limits.max_concurrent,
                tokens_per_call=tokens,
            )
        resource = self._session.resource
        stats, limits = resource.stats(), resource.limits
        return Rates(
            rpm=stats["effective_rpm"] or limits.rpm,
            max_concurrent=limits.max_concurrent,
            calls=stats["calls_ended"],
            call_seconds=stats["call_seconds"],
            tpm=stats["effective_tpm"] or limits.tpm,
            tokens_per_call=stats["least_tokens_per_call"],
        )

    async def preflight(self) -> None:
        session = LLMSession(self.spec)
        try:
            await session.preflight()
        except BaseException:
            await session.aclose()
            raise
        self._session = session

    async def open(self, scope: RunScope) -> None:
        self._live().attach(scope.registry, scope.counters, scope.events, scope.run_id)
        tokens = self.spec.tokens  # said once a run, not per row
        scope.events.emit(
            "max_tokens.chosen", max_tokens=tokens.per_row, source=tokens.source, why=tokens.why
        )

    def choices(self) -> dict[str, str]:
        return {"max_tokens": self.spec.tokens.describe()}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.aclose()

    def waited_seconds(self) -> float:
        if self._session is None:
            return 0.0
        return float(self._session.resource.stats()["waited_seconds"])

    def budget_stop(self) -> str | None:
        return self._session.budget.final_refusal() if self._session is not None else None

    def resource_limits(self) -> dict[str, Limits]:
        if self._session is None:
            return {}
        return {self.spec.model: self._session.resource.limits}

    def resource_stats(self) -> dict[str, dict[str, Any]]:
        if self._session is None:
            return {}
        return {self.spec.model: self._session.resource.stats()}

    def check_estimable(self) -> None:
        return None

    def project(self, state: Path, total: int, *, workers: int) -> Projection:
        from rowpilot._projection import project_calls

        limits = self.resource_limits().get(self.spec.model, self.spec.limits)
        tokens = self.spec.tokens
        per_row = tokens.per_batch_row if self.spec.batching else tokens.per_row
        return project_calls(
            state,
            total,
            workers=workers,
            max_tokens=per_row,
            limits=limits,
            notes=(f"max_tokens {tokens.describe()}",),
            batch_price=self._batch_price(),
        )

    def _batch_price(self) -> Price | None:
        """The model's Batch API price (``[prices]`` overrides apply to both modes)."""
        provider, model = parse_model(self.spec.model, self.spec.providers)
        return find_price(provider.name, model, self.spec.prices, batch=True)

    async def answer_ahead(
        self, rows: Iterable[tuple[str, dict[str, Any]]], scope: RunScope
    ) -> Ahead | None:
        """With ``--batch-api``, every pending row through the provider's Batch API
        (``rowpilot.llm.batch``) before the scheduler commits them from the journal."""
        if not self.spec.batch_api:
            return None
        from rowpilot.llm.batch import BatchRun
        from rowpilot.state.batches import BatchLedger

        session = self._live()
        ledger = BatchLedger(scope.registry.directory)
        try:
            run = BatchRun(session, ledger, rounds=self.spec.batch_rounds)
            ahead = await run.run(rows)
        finally:
            ledger.close()
        session.batch_failed = run.exhausted
        return ahead

    async def call(self, row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        text = self.spec.template.render(row)
        return await self._live().answer(ctx.key, text, ctx.usage)

    def _live(self) -> LLMSession:
        if self._session is None:
            raise RuntimeError("the prompt task runs inside a rowpilot run only")
        return self._session


@dataclass(eq=False)
class _Row:
    """One row waiting for its answer: alone, or in a batch."""

    key: str
    text: str
    row_key: str  # its cache key, the same in any batch
    usage: ItemUsage
    future: asyncio.Future[dict[str, Any]] | None = None


@dataclass(frozen=True)
class _Shape:
    """How one request is asked: its max_tokens, SDK params, whether the cache may answer,
    and a salt that makes a step's call keys its own (empty for prompt tasks)."""

    max_tokens: int
    params: Mapping[str, Any]
    cache: bool
    salt: str = ""


@dataclass(frozen=True)
class _Parsed:
    answer: BatchAnswer
    text: str
    finish_reason: str


class LLMSession:
    """The run-wide side of provider calls: client, limits, budget, call cache and costs."""

    def __init__(self, spec: PromptSpec, budget: Budget | None = None) -> None:
        self.spec = spec
        self.provider, self.model = parse_model(spec.model, spec.providers)
        self.client = ChatClient(
            self.provider, self.model, timeout=spec.call_timeout, environ=spec.environ
        )
        self.price = find_price(self.provider.name, self.model, spec.prices)
        if spec.budget is not None and self.price is None:
            raise ConfigError(
                f"--budget needs a price, and none is known for {spec.model}",
                hint=f'add [prices."{spec.model}"] input = ..., output = ... '
                "(USD per million tokens) to the job file",
            )
        accounting, why = accounting_rule(self.provider)
        self.resource = Resource(
            spec.model, spec.limits, share=spec.share, accounting=accounting, why=why
        )
        self.estimator = TokenEstimator()
        # A task's ctx.llm calls to several models share one budget with its ctx.call costs.
        self.budget = budget if budget is not None else Budget(spec.budget)
        self._requests = asyncio.Semaphore(spec.workers)
        self._batcher = _Batcher(self) if spec.batching else None
        self._registry: Registry | None = None
        self._counters = Counters()
        self._events: EventLog | None = None
        self._run_id = ""
        self.batch_failed: dict[str, str] = {}  # --batch-api: item key -> why no batch answer

    # -- around the run ----------------------------------------------------------------

    async def preflight(self) -> None:
        """One cheap call before any item: a bad key, model or endpoint fails here."""
        try:
            models = await self.client.preflight()
        except ProviderError as error:
            # The provider error's own text carries its hint: said once, as the setup's.
            detail = str(error).replace(f" (hint: {error.hint})", "") if error.hint else error
            raise ProviderSetupError(f"preflight check failed: {detail}", hint=error.hint) from None
        # Anthropic lists dated ids (claude-haiku-4-5-20251001) a page at a time: an alias
        # may be missing from the page, and a wrong name still fails on the first call.
        if self.provider.kind == "openai" and models and not _offers(models, self.model):
            shown = ", ".join(sorted(models)[:8])
            raise ProviderSetupError(
                f"provider {self.provider.name!r} does not offer model {self.model!r}",
                hint=f"it offers: {shown}{', ...' if len(models) > 8 else ''}",
            )

    def allow(self, requests: int) -> None:
        """Let up to ``requests`` requests run at once (before the run's first): steps from
        worker processes come from as many items as the executor holds, not --workers."""
        if requests > self.spec.workers:
            self._requests = asyncio.Semaphore(requests)

    def attach(self, registry: Registry, counters: Counters, events: EventLog, run_id: str) -> None:
        self._registry = registry
        self._counters = counters
        self._events = events
        self._run_id = run_id
        counters.budget_usd = self.spec.budget
        resource = self.resource
        self._emit(
            "limits.accounting",
            resource=resource.name,
            rule=resource.accounting,
            why=resource.why,
        )
        resource.listen(lambda event, fields: self._emit(event, **fields))

    async def aclose(self) -> None:
        if self._batcher is not None:
            await self._batcher.cancel()
        await self.client.aclose()

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            raise RuntimeError("the session is not attached to a run")
        return self._registry

    # -- one row -----------------------------------------------------------------------

    async def answer(self, key: str, text: str, usage: ItemUsage) -> dict[str, Any]:
        """The validated answer for one row."""
        spec = self.spec
        row_key = self._row_key(text, spec.keyed_max_tokens)
        if spec.cache:
            keys = [row_key]
            if spec.tokens.source == "given" and spec.max_tokens != spec.keyed_max_tokens:
                # a row answered before max_tokens left its key was keyed by the limit
                keys.append(self._row_key(text, spec.max_tokens))
            hits = self.registry.cached_answers(keys)
            hit = next((hits[key] for key in keys if key in hits), None)
            if hit is not None:
                self._counted_hit(usage, hit)
                answer: dict[str, Any] = json.loads(hit.output)
                return answer
        row = _Row(key, text, row_key, usage)
        if spec.batch_api:
            return await self._after_batches(row)
        if self._batcher is None:
            return await self._single(row)
        return await self._batcher.submit(row)

    async def _after_batches(self, row: _Row) -> dict[str, Any]:
        """A row the batches left without a valid answer: its journaled answer repaired
        online, asked online (``--batch-fallback online``), or failed."""
        why = self.batch_failed.get(row.key)
        if why is not None and self.spec.batch_fallback != "online":
            error = ProviderServerError(
                f"no batch answered key {row.key!r} in {self.spec.batch_rounds} batch(es): {why}",
                provider=self.provider.name,
                model=self.model,
                key=row.key,
                hint="run again with --retry-failed, or with --batch-fallback online",
            )
            error.retryable = False  # the batches were the retries
            raise error
        return await self._single(row)

    # -- for the batch pass (rowpilot.llm.batch) -----------------------------------------

    def batch_row_key(self, text: str) -> str:
        """A row's answer key: the one its online answer has."""
        return self._row_key(text, self.spec.keyed_max_tokens)

    def batch_max_tokens(self, rows: int) -> int:
        """max_tokens of a request of ``rows`` rows (the online request's)."""
        return self._shape(rows).max_tokens

    def batch_row_tokens(self, text: str) -> int:
        """A row's tokens as the online batcher counts them against ``batch_tokens``."""
        return self.estimator.estimate(len(text))

    @property
    def counters(self) -> Counters:
        return self._counters

    @property
    def run_id(self) -> str:
        return self._run_id

    def emit(self, event: str, **fields: Any) -> None:
        self._emit(event, **fields)

    def _row_key(self, text: str, max_tokens: int) -> str:
        spec = self.spec
        return row_cache_key(
            self.provider.name, self.model, spec.system, text, spec.schema, spec.params, max_tokens
        )

    def _counted_hit(self, usage: ItemUsage, hit: RowAnswer) -> None:
        usage.cached += 1
        usage.cost_usd += hit.cost_usd  # what the answer cost when it was paid for
        usage.input_tokens += hit.input_tokens
        usage.output_tokens += hit.output_tokens
        self._counters.cached += 1

    async def _single(self, row: _Row) -> dict[str, Any]:
        spec = self.spec
        request = single_request(
            spec.system, row.text, spec.schema, key=row.key, structured=spec.structured
        )
        return await self._repaired(request, row, spec.schema, self._shape(1))

    async def step(
        self,
        request: Request,
        schema: OutputSchema,
        *,
        key: str,
        step_key: str,
        usage: ItemUsage,
        max_tokens: int,
        params: Mapping[str, Any],
        cache: bool,
    ) -> dict[str, Any]:
        """A task's own call (``ctx.llm``): replayed from the journal when the same step
        was answered before, else asked, repaired if need be, and journaled under
        ``step_key`` before it is returned."""
        if cache:
            hit = self.registry.cached_answers([step_key]).get(step_key)
            if hit is not None:
                self._counted_hit(usage, hit)
                answer: dict[str, Any] = json.loads(hit.output)
                return answer
        row = _Row(key, "", step_key, usage)
        shape = _Shape(max_tokens, params, cache, salt=step_key)
        return await self._repaired(request, row, schema, shape)

    def step_call_key(
        self, request: Request, step_key: str, max_tokens: int, params: Mapping[str, Any]
    ) -> str:
        """The call key ``step`` journals a step's request under (``_ask``'s)."""
        return _salted(request.cache_key(self.provider.name, self.model, params, max_tokens),
                       step_key)  # fmt: skip

    def journaled_step(
        self, schema: OutputSchema, *, step_key: str, call_key: str, usage: ItemUsage
    ) -> tuple[dict[str, Any] | None, bool]:
        """A step's answer from the journal without a call: its answer, or its request's
        journaled call (a batch answered it: journaled without the step's schema, so read
        here and its answer journaled now). Also whether the call is journaled at all: one
        that is, with no valid answer (invalid or cut), is ``step``'s to repair online."""
        hit = self.registry.cached_answers([step_key]).get(step_key)
        if hit is not None:
            self._counted_hit(usage, hit)
            return json.loads(hit.output), True
        call = self.registry.cached_call(call_key)
        if call is None:
            return None, False
        try:
            valid = parse_single(call.response, schema)
        except OutputValidationError:
            return None, True
        if call.finish_reason == "length":
            return None, True
        answer = RowAnswer(step_key, call_key, encode_output(valid), call.cost_usd,
                           call.input_tokens, call.output_tokens)  # fmt: skip
        self.registry.journal(call, [answer])  # the same call again, with its answer now
        self._counted_hit(usage, answer)
        return json.loads(answer.output), True

    async def _repaired(
        self, request: Request, row: _Row, schema: OutputSchema, shape: _Shape
    ) -> dict[str, Any]:
        """One row's valid answer: the request, then up to ``repair_attempts`` repairs."""
        spec = self.spec
        problem = ""
        for repair in range(spec.repair_attempts + 1):
            parse = _single_parser(row.key, schema)
            parsed, limit = await self._uncut(request, [row], parse, shape)
            valid = parsed.answer.valid.get(row.key)
            if valid is not None:
                return valid
            problem = parsed.answer.problems.get(row.key, "no answer")
            if parsed.finish_reason == "length":
                again = f" (asked again at {limit})" if limit > shape.max_tokens else ""
                raise OutputTruncatedError(
                    f"the answer for key {row.key!r} stopped at max_tokens="
                    f"{shape.max_tokens}{again} before it was complete",
                    provider=self.provider.name,
                    model=self.model,
                    key=row.key,
                    hint="raise --max-tokens (max_tokens in the job file), then run again "
                    "with --retry-failed",
                )
            if repair < spec.repair_attempts:
                self._emit("item.repair", key=row.key, problem=problem, repair=repair + 1)
                request = repair_request(request, parsed.text, problem)
        error = InvalidOutputError(
            f"the answer for key {row.key!r} is still invalid after "
            f"{spec.repair_attempts} repair request(s): {problem}",
            provider=self.provider.name,
            model=self.model,
            key=row.key,
            hint="loosen the schema, give the model clearer instructions, or raise repair_attempts",
        )
        error.retryable = False  # the repairs were the retries
        raise error

    # -- batches -----------------------------------------------------------------------

    async def run_batch(self, rows: list[_Row]) -> None:
        """Answer every row's future: with its answer, or with the error that stopped it."""
        try:
            await self._batch(rows)
        except asyncio.CancelledError:
            for row in rows:
                if row.future is not None and not row.future.done():
                    row.future.cancel()
            raise
        except (Exception, RunStop) as error:  # a provider failure or a budget stop
            for row in rows:
                if row.future is not None and not row.future.done():
                    row.future.set_exception(error)

    async def _batch(self, rows: list[_Row]) -> None:
        if len(rows) == 1:
            _resolve(rows[0], await self._single(rows[0]))
            return
        spec = self.spec
        keys = [row.key for row in rows]
        request = batch_request(
            spec.system,
            [(row.key, row.text) for row in rows],
            spec.schema,
            structured=spec.structured,
        )
        try:
            parsed, _ = await self._uncut(
                request,
                rows,
                lambda text: parse_batch(text, keys, spec.schema),
                self._shape(len(rows)),
            )
        except ContentFilterError as error:
            # A filter refuses the whole request for one row's sake: halves find that row,
            # and the others get their answers.
            await self._split(rows, len(rows), str(error))
            return
        except BudgetShort:
            # The batch's worst case no longer fits what the budget has left; smaller
            # requests may, so the budget is used to its end rather than a batch short.
            half = len(rows) // 2
            await asyncio.gather(self.run_batch(rows[:half]), self.run_batch(rows[half:]))
            return
        for row in rows:
            if row.key in parsed.answer.valid:
                _resolve(row, parsed.answer.valid[row.key])
        left = [row for row in rows if row.key not in parsed.answer.valid]
        if left:
            await self._split(left, len(rows), next(iter(parsed.answer.problems.values()), ""))

    async def _split(self, left: list[_Row], asked: int, problem: str) -> None:
        """Ask again for the rows a batch did not answer, in two halves."""
        self._counters.splits += 1
        self._emit("batch.split", rows=asked, missing=len(left), example=problem)
        half = len(left) // 2
        await asyncio.gather(self.run_batch(left[:half]), self.run_batch(left[half:]))

    # -- one request -------------------------------------------------------------------

    def _shape(self, rows: int) -> _Shape:
        """A prompt task's request for ``rows`` rows: the spec's params and cache."""
        spec = self.spec
        max_tokens = min(spec.tokens.for_rows(rows), max(MAX_REQUEST_TOKENS, spec.max_tokens))
        return _Shape(max_tokens, spec.params, spec.cache)

    async def _uncut(
        self,
        request: Request,
        rows: Sequence[_Row],
        parse: Callable[[str], BatchAnswer],
        shape: _Shape,
    ) -> tuple[_Parsed, int]:
        """``_ask``, and once more at twice the limit when the answer was cut before every
        row was read (a bound or a given limit too tight). The second request is a call of
        its own (its key holds its max_tokens), journaled like any: a resume replays both.
        Also the limit of the last request asked."""
        parsed = await self._ask(request, rows, parse, shape)
        doubled = min(2 * shape.max_tokens, max(MAX_REQUEST_TOKENS, shape.max_tokens))
        cut = parsed.finish_reason == "length" and len(parsed.answer.valid) < len(rows)
        if not cut or doubled <= shape.max_tokens:
            return parsed, shape.max_tokens
        self._emit("answer.cut", rows=len(rows), max_tokens=shape.max_tokens, again=doubled)
        wider = dataclasses.replace(shape, max_tokens=doubled)
        again = await self._ask(request, rows, parse, wider)
        # Rows the cut answer held whole keep those answers (they were journaled).
        valid = {**again.answer.valid, **parsed.answer.valid}
        problems = {key: p for key, p in again.answer.problems.items() if key not in valid}
        merged = BatchAnswer(valid=valid, problems=problems)
        return dataclasses.replace(again, answer=merged), doubled

    async def _ask(
        self,
        request: Request,
        rows: Sequence[_Row],
        parse: Callable[[str], BatchAnswer],
        shape: _Shape,
    ) -> _Parsed:
        """One request's parsed answer: replayed from the journal, or paid for and journaled."""
        max_tokens = shape.max_tokens
        call_key = request.cache_key(self.provider.name, self.model, shape.params, max_tokens)
        if shape.salt:  # a step's calls are its own: an identical step elsewhere is another
            call_key = _salted(call_key, shape.salt)
        if shape.cache:
            cached = self.registry.cached_call(call_key)
            if cached is not None:
                for row in rows:
                    row.usage.cached += 1
                self._counters.cached += len(rows)
                return _Parsed(parse(cached.response), cached.response, cached.finish_reason)

        def journal(completion: Completion, cost: float, seconds: float) -> _Parsed:
            parsed = _Parsed(parse(completion.text), completion.text, completion.finish_reason)
            self._journal(call_key, rows, completion, parsed, cost, seconds)
            return parsed

        return await self._paid(request, max_tokens, shape.params, journal)

    def _journal(
        self,
        call_key: str,
        rows: Sequence[_Row],
        completion: Completion,
        parsed: _Parsed,
        cost: float,
        seconds: float,
    ) -> None:
        shares = _shares([len(row.text) for row in rows])
        answers = []
        for row, share in zip(rows, shares, strict=True):
            tokens_in = round(completion.input_tokens * share)
            tokens_out = round(completion.output_tokens * share)
            row.usage.calls += 1
            row.usage.cost_usd += cost * share
            row.usage.input_tokens += tokens_in
            row.usage.output_tokens += tokens_out
            valid = parsed.answer.valid.get(row.key)
            if valid is not None:
                answers.append(
                    RowAnswer(
                        row.row_key,
                        call_key,
                        encode_output(valid),
                        cost * share,
                        tokens_in,
                        tokens_out,
                    )
                )
        record = CallRecord(
            call_key=call_key,
            provider=self.provider.name,
            model=self.model,
            run_id=self._run_id,
            rows=len(rows),
            response=completion.text,
            finish_reason=completion.finish_reason,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            cost_usd=cost,
            seconds=seconds,
        )
        self.registry.journal(record, answers)

    async def _paid(
        self,
        request: Request,
        max_tokens: int,
        params: Mapping[str, Any],
        journal: Callable[[Completion, float, float], _Parsed],
    ) -> _Parsed:
        """The request through the one paid-call path (``rowpilot.llm.paid``): its worst case
        reserved, the model's limits, the call, ``journal``, then its real cost settled."""
        messages = len(request.messages) + (1 if request.system else 0)
        chars = request.chars()

        def answered(completion: Completion, permit: Permit) -> None:
            permit.settle(
                completion.prompt_tokens,
                completion.output_tokens,
                cached=completion.cached_tokens,
                headers=completion.headers,
            )
            self.estimator.observe(chars, messages, completion.prompt_tokens)

        def send() -> Awaitable[Completion]:
            return self.client.complete(
                request.messages,
                system=request.system,
                max_tokens=max_tokens,
                json_schema=request.json_schema,
                params=dict(params),
            )

        paid = PaidCall(self.resource, self.budget, self._counters, gate=self._requests)
        return await paid(
            send,
            worst=self._worst_case(request, max_tokens),
            what="request",
            cost=lambda completion: cost_usd(
                self.price, completion.input_tokens, completion.output_tokens
            ),
            journal=journal,
            tokens=self.estimator.estimate(chars, messages) + max_tokens,
            output=max_tokens,
            answered=answered,
        )

    def _worst_case(self, request: Request, max_tokens: int) -> float:
        if self.price is None:
            return 0.0
        return worst_case_cost(self.price, upper_bound_tokens(request.texts()), max_tokens)

    def _emit(self, event: str, **fields: Any) -> None:
        if self._events is not None:
            self._events.emit(event, **fields)


class _Batcher:
    """Gathers rows into requests: full at ``batch_size`` rows (or the token budget), or
    ``BATCH_LINGER`` seconds after the first row arrived."""

    def __init__(self, session: LLMSession) -> None:
        self._session = session
        self._pending: list[_Row] = []
        self._pending_tokens = 0
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, row: _Row) -> dict[str, Any]:
        row.future = asyncio.get_running_loop().create_future()
        self._pending.append(row)
        self._pending_tokens += self._session.estimator.estimate(len(row.text))
        spec = self._session.spec
        full = len(self._pending) >= spec.batch_size or (
            spec.batch_tokens is not None and self._pending_tokens >= spec.batch_tokens
        )
        if full:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(BATCH_LINGER, self._flush)
        return await row.future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        rows = [row for row in self._pending if row.future is not None and not row.future.done()]
        self._pending, self._pending_tokens = [], 0
        if rows:
            task = asyncio.create_task(self._session.run_batch(rows))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._running):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._running, return_exceptions=True)


def _resolve(row: _Row, answer: dict[str, Any]) -> None:
    if row.future is not None and not row.future.done():
        row.future.set_result(answer)


def _single_parser(key: str, schema: OutputSchema) -> Callable[[str], BatchAnswer]:
    def parse(text: str) -> BatchAnswer:
        try:
            return BatchAnswer(valid={key: parse_single(text, schema)}, problems={})
        except OutputValidationError as error:
            return BatchAnswer(valid={}, problems={key: str(error)})

    return parse


def _salted(call_key: str, salt: str) -> str:
    return hashlib.blake2b(f"{call_key}:{salt}".encode(), digest_size=20).hexdigest()


def _shares(weights: Sequence[int]) -> list[float]:
    """Each row's share of a call's cost: by its text's length."""
    total = sum(weights)
    if total <= 0:
        return [1 / len(weights)] * len(weights)
    return [weight / total for weight in weights]


def _offers(models: Sequence[str], model: str) -> bool:
    return any(name == model or name.startswith(model + "-") for name in models)
