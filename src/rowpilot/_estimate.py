"""Estimates: run a sample of the job for real, then project its cost and time.

The sample's calls are ordinary calls of the job: journaled and recorded, so the full run
never pays for them again. The projection reads the registry's averages (every call the
job made so far, not just this sample's) and the limits the provider resource knows,
given or learned from the response headers:

* cost = items still to do x cost per paid item;
* sequential time = requests still to make x mean latency;
* parallel time = the slowest of three bounds: the workers (requests at once x latency),
  requests/min, and tokens/min (prompt + max_tokens per request, as providers count).

A Python task's steps (``ctx.llm``, ``ctx.call``) are projected the same way, per
resource: the journal says how many calls of each resource an item makes and how long
each takes, the run's resources say their limits (``[limits.NAME]``, the model's given or
learned ones), and the slowest of the workers and every resource's requests/min,
tokens/min and max_concurrent bounds the parallel time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rowpilot._config import JobConfig
from rowpilot._engine import PreparedJob, execute, prepare
from rowpilot._limits import Limits
from rowpilot._llm import DEFAULT_MAX_TOKENS, LLMSession, PromptTask
from rowpilot._progress import ProgressView
from rowpilot._registry import Registry
from rowpilot._result import Result
from rowpilot.errors import ConfigError

if TYPE_CHECKING:
    from rowpilot._steps import Steps


class _Rest:
    """What both projections derive from the items left and the bounds on their time."""

    total: int  # items in the job's selection
    done: int  # items done so far (the sample's included)
    cost_per_item: float

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.done)

    @property
    def cost(self) -> float:
        return self.remaining * self.cost_per_item

    def bounds(self) -> dict[str, float]:
        raise NotImplementedError

    @property
    def parallel_seconds(self) -> float:
        """The slowest of the bounds: the rest's time with every limit at once."""
        return max(self.bounds().values())


@dataclass(frozen=True)
class Projection(_Rest):
    """What the rest of a job should cost and take, from what it has cost and taken."""

    total: int  # items in the job's selection
    done: int  # items done so far (the sample's included)
    calls: int  # calls journaled so far
    cost_per_item: float
    seconds_per_call: float
    rows_per_call: float
    tokens_per_call: float  # prompt tokens + max_tokens: what a tokens/min limit counts
    workers: int
    limits: Limits

    @property
    def calls_left(self) -> int:
        return math.ceil(self.remaining / max(self.rows_per_call, 1.0))

    @property
    def sequential_seconds(self) -> float:
        return self.calls_left * self.seconds_per_call

    def bounds(self) -> dict[str, float]:
        """Seconds the rest takes under each limit on its own."""
        concurrency = self.workers
        if self.limits.max_concurrent is not None:
            concurrency = min(concurrency, self.limits.max_concurrent)
        bounds = {"workers": self.calls_left * self.seconds_per_call / max(concurrency, 1)}
        if self.limits.rpm:
            bounds["requests/min"] = self.calls_left / (self.limits.rpm / 60)
        if self.limits.tpm:
            bounds["tokens/min"] = self.calls_left * self.tokens_per_call / (self.limits.tpm / 60)
        return bounds

    def lines(self) -> list[str]:
        bounds = self.bounds()
        binding = max(bounds, key=lambda name: bounds[name])
        limits = ", ".join(
            f"{name} {value:,.0f}"
            for name, value in (
                ("rpm", self.limits.rpm),
                ("tpm", self.limits.tpm),
                ("max concurrent", self.limits.max_concurrent),
            )
            if value
        )
        return [
            f"estimate from {self.calls:,} calls for {self.done:,} done items "
            f"({self.rows_per_call:.1f} rows per call, {self.seconds_per_call:.2f}s each)",
            f"still to do: {self.remaining:,} items in about {self.calls_left:,} calls",
            f"cost: ${self.cost:,.4f} more (${self.cost_per_item:.6f} per item)",
            f"time: {_duration(self.sequential_seconds)} one call at a time, "
            f"{_duration(self.parallel_seconds)} with {self.workers} workers "
            f"(bound by {binding}{'; limits ' + limits if limits else ''})",
        ]


