"""Latency histograms: call durations counted in log-spaced buckets, so a resource keeps
its whole distribution in a few dozen integers however many calls it makes, and the
report reads p50/p95/p99 back from them (each within one bucket: about 12%).

Bucket ``i`` holds durations in ``[FLOOR * STEP**i, FLOOR * STEP**(i + 1))`` seconds;
shorter ones fall in bucket 0, longer ones in the last.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

FLOOR = 0.001  # seconds: the first bucket's lower bound
STEP = 1.25  # each bucket's bounds are this ratio apart
BUCKETS = 80  # up to FLOOR * STEP**80 = about 9.6 minutes


def bucket_of(seconds: float) -> int:
    if seconds <= FLOOR:
        return 0
    return min(BUCKETS - 1, int(math.log(seconds / FLOOR) / math.log(STEP)))


def bounds(bucket: int) -> tuple[float, float]:
    return FLOOR * STEP**bucket, FLOOR * STEP ** (bucket + 1)


def middle(bucket: int) -> float:
    """A bucket's representative duration: the geometric middle of its bounds."""
    low, high = bounds(bucket)
    return math.sqrt(low * high)


class LatencyHistogram:
    """Counts of call durations by bucket (``counts`` is sparse: bucket -> calls)."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def add(self, seconds: float) -> None:
        index = bucket_of(seconds)
        self.counts[index] = self.counts.get(index, 0) + 1


def merged(histograms: Iterable[Mapping[int, int]]) -> dict[int, int]:
    total: dict[int, int] = {}
    for counts in histograms:
        for bucket, count in counts.items():
            total[int(bucket)] = total.get(int(bucket), 0) + int(count)
    return total


def quantile(counts: Mapping[int, int], q: float) -> float | None:
    """The duration below which a share ``q`` of the calls fell (None if no call)."""
    calls = sum(counts.values())
    if calls == 0:
        return None
    wanted = q * calls
    seen = 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        if seen >= wanted:
            return middle(bucket)
    return middle(max(counts))
