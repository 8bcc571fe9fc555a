"""Steps: what a Python task does through ``ctx`` (LLM calls, other APIs, fan-out, logs).

A task's own calls get what a prompt task's calls get, so a multi-step pipeline written as
plain Python is limited, retried, priced, journaled and resumable:

* ``ctx.llm`` goes through an ``LLMSession`` per model (the providers, limits, budget and
  call cache of prompt tasks), created on first use; the job's own ``model`` is checked
  with a preflight call before the state is touched.
* ``ctx.call(resource, fn, ...)`` runs any function under the named resource's own
  ``[limits.NAME]`` (rpm, max_concurrent) and retry policy (max_attempts, retry_delay):
  errors that carry an HTTP status or are transport failures are mapped to the provider
  error classes (a 429 slows the resource, a 5xx or timeout is retried, a 401 aborts the
  run); any other exception is the task's own and is raised at once.
* **Journal**: every step's result is committed to the registry before the task sees it,
  under a key made of what was asked and how many identical steps the item asked before
  it. A resumed or retried item replays its earlier steps from the journal in the same
  order, so a step whose prompt depends on earlier answers has the same key again, and
  nothing answered before is paid again. What a step returns is always the JSON round
  trip of its result, on the first run as on a replay, so both see the same values.
* **Steps that can wait**: with ``--batch-api``, a ``ctx.llm(..., can_wait=True)`` step
  whose answer is not journaled hands its request to ``rowpilot.llm.step_batches`` and
  raises ``Parked``: the item ends this pass without an outcome and runs again once the
  batch answered (a batch answer is read with the step's schema then). A step that may
  not read the journal (``cache=False``) is asked online.
* ``ctx.map(subitems, fn, workers=k)`` runs sub-items in at most ``k`` lanes; lane 0 uses
  the parent item's own worker slot and the others take slots from the run's worker
  pool, so the run never has more than ``--workers`` task functions running, and a
  parent waiting on its sub-items can never starve them. Sub-items that park let the
  others finish (their requests join the same batch), then the parent parks.
* ``ctx.log(kind, **data)`` appends a line to ``logs/<run>.<kind>.jsonl`` beside the
  engine's own log.

The budget is one: LLM costs (reserved at their worst case) and ``ctx.call`` costs (a
number is reserved before the call, a function of the result is charged after it) share
it, and a step that would pass it raises ``RunStop``: the run ends with "budget reached"
and the item stays pending. Both kinds of call take the one paid-call path
(``rowpilot.llm.paid``), so a failed ``ctx.call`` is charged by the same rule as a failed
LLM call: $0 when never sent or answered with an error status, its worst case when its
fate is unknown.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import inspect
import json
import re
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from rowpilot._config import JobConfig
from rowpilot.engine.events import EventLog
from rowpilot.engine.retry import RetryPolicy
from rowpilot.engine.sizing import Rates, requests_per_minute
from rowpilot.engine.slots import Slots
from rowpilot.errors import (
    ConfigError,
    ProviderConnectionError,
    ProviderError,
    ProviderServerError,
    ProviderTimeoutError,
    SubItemError,
    TaskOutputError,
)
from rowpilot.executors.threads import ThreadPool, run_sync
from rowpilot.llm.answer_bound import choose_answer_tokens
from rowpilot.llm.cost import Budget
from rowpilot.llm.environ import load_environ
from rowpilot.llm.limits import Limits, Resource, parse_retry_after
from rowpilot.llm.paid import PaidCall
from rowpilot.llm.prompt import conversation_request
from rowpilot.llm.schema import OutputSchema, schema_of
from rowpilot.state.registry import CallRecord, Registry
from rowpilot.tasks.ctx import run_blocking
from rowpilot.tasks.values import ItemUsage, Parked, StepTrail

if TYPE_CHECKING:
    from rowpilot.llm.session import LLMSession
    from rowpilot.llm.spec import PromptSpec
    from rowpilot.llm.step_batches import StepBatches
    from rowpilot.tasks.base import RunScope

T = TypeVar("T")

_RESOURCE_SETTINGS = frozenset({"rpm", "max_concurrent", "max_attempts", "retry_delay"})
_LOG_KIND = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
_TEXT = "answer"  # the field a schema-less answer comes back in (OutputSchema.text)


class Steps:
    """The run-wide side of ``ctx`` (a ``StepRunner``): sessions, resources, the shared
    budget, task logs. Made when the run opens, with the sessions ``preflight_sessions``
    checked before the state was touched."""

    def __init__(
        self,
        config: JobConfig,
        scope: RunScope,
        *,
        budget: Budget | None = None,
        environ: Mapping[str, str] | None = None,
        sessions: Mapping[str, LLMSession] | None = None,
    ) -> None:
        self.config = config
        self.budget = budget if budget is not None else Budget(config.budget)
        self._environ = environ if environ is not None else load_environ(config.env_file)
        self._resources: dict[str, tuple[Resource, RetryPolicy]] = {}
        self._registry = scope.registry
        self._counters = scope.counters
        self._events: EventLog | None = scope.events
        self._run_id = scope.run_id
        self._workers = scope.workers
        self._loop = asyncio.get_running_loop()
        scope.counters.budget_usd = config.budget
        self._sessions: dict[str, LLMSession] = {}
        for model, session in (sessions or {}).items():
            self._attach(model, session)
        # Sub-items of sync functions run here, not in the scheduler's pool, whose threads
        # may all be parents waiting on their sub-items. Nesting adds blocked threads, not
        # running ones: the worker slots bound those.
        self._sub_pool = ThreadPool(max(4, 4 * config.workers_at_most), name="rowpilot-sub")
        self._logs: dict[str, IO[str]] = {}
        self._log_lock = threading.Lock()
        self._log_prefix: Path | None = None
        # --batch-api: steps that can wait go through the Batch API (llm/step_batches.py)
        self.batches: StepBatches | None = None
        if config.batch_api:
            from rowpilot.llm.step_batches import StepBatches

            self.batches = StepBatches(scope.registry.directory, self._session)
        if scope.events.jsonl_path is not None:
            self._log_prefix = scope.events.jsonl_path.with_suffix("")

    def _attach(self, model: str, session: LLMSession) -> LLMSession:
        session.attach(self._registry, self._counters, self.events, self._run_id)
        session.allow(self._workers.capacity)  # the executor's items in flight
        self._sessions[model] = session
        return session

    @property
    def events(self) -> EventLog:
        assert self._events is not None
        return self._events

    async def aclose(self) -> None:
        if self.batches is not None:
            self.batches.close()
        for session in self._sessions.values():
            await session.aclose()
        self._sub_pool.shutdown()
        with self._log_lock:
            for handle in self._logs.values():
                handle.close()
            self._logs.clear()

    def blocking(self, step: Coroutine[Any, Any, T]) -> T:
        """A step from a sync task's thread, run on the run's loop."""
        return run_blocking(self._loop, step)

    @property
    def registry(self) -> Registry:
        return self._registry

    def item_rates(self) -> Rates | None:
        """For ``--workers auto``: the item pace of the tightest rate-limited resource, and
        an item's service time (its waits at the limits left out), so Little's law sizes
        the workers per item, whatever each item calls (see ``item_pace``)."""
        counters = self._counters
        tightest: tuple[float, str] | None = None
        at_resources = 0.0  # an item's seconds in calls: calls an item x their latency
        for name, resource in self.resources().items():
            stats, limits = resource.stats(), resource.limits
            if stats["calls_ended"] and counters.started:
                latency = stats["call_seconds"] / stats["calls_ended"]
                at_resources += stats["requests"] / counters.started * latency
            pace = item_pace(
                requests_per_minute(
                    stats["effective_rpm"] or limits.rpm,
                    stats["effective_tpm"] or limits.tpm,
                    stats["least_tokens_per_call"],
                ),
                stats["requests"],
                counters.started,
            )
            if pace is not None and (tightest is None or pace[0] < tightest[0]):
                tightest = (pace[0], f"{name} at {pace[1]}")
        if tightest is None:
            return None
        return Rates(
            rpm=tightest[0], service_seconds=at_resources + self._own_seconds(), source=tightest[1]
        )

    def _own_seconds(self) -> float:
        """A finished item's mean time outside its steps: its own work. Waits at the limits
        are inside the steps, so they are never counted as service: with them in, more
        workers would wait longer, which would ask for more still."""
        counters = self._counters
        finished = counters.done + counters.failed
        if not finished:
            return 0.0
        return max(0.0, counters.task_seconds - counters.step_seconds) / finished

    def waited_seconds(self) -> float:
        """Seconds steps waited for their resources' limits, over the run."""
        return sum(float(r.stats()["waited_seconds"]) for r in self.resources().values())

    def resources(self) -> dict[str, Resource]:
        """Every resource the run's steps used: ctx.call names, and models for ctx.llm."""
        found = {name: resource for name, (resource, _) in self._resources.items()}
        found.update({model: session.resource for model, session in self._sessions.items()})
        return found

    def resource(self, name: str) -> Resource:
        """The named resource's limiter (for tests and the summary)."""
        return self._resource(name)[0]

    # -- ctx.llm ----------------------------------------------------------------------

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
        params: Mapping[str, Any],
        can_wait: bool = False,
    ) -> Any:
        chosen = model or self.config.model
        if chosen is None:
            raise ConfigError(
                "ctx.llm needs a model",
                hint="pass model='openai/gpt-4o-mini' to ctx.llm, or set the job's --model",
            )
        session = self._session(chosen)
        output_schema = schema_of(schema, what="ctx.llm's schema")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        request = conversation_request(
            system, messages, output_schema, key=key, structured=session.spec.structured
        )
        # The step's key holds the limit it had before limits came from schemas, so a
        # step journaled then replays; the request asks with the schema's bound.
        keyed = max_tokens or session.spec.max_tokens
        merged = {**session.spec.params, **params}
        signature = request.cache_key(session.provider.name, session.model, merged, keyed)
        step_key = trail.next_key(signature)
        tokens = max_tokens or _step_tokens(session.spec, output_schema, merged)
        cached = cache and session.spec.cache
        if can_wait and cached and self.batches is not None:
            call_key = session.step_call_key(request, step_key, tokens, merged)
            answer, journaled = session.journaled_step(
                output_schema, step_key=step_key, call_key=call_key, usage=usage
            )
            if answer is not None:
                return _typed_answer(answer, schema, output_schema)
            if not journaled and self._may_park(session, key):
                raise self.batches.park(
                    session, request, item_key=key, step_key=step_key, call_key=call_key,
                    max_tokens=tokens, params=merged,
                )  # fmt: skip
            # journaled but invalid or cut: repaired online, as a batch answer of a prompt
        with _timed(usage):
            answer = await session.step(
                request,
                output_schema,
                key=key,
                step_key=step_key,
                usage=usage,
                max_tokens=tokens,
                params=merged,
                cache=cached,
            )
        return _typed_answer(answer, schema, output_schema)

    def _may_park(self, session: LLMSession, key: str) -> bool:
        """Whether an item's can-wait step goes to a batch: not when batches gave up on
        the item's step (``max_attempts`` batches without an answer), which is then asked
        online with ``--batch-fallback online`` or fails."""
        assert self.batches is not None
        why = self.batches.exhausted.get(key)
        if why is None:
            return True
        if session.spec.batch_fallback == "online":
            return False
        error = ProviderServerError(
            f"no batch answered a ctx.llm step of key {key!r} in "
            f"{session.spec.batch_rounds} batch(es): {why}",
            provider=session.provider.name,
            model=session.model,
            key=key,
            hint="run again with --retry-failed, or with --batch-fallback online",
        )
        error.retryable = False  # the batches were the retries
        raise error

    def _session(self, model: str) -> LLMSession:
        session = self._sessions.get(model)
        if session is None:
            session = self._attach(
                model, step_session(self.config, model, self._environ, self.budget)
            )
        return session

    # -- ctx.call ---------------------------------------------------------------------

    async def call(
        self,
        usage: ItemUsage,
        trail: StepTrail,
        name: str,
        fn: Callable[..., Any],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        cost: float | Callable[[Any], float] | None,
        max_cost: float | None = None,
        journal: bool,
    ) -> Any:
        return await self.call_with(
            usage,
            trail,
            name,
            callable_name(fn),
            functools.partial(self._invoke, fn, args, kwargs),
            args,
            kwargs,
            cost=cost,
            max_cost=max_cost,
            journal=journal,
        )

    async def call_with(
        self,
        usage: ItemUsage,
        trail: StepTrail,
        name: str,
        label: str,
        invoke: Callable[[], Coroutine[Any, Any, Any]],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        cost: float | Callable[[Any], float] | None,
        max_cost: float | None,
        journal: bool,
    ) -> Any:
        """``ctx.call`` with the function's run left to ``invoke``: here, a thread of this
        process; for a task in a worker process, the worker itself (``executors.remote``),
        while the journal, limits, retries and budget stay here."""
        _check_cost(name, cost, max_cost)
        step_key = trail.next_key(_call_signature(name, label, args, kwargs)) if journal else ""
        if step_key and self.config.cache:
            cached = self.registry.cached_call(step_key)
            if cached is not None:
                usage.cached += 1
                usage.cost_usd += cached.cost_usd
                self._counters.cached += 1
                return json.loads(cached.response)
        worst = float(cost) if isinstance(cost, int | float) else float(max_cost or 0.0)

        def journaled(result: Any, spent: float, seconds: float) -> Any:
            usage.calls += 1
            usage.cost_usd += spent
            if not step_key:
                return result
            text = _journal_text(result, name, label)
            self.registry.journal(
                CallRecord(
                    call_key=step_key,
                    provider=name,
                    model=label,
                    run_id=self._run_id,
                    rows=1,
                    response=text,
                    finish_reason="ok",
                    input_tokens=0,
                    output_tokens=0,
                    cost_usd=spent,
                    seconds=seconds,
                )
            )
            return json.loads(text)

        with _timed(usage):
            return await self._paid(name)(
                invoke,
                worst=worst,
                what=f"{name} call",
                cost=lambda result: float(cost(result)) if callable(cost) else worst,
                journal=journaled,
            )

    def _paid(self, name: str) -> PaidCall:
        """The one paid-call path, with the resource's own limits, retry policy and
        errors read from what a ``ctx.call`` function raises."""
        resource, policy = self._resource(name)
        return PaidCall(
            resource,
            self.budget,
            self._counters,
            policy=policy,
            errors=functools.partial(provider_error_of, resource=name),
            on_retry=functools.partial(self._retrying, name),
        )

    def _retrying(self, name: str, attempt: int, delay: float, error: ProviderError) -> None:
        self._emit(
            "step.retry", resource=name, attempt=attempt, delay=round(delay, 3), error=str(error)
        )

    async def _invoke(
        self, fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> Any:
        if inspect.iscoroutinefunction(fn):
            return await fn(*args, **kwargs)
        value = await run_sync(self._sub_pool, functools.partial(fn, *args, **kwargs))
        if inspect.isawaitable(value):  # a sync wrapper around a coroutine function
            return await value
        return value

    def _resource(self, name: str) -> tuple[Resource, RetryPolicy]:
        found = self._resources.get(name)
        if found is None:
            found = _build_resource(name, self.config)
            if name not in self.config.limits:
                self._emit(
                    "resource.unlimited",
                    resource=name,
                    message=f"ctx.call({name!r}) has no [limits.{name}] table: only "
                    "--workers limits it",
                )
            self._resources[name] = found
        return found

    # -- ctx.map ----------------------------------------------------------------------

    async def map(
        self,
        subitems: Iterable[Any],
        fn: Callable[..., Any],
        ctx: Any,
        *,
        workers: int | None,
        return_exceptions: bool,
    ) -> list[Any]:
        items = list(subitems)
        if not items:
            return []
        if workers is not None and workers < 1:
            raise ConfigError(f"ctx.map workers must be at least 1, not {workers}")
        lanes = min(len(items), workers or len(items))
        results: list[Any] = [None] * len(items)
        failures: dict[int, BaseException] = {}
        parked: list[Parked] = []
        takes_ctx = takes_two(fn)

        async def run(index: int, subitem: Any, slot: Slots | None) -> None:
            arguments = (subitem, ctx) if takes_ctx else (subitem,)
            try:
                results[index] = await self._invoke(fn, arguments, {})
            except Exception as exc:  # reported with its sub-item below; a stop goes up
                failures[index] = exc
                results[index] = exc
            except Parked as wait:  # the others go on: their requests join the same batch
                parked.append(wait)
            finally:
                if slot is not None:
                    slot.release()

        await self._fan_out(collections.deque(enumerate(items)), lanes, run)
        if parked:
            raise parked[0]
        if failures and not return_exceptions:
            raise SubItemError.of(
                {index: (items[index], error) for index, error in sorted(failures.items())},
                total=len(items),
            )
        return results

    async def _fan_out(
        self,
        pending: collections.deque[tuple[int, Any]],
        lanes: int,
        run: Callable[[int, Any, Slots | None], Coroutine[Any, Any, None]],
    ) -> None:
        """Run ``pending`` in at most ``lanes`` at once: one on the parent's own worker slot,
        the others each on a slot of the run's pool while one is free. The parent's slot
        always comes back, so the sub-items finish even when every other slot is held by
        a parent waiting on its own sub-items."""
        pool = self._workers
        running: set[asyncio.Task[None]] = set()
        on_own_slot: asyncio.Task[None] | None = None
        slot_wait: asyncio.Task[None] | None = None
        try:
            while pending or running:
                while pending and len(running) < lanes:
                    if on_own_slot is None:
                        index, subitem = pending.popleft()
                        on_own_slot = asyncio.create_task(run(index, subitem, None))
                        running.add(on_own_slot)
                    elif slot_wait is not None and slot_wait.done():
                        slot_wait = None  # the slot is held now: run releases it
                        index, subitem = pending.popleft()
                        running.add(asyncio.create_task(run(index, subitem, pool)))
                    else:
                        slot_wait = slot_wait or asyncio.create_task(pool.acquire())
                        break
                waits = set(running)
                if pending and slot_wait is not None:
                    waits.add(slot_wait)
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                running -= done
                if on_own_slot in done:
                    on_own_slot = None
        finally:
            if slot_wait is not None:
                slot_wait.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await slot_wait
                if not slot_wait.cancelled():
                    pool.release()  # acquired, then not needed: the items ran out
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    # -- ctx.log ----------------------------------------------------------------------

    def log(self, kind: str, record: dict[str, Any]) -> None:
        if not _LOG_KIND.fullmatch(kind):
            raise ConfigError(
                f"ctx.log kind {kind!r} must be 1-40 letters, digits, '-' or '_'",
                hint="e.g. ctx.log('review', verdict='pass')",
            )
        if self._log_prefix is None:
            return  # no log folder (a run without state logs)
        line = json.dumps(record, ensure_ascii=False, default=str)
        with self._log_lock:
            handle = self._logs.get(kind)
            if handle is None:
                path = self._log_prefix.with_name(f"{self._log_prefix.name}.{kind}.jsonl")
                handle = path.open("a", encoding="utf-8")
                self._logs[kind] = handle
            handle.write(line + "\n")
            handle.flush()

    def _emit(self, event: str, **fields: Any) -> None:
        if self._events is not None:
            self._events.emit(event, **fields)


# -- helpers --------------------------------------------------------------------------------


def step_session(
    config: JobConfig, model: str, environ: Mapping[str, str], budget: Budget
) -> LLMSession:
    """A ctx.llm session for ``model``, sharing the task's budget."""
    from rowpilot.llm.session import LLMSession, build_step_spec

    spec = build_step_spec(config, model, environ, config.workers_at_most)
    return LLMSession(spec, budget=budget)


async def preflight_sessions(
    config: JobConfig,
) -> tuple[Budget, dict[str, str], dict[str, LLMSession]]:
    """Before the state is touched: the budget a Python task's steps share, its keys, and
    the job's own model (if it names one) checked with one cheap call."""
    budget = Budget(config.budget)
    environ = dict(load_environ(config.env_file))
    if config.model is None:
        return budget, environ, {}
    session = step_session(config, config.model, environ, budget)
    try:
        await session.preflight()
    except BaseException:
        await session.aclose()
        raise
    return budget, environ, {config.model: session}


def _step_tokens(spec: PromptSpec, schema: OutputSchema, params: Mapping[str, Any]) -> int:
    """A ctx.llm call's max_tokens when the call gives none: the job's when it gives one,
    else the call's schema's bound (``answer_bound``; the default for free text)."""
    if spec.tokens.source == "given":
        return spec.max_tokens
    return _bound_tokens(schema, spec.model, tuple(sorted(params)))


@functools.lru_cache(maxsize=256)
def _bound_tokens(schema: OutputSchema, model: str, param_names: tuple[str, ...]) -> int:
    bounded = None if schema.is_text else schema.json_schema()
    chosen = choose_answer_tokens(
        given=None,
        schema=bounded,
        what=f"{len(schema.field_names)} fields",
        model=model,
        params=dict.fromkeys(param_names),
        batch_size=1,
    )
    return chosen.per_row


def _build_resource(name: str, config: JobConfig) -> tuple[Resource, RetryPolicy]:
    table = config.limits.get(name, {})
    unknown = set(table) - _RESOURCE_SETTINGS
    if unknown and "/" not in name:
        raise ConfigError(
            f"[limits.{name}] has an unknown setting {sorted(unknown)[0]!r}",
            hint="a ctx.call resource takes rpm, max_concurrent, max_attempts and retry_delay",
        )
    concurrent = table.get("max_concurrent")
    limits = Limits(
        rpm=table.get("rpm"),
        max_concurrent=int(concurrent) if concurrent is not None else None,
    )
    policy = RetryPolicy(
        max_attempts=int(table.get("max_attempts", config.max_attempts)),
        base_delay=float(table.get("retry_delay", config.retry_delay)),
        max_delay=config.max_retry_delay,
    )
    # Limits given are kept (learn=False): a generic API's headers are not the providers'.
    return Resource(name, limits, learn=False, share=config.limits_share), policy


def provider_error_of(exc: BaseException, resource: str) -> ProviderError | None:
    """A ``ctx.call`` failure as a provider error when its class says how to treat it:
    an HTTP status (``status_code``, ``status`` or ``response.status_code``), a timeout
    or a dropped connection. Anything else is the task's own error (None)."""
    from rowpilot.llm.providers import _class_for_status

    if isinstance(exc, ProviderError):
        return exc
    status = _status_of(exc)
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if status is not None:
        cls = _class_for_status(status, None)
        retry_after = _retry_after_of(exc)
        error = cls(message, provider=resource, status=status, retry_after=retry_after)
        return error
    if isinstance(exc, TimeoutError):
        return ProviderTimeoutError(message, provider=resource)
    if isinstance(exc, ConnectionError):
        refused = isinstance(exc, ConnectionRefusedError)  # nothing left: nothing to bill
        return ProviderConnectionError(message, provider=resource, sent=not refused)
    return None


def _status_of(exc: BaseException) -> int | None:
    for holder in (exc, getattr(exc, "response", None)):
        for name in ("status_code", "status"):
            value = getattr(holder, name, None)
            if isinstance(value, int) and 100 <= value <= 599:
                return value
    return None


def _retry_after_of(exc: BaseException) -> float | None:
    """What the error's headers (its own or its response's) ask to wait, whatever kind of
    headers object its HTTP library has (httpx, requests, aiohttp, urllib)."""
    for holder in (exc, getattr(exc, "response", None)):
        headers = getattr(holder, "headers", None)
        if headers is None:
            continue
        try:
            named = {str(name): str(value) for name, value in headers.items()}
        except (AttributeError, TypeError, ValueError):
            return None
        return parse_retry_after(named)
    return None


def _check_cost(
    name: str, cost: float | Callable[[Any], float] | None, max_cost: float | None
) -> None:
    """A cost known only after the call cannot be reserved before it: its ceiling can."""
    if callable(cost) and max_cost is None:
        raise ConfigError(
            f"ctx.call({name!r}, ..., cost=<function>) needs max_cost=: the most one call can "
            "cost, reserved from the budget before the call",
            hint="pass max_cost=0.01 (USD) beside cost=..., or a fixed cost=0.001",
        )
    if max_cost is not None and (not isinstance(max_cost, int | float) or max_cost < 0):
        raise ConfigError(f"ctx.call({name!r}): max_cost must be a number of USD >= 0")


def callable_name(fn: Callable[..., Any]) -> str:
    """How the journal names a ``ctx.call`` function: the same in every process."""
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{module}.{name}" if module else name


def _call_signature(
    resource: str, label: str, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> str:
    try:
        asked = json.dumps(
            {"resource": resource, "fn": label, "args": list(args), "kwargs": dict(kwargs)},
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
        )
    except (TypeError, ValueError) as exc:
        raise TaskOutputError(
            f"ctx.call({resource!r}, {label}) has arguments that cannot be journaled: {exc}",
            hint="pass JSON values (str, numbers, lists, dicts) as arguments, or "
            "journal=False for a call that need not be replayed",
        ) from None
    return asked


def _journal_text(result: Any, resource: str, label: str) -> str:
    value = result.model_dump(mode="json") if isinstance(result, BaseModel) else result
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TaskOutputError(
            f"ctx.call({resource!r}, {label}) returned a {type(result).__name__}, "
            f"which cannot be journaled: {exc}",
            hint="return JSON values (dict, list, str, numbers), or pass journal=False",
        ) from None


def _typed_answer(answer: dict[str, Any], given: Any, schema: OutputSchema) -> Any:
    """What ``ctx.llm`` returns: text without a schema, the model's instance for a pydantic
    model, else the validated dict."""
    if schema.is_text:
        return answer[_TEXT]
    if isinstance(given, type) and issubclass(given, BaseModel):
        return given.model_validate(answer)
    return answer


def takes_two(fn: Callable[..., Any]) -> bool:
    """Whether a ``ctx.map`` function takes the ctx as well as its sub-item."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in parameters)


def item_pace(
    requests_per_minute: float | None, requests: int, started: int
) -> tuple[float, str] | None:
    """Items a minute that a resource allows, and how: its requests a minute over the
    calls an item makes of it (an item making 3 calls goes at a third of the rate).

    The calls an item makes are counted against the items *started*, not finished: while
    many are in flight, the calls of unfinished items would make every item look like it
    makes more, and the pace read low. Against started items it reads high while items
    have yet to make their later calls, which sizes for more workers than needed (they
    wait their turn at the limiter), never for fewer."""
    if requests_per_minute is None or requests <= 0 or started <= 0:
        return None
    calls = requests / started
    pace = requests_per_minute / calls
    return pace, f"{requests_per_minute:.0f} rpm / {calls:.2f} calls an item = {pace:.0f} items/min"


@contextlib.contextmanager
def _timed(usage: ItemUsage) -> Iterator[None]:
    """Adds the step's time to the item's (``--workers auto`` tells its own work apart)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        usage.step_seconds += time.perf_counter() - started