async def sample_and_project(
    config: JobConfig, sample: int, progress: ProgressView | None = None
) -> tuple[Result, Projection | TaskProjection]:
    """Run the first ``sample`` items of a prompt job or a Python task for real; project
    the rest."""
    if config.is_local:
        raise ConfigError(
            "the local model costs nothing and has no rate limits to estimate",
            hint="estimates are for prompt jobs and Python tasks that call providers",
        )
    whole = prepare(config)
    limit = sample if config.limit is None else min(sample, config.limit)
    sampled = prepare(config.model_copy(update={"limit": limit}))
    if not config.is_prompt:
        return await _sample_task(whole, sampled, progress)
    assert isinstance(sampled.task.fn, PromptTask)
    session = LLMSession(sampled.task.fn.spec)
    try:
        await session.preflight()
        result = await execute(sampled, progress, session)
        limits = session.resource.limits
    finally:
        await session.aclose()
    return result, _project(whole.state, whole.scan.total if whole.scan else 0, config, limits)


def _project(state: Path, total: int, config: JobConfig, limits: Limits) -> Projection:
    registry = Registry(state)
    try:
        profile = registry.call_profile() if registry.exists else {"calls": 0}
        done = registry.counts()["done"] if registry.exists else 0
    finally:
        registry.close()
    if not profile["calls"]:
        raise ConfigError(
            "no provider call was made, so there is nothing to estimate from",
            hint="the sampled items were all done before: raise --sample",
        )
    rows = profile["rows"]
    max_tokens = (config.max_tokens or DEFAULT_MAX_TOKENS) * rows
    return Projection(
        total=total,
        done=done,
        calls=int(profile["calls"]),
        cost_per_item=profile["cost_per_item"],
        seconds_per_call=profile["seconds"],
        rows_per_call=rows,
        tokens_per_call=profile["input_tokens"] + max_tokens,
        workers=config.workers_at_most,
        limits=limits,
    )


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# -- Python tasks: ctx.llm and ctx.call steps -------------------------------------------------


@dataclass(frozen=True)
class ResourceUse:
    """What one resource (``[limits.NAME]`` of ctx.call, or a model) costs an item."""

    name: str
    calls_per_item: float
    seconds_per_call: float
    tokens_per_call: float  # prompt + max_tokens for a model; 0 for a ctx.call resource
    limits: Limits

    def bounds(self, items: int) -> dict[str, float]:
        """Seconds ``items`` more items take under each of this resource's limits alone."""
        calls = items * self.calls_per_item
        bounds: dict[str, float] = {}
        if self.limits.rpm:
            bounds[f"{self.name} requests/min"] = calls / (self.limits.rpm / 60)
        if self.limits.tpm and self.tokens_per_call:
            tokens = calls * self.tokens_per_call
            bounds[f"{self.name} tokens/min"] = tokens / (self.limits.tpm / 60)
        if self.limits.max_concurrent:
            seconds = calls * self.seconds_per_call / self.limits.max_concurrent
            bounds[f"{self.name} max concurrent"] = seconds
        return bounds

    def describe_limits(self) -> str:
        given = (
            ("rpm", self.limits.rpm),
            ("tpm", self.limits.tpm),
            ("max concurrent", self.limits.max_concurrent),
        )
        shown = ", ".join(f"{name} {value:,.0f}" for name, value in given if value)
        return f"{self.name} {shown}" if shown else ""


@dataclass(frozen=True)
class TaskProjection(_Rest):
    """A Python task's projection: items, each making its steps' calls."""

    total: int
    done: int
    calls: int  # calls journaled so far
    cost_per_item: float
    seconds_per_item: float  # the item's calls one after the other
    workers: int
    resources: tuple[ResourceUse, ...]

    @property
    def calls_left(self) -> int:
        return math.ceil(self.remaining * sum(r.calls_per_item for r in self.resources))

    @property
    def sequential_seconds(self) -> float:
        return self.remaining * self.seconds_per_item

    def bounds(self) -> dict[str, float]:
        bounds = {"workers": self.sequential_seconds / max(self.workers, 1)}
        for resource in self.resources:
            bounds.update(resource.bounds(self.remaining))
        return bounds

    def lines(self) -> list[str]:
        bounds = self.bounds()
        binding = max(bounds, key=lambda name: bounds[name])
        per_item = ", ".join(f"{r.name} {r.calls_per_item:.1f}" for r in self.resources)
        limits = "; ".join(filter(None, (r.describe_limits() for r in self.resources)))
        return [
            f"estimate from {self.calls:,} calls for {self.done:,} done items "
            f"(calls per item: {per_item or 'none'}; {self.seconds_per_item:.2f}s per item)",
            f"still to do: {self.remaining:,} items, about {self.calls_left:,} calls",
            f"cost: ${self.cost:,.4f} more (${self.cost_per_item:.6f} per item)",
            f"time: {_duration(self.sequential_seconds)} one item at a time, "
            f"{_duration(self.parallel_seconds)} with {self.workers} workers "
            f"(bound by {binding}{'; limits ' + limits if limits else ''})",
        ]


