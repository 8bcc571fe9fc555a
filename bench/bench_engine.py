"""Engine benchmarks (issue 2): throughput, re-run of a done job, peak memory.

Run: .venv/bin/python bench/bench_engine.py [--quick]

1. 100,000 no-op items through rowpilot with its durable registry, versus a bare asyncio
   loop making the same calls with no registry (same CSV, same concurrency), side by side.
2. Re-running a fully done 1,000,000-item job: seconds until it reports nothing to do.
3. Peak RSS of `rowpilot run` with a no-op task on 1,000,000 and on 100,000 rows.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import ROWPILOT, machine, make_csv, run_measured

import rowpilot
from tasks import noop

WORKERS = 32
TASK = str(Path(__file__).parent / "tasks.py") + ":noop"


async def bare_asyncio(path: Path, workers: int) -> int:
    """The baseline: read the CSV, call the task for each row, bounded concurrency, no state."""
    limit = asyncio.Semaphore(workers)
    outputs: list[dict[str, object]] = []

    async def one(row: dict[str, str]) -> None:
        async with limit:
            outputs.append(await noop(row))

    with path.open(newline="", encoding="utf-8") as source:
        tasks = set()
        for row in csv.DictReader(source):
            task = asyncio.create_task(one(row))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if len(tasks) >= 2 * workers:
                await asyncio.sleep(0)
        await asyncio.gather(*tasks)
    return len(outputs)


def throughput(rows: int) -> None:
    path = make_csv(rows)
    state = Path(tempfile.mkdtemp(prefix="rowpilot-bench-"))
    try:
        started = time.perf_counter()
        result = rowpilot.run(noop, path, key="id", workers=WORKERS, state=state / "s")
        ours = rows / (time.perf_counter() - started)
        assert result.summary.done == rows
        started = time.perf_counter()
        assert asyncio.run(bare_asyncio(path, WORKERS)) == rows
        bare = rows / (time.perf_counter() - started)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    print(f"throughput, {rows:,} no-op items, {WORKERS} workers:")
    print(f"  rowpilot (durable registry): {ours:,.0f} items/s (target >= 10,000)")
    print(f"  bare asyncio loop, no state: {bare:,.0f} items/s")
    print(f"  ratio rowpilot / bare: {ours / bare:.2f}")


def memory_and_rerun(small: int, large: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="rowpilot-bench-"))
    try:
        peaks = {}
        for rows in (small, large):
            args = [
                ROWPILOT,
                "run",
                str(make_csv(rows)),
                "--task",
                TASK,
                "--key",
                "id",
                "--workers",
                str(WORKERS),
                "--state",
                str(work / f"state-{rows}"),
                "--no-progress",
            ]
            wall, peak, code, _ = run_measured(args)
            assert code == 0, f"run of {rows} rows exited {code}"
            peaks[rows] = peak
            print(
                f"first run, {rows:,} rows: {wall:.1f}s ({rows / wall:,.0f} items/s end to end), "
                f"peak RSS {peak} MB"
            )
        print(
            f"peak RSS ratio {large:,} / {small:,} rows: {peaks[large] / peaks[small]:.2f} "
            f"(target <= 1.5; {large:,}-row target <= 300 MB)"
        )
        wall, peak, code, output = run_measured(args)
        assert code == 0 and "nothing to do" in output, output
        print(
            f"re-run of the done {large:,}-item job: {wall:.1f}s to 'nothing to do' "
            f"(target <= 10 s), peak RSS {peak} MB"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="10x smaller sizes, for a smoke run")
    quick = parser.parse_args().quick
    scale = 10 if quick else 1
    print(f"machine: {machine()}")
    throughput(100_000 // scale)
    memory_and_rerun(100_000 // scale, 1_000_000 // scale)


if __name__ == "__main__":
    main()
