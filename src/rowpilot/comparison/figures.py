"""What each model's run on the sample cost and took, read from its own registry.

* **cost per 1,000 rows**: the USD of every call journaled in the model's state (repairs
  and retries included) / the rows in that state x 1,000 (the state holds this sample's
  rows, and an earlier, larger sample's); *online* is what the calls were
  charged, *batch* the same calls' tokens at the provider's Batch API price
  (``find_price(batch=True)``: genai-prices' batch rates, the online price where it has
  none; a ``[prices]`` override is both). *Projected* is the per-row cost times the
  rows of the whole job's selection.
* **latency p50 / p95**: nearest-rank percentiles of the journaled calls' seconds (a call
  of ``--batch-size N`` carries N rows).
* **invalid-answer rate**: the sample's rows whose answer never passed the schema (failed
  with cause ``invalid_output`` after the repairs) / the sample rows the model ran (a
  run the budget stopped leaves rows not reached: they count in neither).

The journal keeps every call of every run of the state, so a re-run, which pays nothing,
reports the same figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rowpilot.comparison.agreement import FieldAgreement
from rowpilot.llm.cost import Price, cost_usd, find_price
from rowpilot.state.registry import Registry

_INVALID = "invalid_output"


@dataclass(frozen=True)
class CallCosts:
    """The journal of one model's state, summed, and the rows its calls answered."""

    rows: int  # items in the state (this sample's, and an earlier larger sample's)
    calls: int
    online_usd: float
    batch_usd: float
    priced: bool  # every call's model has a known price
    seconds: tuple[float, ...]  # each timed call's latency, sorted


@dataclass(frozen=True)
class ModelFigures:
    """One model's line of the comparison."""

    model: str
    rows: int  # sample rows the model has an outcome for
    answered: int
    invalid: int
    costs: CallCosts
    agreement: tuple[FieldAgreement, ...] = ()
    baseline: str = ""  # what agreement compares with: a model, or "reference COLUMN"

    def per_1000(self, usd: float) -> float:
        """``usd`` (one of ``costs``' sums) per 1,000 of the rows the calls answered."""
        return usd / self.costs.rows * 1000 if self.costs.rows else 0.0

    def projected(self, usd: float, total: int) -> float:
        """``usd`` per row, times the whole job's ``total`` rows."""
        return usd / self.costs.rows * total if self.costs.rows else 0.0

    @property
    def invalid_rate(self) -> float:
        return self.invalid / self.rows if self.rows else 0.0

    def latency(self, share: float) -> float | None:
        return percentile(self.costs.seconds, share)


def percentile(sorted_values: Sequence[float], share: float) -> float | None:
    """The nearest-rank percentile: the smallest value with at least ``share`` of the
    values at or below it; None for no values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(share * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def call_costs(state: Path, overrides: Mapping[str, Price]) -> CallCosts:
    """Sum the journal of ``state``: online cost as charged, batch cost at batch prices."""
    registry = Registry(state)
    try:
        calls = registry.call_figures() if registry.exists else []
        rows = registry.item_count() if registry.exists else 0
    finally:
        registry.close()
    prices: dict[tuple[str, str], Price | None] = {}
    batch: list[float] = []
    for provider, model, _, input_tokens, output_tokens, _ in calls:
        if (provider, model) not in prices:
            prices[provider, model] = find_price(provider, model, overrides, batch=True)
        batch.append(cost_usd(prices[provider, model], input_tokens, output_tokens))
    return CallCosts(
        rows=rows,
        calls=len(calls),
        online_usd=math.fsum(call[5] for call in calls),
        batch_usd=math.fsum(batch),
        priced=all(price is not None for price in prices.values()),
        seconds=tuple(sorted(call[2] for call in calls if call[2] is not None)),
    )


def outcome_counts(statuses: Sequence[tuple[str, str | None]]) -> tuple[int, int, int]:
    """(rows, answered, invalid) from each row's (status, cause)."""
    answered = sum(1 for status, _ in statuses if status == "done")
    invalid = sum(1 for status, cause in statuses if status == "failed" and cause == _INVALID)
    return len(statuses), answered, invalid