async def _sample_task(
    whole: PreparedJob, sampled: PreparedJob, progress: ProgressView | None
) -> tuple[Result, TaskProjection]:
    # The engine's own run with a Steps made here, not by execute(): the resources it ends
    # with hold the limits the run used, learned ones included, which the projection needs.
    from rowpilot._engine import _execute
    from rowpilot._steps import Steps

    steps = Steps(sampled.config)
    try:
        await steps.preflight()
        result = await _execute(sampled, progress, None, steps)
        limits = _step_limits(steps)
    finally:
        await steps.aclose()
    total = whole.scan.total if whole.scan else 0
    return result, _project_task(whole.state, total, whole.config, limits)


def _step_limits(steps: Steps) -> dict[str, Limits]:
    """The limits each resource of the run ended with, by ctx.call name or model."""
    return {name: resource.limits for name, resource in steps.resources().items()}


def _project_task(
    state: Path, total: int, config: JobConfig, limits: dict[str, Limits]
) -> TaskProjection:
    registry = Registry(state)
    try:
        if not registry.exists:
            raise _nothing_to_estimate()
        db = registry.db()
        paid, cost = db.execute(
            "SELECT count(*), avg(cost_usd) FROM items WHERE status = 'done' AND calls > 0"
        ).fetchone()
        done, task_seconds = db.execute(
            "SELECT count(*), avg(task_seconds) FROM items WHERE status = 'done'"
        ).fetchone()
        journal = db.execute(
            "SELECT provider, model, finish_reason = 'ok' AND input_tokens = 0, count(*),"
            " sum(coalesce(seconds, 0)), sum(input_tokens) FROM calls GROUP BY 1, 2, 3"
        ).fetchall()
    finally:
        registry.close()
    if not done:
        raise _nothing_to_estimate()
    max_tokens = config.max_tokens or DEFAULT_MAX_TOKENS
    uses: dict[tuple[str, bool], list[float]] = {}  # (name, is a model): calls, seconds, tokens
    for provider, model, plain, count, seconds, tokens in journal:
        name, is_model = _resource_of(provider, model, bool(plain), limits)
        totals = uses.setdefault((name, is_model), [0.0, 0.0, 0.0])
        for index, value in enumerate((count, seconds, tokens)):
            totals[index] += float(value or 0)
    items = paid or done  # the calls divide among the items that made them
    resources = tuple(
        ResourceUse(
            name=name,
            calls_per_item=calls / items,
            seconds_per_call=seconds / calls,
            tokens_per_call=tokens / calls + max_tokens if is_model else 0.0,
            limits=limits.get(name, Limits()),
        )
        for (name, is_model), (calls, seconds, tokens) in sorted(uses.items())
    )
    # One item at a time spends its calls' own time, not the queueing at the limits that a
    # parallel sample's task_seconds include; an item without calls, its task time.
    per_item = sum(r.calls_per_item * r.seconds_per_call for r in resources)
    return TaskProjection(
        total=total,
        done=int(done),
        calls=int(sum(row[3] for row in journal)),
        cost_per_item=float(cost or 0.0),
        seconds_per_item=per_item or float(task_seconds or 0.0),
        workers=config.workers_at_most,
        resources=resources,
    )


def _resource_of(
    provider: str, model: str, plain: bool, known: dict[str, Limits]
) -> tuple[str, bool]:
    """A journal entry's resource and whether it is a model: ctx.call journals under the
    resource's name (its fn as the model, no tokens, finish ``ok``), ctx.llm under the
    provider and model."""
    as_model = f"{provider}/{model}"
    if as_model in known:
        return as_model, True
    if provider in known:
        return provider, False
    return (provider, False) if plain else (as_model, True)


def _nothing_to_estimate() -> ConfigError:
    return ConfigError(
        "no item is done, so there is nothing to estimate from",
        hint="raise --sample, or check the sample's failures with rowpilot failures",
    )
