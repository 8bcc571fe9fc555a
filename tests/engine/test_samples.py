"""Samples (``rowpilot.engine.samples``): what a run writes to its event log for the report,
how often (a period that grows with the run), and the last one at the end; driven by a
clock the test moves."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

import rowpilot
from rowpilot._latency import LatencyHistogram, bounds, bucket_of, merged, quantile
from rowpilot.engine.events import EventLog
from rowpilot.engine.progress import Counters, NoProgress
from rowpilot.engine.samples import MAX_DENSE, MIN_PERIOD, SAMPLE_EVENT, Sampler
from rowpilot.tasks.base import Task


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class OneResource(Task):
    """A task seen only through its resources' figures."""

    name = "probe"
    version = "v"

    def call(self, row: dict[str, Any], ctx: Any) -> Any:
        return row

    def resource_stats(self) -> dict[str, dict[str, Any]]:
        return {"api": {"requests": 3, "rate_limited": 1, "rpm": 60.0, "secret": "kept out"}}


def samples(folder: Path) -> list[dict[str, Any]]:
    lines = [
        json.loads(line)
        for path in folder.glob("*.jsonl")
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    return [line for line in lines if line["event"] == SAMPLE_EVENT]


def test_a_sample_a_period_at_most_and_the_last_one_always(tmp_path: Path) -> None:
    clock, counters = Clock(), Counters(total=10)
    events = EventLog(tmp_path, "run-1")
    sampler = Sampler(NoProgress(), OneResource(), events, clock=clock)
    sampler.start(counters)  # the zero point
    for step in range(1, 40):
        clock.now = step * 0.25  # ten seconds in quarter-second refreshes
        counters.done = step
        sampler.refresh(counters)
    counters.done = 99
    sampler.sample(counters, final=True)
    events.close()
    written = samples(tmp_path)
    assert [s["elapsed"] for s in written] == [0.0, *range(1, 10), 9.75]
    assert written[-1]["done"] == 99
    api = written[1]["resources"]["api"]
    assert (api["requests"], api["rate_limited"], api["rpm"]) == (3, 1, 60.0)
    assert api["latency_counts"] is None  # what the resource did not say stays unknown
    assert "secret" not in json.dumps(written)


def test_the_period_grows_with_the_run(tmp_path: Path) -> None:
    clock, counters = Clock(), Counters()
    events = EventLog(tmp_path, "run-2")
    sampler = Sampler(NoProgress(), OneResource(), events, clock=clock)
    sampler.start(counters)
    day = 86_400.0
    while clock.now < day:
        clock.now += MIN_PERIOD
        sampler.refresh(counters)
    events.close()
    written = samples(tmp_path)
    assert len(written) < MAX_DENSE * 7  # a day, refreshed every second: ~5,500 samples
    gaps = [b["elapsed"] - a["elapsed"] for a, b in itertools.pairwise(written)]
    assert gaps[-1] >= day / MAX_DENSE * 0.99


def test_a_real_run_writes_samples_and_its_last_one_matches_the_summary(
    tmp_path: Path,
) -> None:
    rows = [{"n": i} for i in range(25)]
    result = rowpilot.run(lambda row: {"twice": row["n"] * 2}, rows, state=tmp_path / "s")
    written = samples(tmp_path / "s" / "logs")
    assert written[0]["elapsed"] == 0 and written[0]["done"] == 0
    assert written[-1]["done"] == result.summary.done == 25


@given(st.lists(st.floats(min_value=1e-4, max_value=1e3), min_size=1, max_size=200))
def test_latency_quantiles_are_within_a_bucket(seconds: list[float]) -> None:
    histogram = LatencyHistogram()
    for value in seconds:
        histogram.add(value)
    assert sum(histogram.counts.values()) == len(seconds)
    ordered = sorted(seconds)
    for q in (0.5, 0.95, 0.99):
        true = ordered[max(0, int(-(-q * len(ordered) // 1)) - 1)]
        found = quantile(histogram.counts, q)
        assert found is not None
        low, high = bounds(bucket_of(true))
        assert low * 0.999 <= found <= high * 1.001 or bucket_of(true) in (0,)
    assert merged([histogram.counts, histogram.counts]) == {
        b: 2 * c for b, c in histogram.counts.items()
    }
    assert quantile({}, 0.5) is None
