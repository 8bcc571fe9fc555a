"""Estimates: run a sample of the job for real, then project its cost and time.

The sample's calls are ordinary calls of the job: journaled and recorded, so the full run
never pays for them again. The projection reads the registry's averages (every call the
job made so far, not just this sample's) and the limits the provider resource knows,
given or learned from the response headers:

* cost = items still to do x cost per paid item; for a prompt task, also through the
  provider's Batch API (the same calls' tokens at the batch price) and its completion
  window; the sample itself is asked online, even for a ``--batch-api`` job;
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

import json
import time
from pathlib import Path

from rowpilot._config import JobConfig
from rowpilot._projection import Projection, ResourceUse, TaskProjection
from rowpilot._result import Result
from rowpilot.engine.job import execute, prepare
from rowpilot.engine.progress import ProgressView
from rowpilot.report.data import ESTIMATE_FILE
from rowpilot.sinks.atomic import write_text_atomic
from rowpilot.state.registry import Registry
from rowpilot.tasks.factory import build_task

__all__ = ["Projection", "ResourceUse", "TaskProjection", "sample_and_project"]


async def sample_and_project(
    config: JobConfig, sample: int, progress: ProgressView | None = None
) -> tuple[Result, Projection | TaskProjection]:
    """Run the first ``sample`` items of the job for real; project the rest from them and
    from the limits the task's resources ended the sample with (learned ones included)."""
    build_task(config).check_estimable()  # before the source is read: say it at once
    whole = prepare(config)
    limit = sample if config.limit is None else min(sample, config.limit)
    # The sample is asked online even for a --batch-api job: a batch may take hours.
    sampled = prepare(config.model_copy(update={"limit": limit, "batch_api": False}))
    result = await execute(sampled, progress)
    total = whole.scan.total if whole.scan else 0
    projection = sampled.task.project(whole.state, total, workers=config.workers_at_most)
    _remember(whole.state, sample, projection)
    return result, projection


def _remember(state: Path, sample: int, projection: Projection | TaskProjection) -> None:
    """Keep the estimate beside the job's registry (``ESTIMATE_FILE``), so ``rowpilot
    report`` can set the real run beside it: the whole job's cost (spent so far + the
    rest's projection) and the rest's time."""
    registry = Registry(state)
    try:
        spent = float(registry.spending()["cost_usd"])
    finally:
        registry.close()
    batch = projection.batch_cost if isinstance(projection, Projection) else None
    estimate = {
        "made_at": time.time(),
        "sample": sample,
        "total": projection.total,
        "cost_usd": spent + projection.cost,
        "batch_cost_usd": None if batch is None else spent + batch,
        "seconds": projection.parallel_seconds,
    }
    write_text_atomic(state / ESTIMATE_FILE, json.dumps(estimate, indent=1) + "\n")
