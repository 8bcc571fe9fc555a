"""Python's cyclic garbage collector, spaced out while a job runs.

A run allocates a few container objects a row (the row's dict, its ``Item``, its outcome)
and keeps many alive at once: a window of them, or a whole validated file (up to 128 MiB,
``engine.job.KEEP_BYTES``) that the run takes its rows from. At Python's default threshold
(a young collection every 700 allocations) the collector walks them again and again,
finding nothing: 0.13 s of the 0.30 s validation pass of 100,000 rows, and about a tenth
of an embed run (bench/bench_embed.py, docs/benchmarks.md "issue 13"). Reference counting
frees what a run lets go; the collector only finds cycles, which a run makes few of. So
a run raises the young generation's threshold to ``RUN_THRESHOLD`` allocations (as mypy
does for the same reason) and puts the old one back when it ends.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

RUN_THRESHOLD = 50_000


@contextmanager
def collections_spaced() -> Iterator[None]:
    """Young collections at most every ``RUN_THRESHOLD`` allocations inside the block; the
    thresholds as they were after it (unless changed meanwhile: that change is kept)."""
    before = gc.get_threshold()
    during = (max(before[0], RUN_THRESHOLD), *before[1:])
    gc.set_threshold(*during)
    try:
        yield
    finally:
        if gc.get_threshold() == during:
            gc.set_threshold(*before)
