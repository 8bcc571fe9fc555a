"""The report's size and cost on a large job, and the dashboard's cost while a run goes.

Run: .venv/bin/python bench/bench_report.py [--rows 100000] [--quick]

1. A ROWS-item job (a Python task; 1% of the rows fail, 0.5% are retried once), run in
   two runs (a --limit run, then the rest), so the page has two runs, failures, retries
   and a full time line. Then ``rowpilot report``: the page's size against the 2 MB the
   issue allows, the seconds to make it against the run's own seconds, and the peak RSS
   of the process that made it (a fresh process).
2. The dashboard's refresh: one redraw (read the registry and the logs, draw the charts),
   in seconds and as a share of one core at the page's refresh period, with the log
   reader warm (as the dashboard keeps it) and cold.

One run on a shared machine: noisy; read the ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import machine

import rowpilot
from rowpilot.report.data import LogReader, read_report
from rowpilot.report.page import REFRESH_SECONDS, render_fragment

LIMIT_BYTES = 2 * 1024 * 1024

_REPORT_CHILD = """
import resource, sys, time
from pathlib import Path
from rowpilot.report import write_report
start = time.perf_counter()
target = write_report(Path(sys.argv[1]), Path(sys.argv[2]))
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{seconds} {peak}")
"""


def task(row: dict[str, Any]) -> dict[str, Any]:
    n = int(row["n"])
    if n % 100 == 7:
        raise ValueError(f"row {n} is refused")
    if n % 200 == 11 and not Path(row["flag"]).exists():
        Path(row["flag"]).touch()
        raise TimeoutError("once")  # retried (timeouts are retried by default)
    return {"double": n * 2}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="10,000 rows")
    args = parser.parse_args()
    rows_count = 10_000 if args.quick else args.rows
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        flags = root / "flags"
        flags.mkdir()
        rows = [{"id": f"k{n:07d}", "n": n, "flag": str(flags / str(n))} for n in range(rows_count)]
        state = root / "state"
        start = time.perf_counter()
        settings: dict[str, Any] = {"key": "id", "state": state, "workers": 8, "retry_delay": 0}
        rowpilot.run(task, rows, limit=rows_count // 4, **settings)
        result = rowpilot.run(task, rows, **settings)
        run_seconds = time.perf_counter() - start
        print(
            f"job: {rows_count:,} items in two runs, {run_seconds:.1f} s "
            f"({result.summary.done:,} done in the last, failed in all: "
            f"{read_report(state).failed:,})"
        )
        page = root / "report.html"
        child = subprocess.run(
            [sys.executable, "-c", _REPORT_CHILD, str(state), str(page)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        seconds, peak = (float(x) for x in child.stdout.split())
        size = page.stat().st_size
        print(
            f"report: {size / 1024:,.0f} KB ({size / LIMIT_BYTES:.2f} of the 2 MB limit), "
            f"{seconds:.2f} s to make ({seconds / run_seconds:.3f} of the run's time), "
            f"peak RSS {peak:,.0f} MB"
        )
        warm = LogReader(state / "logs")
        render_fragment(read_report(state, warm))  # the first drawing: every log, and
        start = time.perf_counter()  # matplotlib's first figure (fonts), kept out below
        render_fragment(read_report(state, warm))
        redraw = time.perf_counter() - start
        start = time.perf_counter()
        render_fragment(read_report(state))
        cold = time.perf_counter() - start
        print(
            f"dashboard redraw: {redraw:.2f} s warm ({redraw / REFRESH_SECONDS:.2f} of a core "
            f"at one redraw per {REFRESH_SECONDS:g} s), {cold:.2f} s with the logs read anew"
        )
        print(json.dumps({"rows": rows_count, "bytes": size, "report_s": seconds,
                          "run_s": run_seconds, "peak_mb": peak, "redraw_s": redraw}))  # fmt: skip


if __name__ == "__main__":
    main()
