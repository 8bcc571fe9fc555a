"""Vector sink benchmark: LanceDB insert throughput by batch size, and the unchanged re-run.

Run: .venv/bin/python bench/bench_vectors.py [--quick]

1. 20,000 rows of 256-dim float32 vectors (plus a text field) into a fresh table with
   ``insert_batch`` 1,000 and 5,000: rows/s, then the same rows again (all unchanged), then
   every row with a new fingerprint (all replaced).
2. One row per commit (``insert_batch`` 1) for the first 1,000 rows only, extrapolated to
   20,000 and compared. Each commit costs more as the table's fragments pile up, so the
   straight-line extrapolation flatters the one-by-one figure; the cost per row over the
   first and the last 100 rows is printed to show the drift.
3. Compaction: 100,000 rows with ``insert_batch`` 1,000 (100 commits), written once with the
   end-of-write ``optimize()`` switched off and once as shipped: time, fragments, and the
   latency of ``nearest`` (an exhaustive search) on each.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import machine

import rowpilot.sinks.vectors as sink
from rowpilot.sinks.vectors import SinkReport, VectorRow, VectorTarget, nearest, write_vectors

DIM = 256


def make_vectors(rows: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((rows, DIM)).astype(np.float32)


def rows_of(
    vectors: np.ndarray, fingerprint: str, pulled: list[float] | None = None
) -> Iterator[VectorRow]:
    for index, vector in enumerate(vectors):
        if pulled is not None:
            pulled.append(time.perf_counter())
        yield VectorRow(f"id-{index:07d}", fingerprint, vector, {"text": f"row {index}"})


def table_shape(target: VectorTarget) -> str:
    import lancedb

    table = lancedb.connect(str(target.path)).open_table(target.table)
    fragments = table.stats()["fragment_stats"]["num_fragments"]
    return f"{fragments} fragment(s), {len(table.list_versions())} versions"


def line(label: str, rows: int, report: SinkReport) -> str:
    return (
        f"  {label:<24} {report.seconds:7.2f} s  {rows / report.seconds:9,.0f} rows/s  "
        f"(+{report.inserted} ~{report.updated} ={report.unchanged}, {report.batches} commits)"
    )


def batched(root: Path, vectors: np.ndarray, batch: int) -> float:
    target = VectorTarget(root / f"batch-{batch}", "docs")
    rows = len(vectors)
    first = write_vectors(target, rows_of(vectors, "v1"), insert_batch=batch)
    print(f"insert_batch {batch:,}: {table_shape(target)} after the first write")
    print(line("first write", rows, first))
    again = write_vectors(target, rows_of(vectors, "v1"), insert_batch=batch)
    print(line("re-run, all unchanged", rows, again))
    changed = write_vectors(target, rows_of(vectors, "v2"), insert_batch=batch)
    print(line("re-run, all replaced", rows, changed))
    print(f"  then: {table_shape(target)}")
    return rows / first.seconds


def one_by_one(root: Path, vectors: np.ndarray, total: int) -> float:
    target = VectorTarget(root / "batch-1", "docs")
    rows = len(vectors)
    pulled: list[float] = []
    report = write_vectors(target, rows_of(vectors, "v1", pulled), insert_batch=1)
    pulled.append(pulled[0] + report.seconds)  # ~ the end of the write
    steps = np.diff(pulled[1:])  # the time from one pull to the next: one commit each
    early, late = steps[:100].mean() * 1000, steps[-101:-1].mean() * 1000
    print(f"insert_batch 1 (first {rows:,} rows only): {table_shape(target)} at the end")
    print(line("first write", rows, report))
    print(f"  per row: {early:.1f} ms over the first 100, {late:.1f} ms over the last 100")
    print(f"  compaction at the end: {steps[-1]:.2f} s (with the last commit)")
    rate = rows / report.seconds
    print(f"  extrapolated to {total:,} rows: {total / rate:,.0f} s at best (straight line)")
    return rate


def query_ms(target: VectorTarget, vectors: np.ndarray) -> float:
    times = []
    for index in range(0, 150, 10):
        started = time.perf_counter()
        found = nearest(target, vectors[index], k=5)
        times.append(time.perf_counter() - started)
        assert found[0][0] == f"id-{index:07d}"
    return statistics.median(times) * 1000


def compaction(root: Path, vectors: np.ndarray) -> None:
    rows = len(vectors)
    print(f"compaction, {rows:,} rows with insert_batch 1,000:")
    shipped = sink.COMPACT_ABOVE_SMALL_FRAGMENTS
    for label, threshold in (("without optimize()", 10**9), ("as shipped", shipped)):
        target = VectorTarget(root / f"compaction-{threshold}", "docs")
        sink.COMPACT_ABOVE_SMALL_FRAGMENTS = threshold
        try:
            report = write_vectors(target, rows_of(vectors, "v1"), insert_batch=1_000)
        finally:
            sink.COMPACT_ABOVE_SMALL_FRAGMENTS = shipped
        print(line(label, rows, report))
        print(f"    {table_shape(target)}; nearest() {query_ms(target, vectors):.1f} ms (median)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    quick = parser.parse_args().quick
    total, single, large = (4_000, 200, 30_000) if quick else (20_000, 1_000, 100_000)
    print(f"{datetime.now():%Y-%m-%d %H:%M}  {machine()}")
    import lancedb

    print(f"lancedb {lancedb.__version__}; {total:,} rows x {DIM} dims (float32) + a text field\n")
    vectors = make_vectors(large)[:total]
    root = Path(tempfile.mkdtemp(prefix="rowpilot-bench-vectors-"))
    try:
        rates = {batch: batched(root, vectors, batch) for batch in (1_000, 5_000)}
        single_rate = one_by_one(root, vectors[:single], total)
        print()
        compaction(root, make_vectors(large))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    for batch, rate in rates.items():
        print(f"insert_batch {batch:,} vs one by one: {rate / single_rate:,.0f}x the rows/s")


if __name__ == "__main__":
    main()
