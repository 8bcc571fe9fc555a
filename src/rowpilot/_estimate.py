"""Estimates: run a sample of the job for real, then project its cost and time.

The sample's calls are ordinary calls of the job: journaled and recorded, so the full run
never pays for them again. The projection reads the registry's averages (every call the
job made so far, not just this sample's) and the limits the provider resource knows,
given or learned from the response headers:

* cost = items still to do x cost per paid item;
* sequential time = requests still to make x mean latency;
* parallel time = the slowest of three bounds: the workers (requests at once x latency),
  requests/min, and tokens/min (prompt + max_tokens per request, as providers count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from rowpilot._config import JobConfig
from rowpilot._engine import execute, prepare
from rowpilot._limits import Limits
from rowpilot._llm import DEFAULT_MAX_TOKENS, LLMSession, PromptTask
from rowpilot._progress import ProgressView
from rowpilot._registry import Registry
from rowpilot._result import Result
from rowpilot.errors import ConfigError


@dataclass(frozen=True)
class Projection:
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
    def remaining(self) -> int:
        return max(0, self.total - self.done)

    @property
    def calls_left(self) -> int:
        return math.ceil(self.remaining / max(self.rows_per_call, 1.0))

    @property
    def cost(self) -> float:
        return self.remaining * self.cost_per_item

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

    @property
    def parallel_seconds(self) -> float:
        return max(self.bounds().values())

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
) -> tuple[Result, Projection]:
    """Run the first ``sample`` items of a prompt job for real; project the rest."""
    if not config.is_prompt:
        raise ConfigError(
            "estimates are for prompt jobs", hint="give --prompt/--labels and --model"
        )
    whole = prepare(config)
    limit = sample if config.limit is None else min(sample, config.limit)
    sampled = prepare(config.model_copy(update={"limit": limit}))
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
