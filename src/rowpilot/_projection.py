"""Projections: from what a job's first items cost and took (the registry's averages)
to what the rest should cost and take, bound by the workers and each resource's limits.
See ``rowpilot._estimate`` for the method."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rowpilot._format import duration
from rowpilot.errors import ConfigError
from rowpilot.llm.batch_client import COMPLETION_WINDOW
from rowpilot.llm.cost import Price, cost_usd
from rowpilot.llm.limits import Limits
from rowpilot.state.registry import Registry


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
    notes: tuple[str, ...] = ()  # settings the task chose and why, one line each
    # an item's cost through the Batch API (its online requests at the batch price), if priced
    batch_cost_per_item: float | None = None

    @property
    def calls_left(self) -> int:
        return math.ceil(self.remaining / max(self.rows_per_call, 1.0))

    @property
    def batch_cost(self) -> float | None:
        """The rest's cost through the provider's Batch API (``--batch-api``)."""
        per_item = self.batch_cost_per_item
        return None if per_item is None else self.remaining * per_item

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
            f"time: {duration(self.sequential_seconds)} one call at a time, "
            f"{duration(self.parallel_seconds)} with {self.workers} workers "
            f"(bound by {binding}{'; limits ' + limits if limits else ''})",
            *self._batch_lines(),
            *self.notes,
        ]

    def _batch_lines(self) -> list[str]:
        if self.batch_cost is None or self.batch_cost_per_item is None:
            return []
        share = f", {self.batch_cost / self.cost:.0%} of online" if self.cost > 0 else ""
        return [
            f"through the Batch API (--batch-api): ${self.batch_cost:,.4f} "
            f"more (${self.batch_cost_per_item:.6f} per item{share}), answers within "
            f"{COMPLETION_WINDOW} (the provider's completion window)"
        ]


def project_calls(
    state: Path,
    total: int,
    *,
    workers: int,
    max_tokens: int,
    limits: Limits,
    notes: tuple[str, ...] = (),
    batch_price: Price | None = None,
) -> Projection:
    """A prompt job's rest: its calls (rows per call as journaled) under its model's limits;
    ``batch_price`` prices the rest through the Batch API too: the same requests (a batch
    request carries the rows an online one does), at the batch price."""
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
    return Projection(
        total=total,
        done=done,
        calls=int(profile["calls"]),
        cost_per_item=profile["cost_per_item"],
        seconds_per_call=profile["seconds"],
        rows_per_call=rows,
        tokens_per_call=profile["input_tokens"] + max_tokens * rows,
        workers=workers,
        limits=limits,
        notes=notes,
        batch_cost_per_item=_batch_cost(batch_price, profile),
    )


def _batch_cost(price: Price | None, profile: Mapping[str, float]) -> float | None:
    """An item's cost through the Batch API: the sample's average call at the batch
    price, shared by the rows it carried."""
    if price is None:
        return None
    rows = profile["rows"] or 1.0
    calls_cost = cost_usd(price, round(profile["input_tokens"]), round(profile["output_tokens"]))
    return calls_cost / rows


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
            f"time: {duration(self.sequential_seconds)} one item at a time, "
            f"{duration(self.parallel_seconds)} with {self.workers} workers "
            f"(bound by {binding}{'; limits ' + limits if limits else ''})",
        ]


def project_items(
    state: Path, total: int, *, workers: int, max_tokens: int, limits: dict[str, Limits]
) -> TaskProjection:
    """A Python task's rest: its items, each making its steps' calls of each resource."""
    registry = Registry(state)
    try:
        if not registry.exists:
            raise _nothing_to_estimate()
        paid, cost, done, task_seconds, journal = registry.step_profile()
    finally:
        registry.close()
    if not done:
        raise _nothing_to_estimate()
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
        workers=workers,
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


Estimate = Projection | TaskProjection
