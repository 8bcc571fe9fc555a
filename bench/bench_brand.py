"""The brand-research example (seed 004) at 500 brands against the simulator.

Run: .venv/bin/python bench/bench_brand.py [--rows 500] [--workers 128 auto] [--quick]

Each brand makes one search (``ctx.call("search", ...)``, $0.005) and one structured LLM
analysis (``ctx.llm``) through the example's own task (examples/brand-research/tasks.py),
run by the real `rowpilot run` CLI in a subprocess. The simulator runs in this process
(a thread; this process does nothing else meanwhile): the model at 6,000 requests/min with
a 1,000 ms median latency, the search API at 3,000 requests/min with 300 ms, both with
jitter 0.25. The job tells rowpilot the same limits, so the ceiling the two limits allow
is min(3,000, 6,000) / 60 = 50 brands/s.

Figures:

* wall: the run's own elapsed (its summary), and the CLI process's, start-up included;
* one brand at a time: the sum of every call's own time (the journal's per-call seconds),
  which is what a sequential loop would spend; the summary's own speed-up is printed too
  (its task time less the waits for the rate limits, over the wall time);
* speed-up = one brand at a time / wall; ceiling share = brands/s over the 50 brands/s;
* at the simulator: 429s, and the most requests admitted in any 1 s per resource (the
  provider's bucket allows rpm/60 per second plus one second's worth).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "brand-research"))

from _common import DATA, ROWPILOT, machine, run_summary
from make_data import write_brands  # the example's own generator: the same brands, more

from rowpilot.simulator.server import Simulator, SimulatorConfig

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "brand-research"

SEARCH_RPM = 3_000
MODEL_RPM = 6_000
LLM_LATENCY_MS = 1_000
SEARCH_LATENCY_MS = 300
KEY = "sk-bench-brand"
JOB = """\
name = "brand-bench"

[source]
path = "{source}"
key = "brand_id"

[task]
function = "{tasks}:analyse_brand"
version = "1"
model = "openai/gpt-4o-mini"
max_tokens = 300

[run]
workers = {workers}
budget = 100.0
max_attempts = 4
state = "state"

[limits.search]
rpm = {search_rpm}
max_attempts = 4
retry_delay = 1.0

[limits."openai/gpt-4o-mini"]
rpm = {model_rpm}
"""


def run_once(
    rows: int, workers: int | str, work: Path, simulator: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """One run of the job at ``workers``; ``simulator``: more SimulatorConfig options."""
    source = DATA / f"brands-{rows}.csv"
    if not source.exists():
        DATA.mkdir(exist_ok=True)
        write_brands(source, rows)
    folder = Path(tempfile.mkdtemp(prefix="brand-", dir=work))
    job = JOB.format(
        source=source,
        tasks=EXAMPLE / "tasks.py",
        workers=json.dumps(workers),
        search_rpm=SEARCH_RPM,
        model_rpm=MODEL_RPM,
    )
    (folder / "job.toml").write_text(job, encoding="utf-8")
    config = SimulatorConfig(
        api_key=KEY,
        rpm=MODEL_RPM,
        search_rpm=SEARCH_RPM,
        latency_ms=LLM_LATENCY_MS,
        search_latency_ms=SEARCH_LATENCY_MS,
        latency_jitter=0.25,
        **(simulator or {}),
    )
    with Simulator(config) as sim:
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        env |= {"OPENAI_API_KEY": KEY, "SEARCH_API_KEY": KEY}
        env["SEARCH_API_URL"] = sim.search_url
        command = [ROWPILOT, "run", "job.toml", "--no-progress"]
        command += ["--base-url", sim.openai_base_url]
        started = time.perf_counter()
        done = subprocess.run(
            command, cwd=folder, env=env, capture_output=True, text=True, check=False
        )
        process_s = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"rowpilot exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        stats = sim.stats()
        admissions = sim.admissions(1.0, times=True)
    with sqlite3.connect(folder / "state" / "registry.sqlite") as db:
        (calls_s,) = db.execute("SELECT sum(seconds) FROM calls").fetchone()
    run = run_summary(folder / "state")
    return {
        "workers": workers,
        "workers_used": run["settings"].get("workers"),
        "summary": run["summary"],
        "state": folder / "state",
        "process_s": process_s,
        "calls_s": float(calls_s),
        "rate_limited": stats["rate_limited"],
        "admissions": admissions,
        "stdout": done.stdout,
    }


def report(result: dict[str, Any], rows: int) -> list[str]:
    summary = result["summary"]
    elapsed = summary["elapsed"]
    ceiling = min(SEARCH_RPM, MODEL_RPM) / 60
    rate = summary["done"] / elapsed
    search, model = result["admissions"]["search"], result["admissions"]["gpt-4o-mini"]
    # The pace at the tighter limit, from the first search admitted to the last: the wall
    # time adds one brand's latency after the last admission, which no client can save.
    times = search["times"]
    pace = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    return [
        f"--workers {result['workers']} ({result['workers_used']} used): "
        f"{summary['done']:,} of {rows:,} brands done, {summary['failed']} failed, "
        f"cost ${summary['cost_usd']:.4f}",
        f"  wall {elapsed:.2f} s (CLI process {result['process_s']:.2f} s), "
        f"{rate:.1f} brands/s = {rate / ceiling:.3f} of the {ceiling:.0f} brands/s ceiling; "
        f"searches admitted at {pace:.1f}/s = {pace / ceiling:.3f} of it",
        f"  one brand at a time (the calls' own time): {result['calls_s']:.1f} s; "
        f"speed-up {result['calls_s'] / elapsed:.1f}x "
        f"(summary: task time {summary['task_seconds']:.1f} s, of it "
        f"{summary.get('waited_seconds', 0.0):.1f} s waiting for the limits; its speed-up "
        f"{summary['speedup']:.1f}x leaves the waits out)",
        f"  at the simulator: {result['rate_limited']} 429s; most admitted in any 1 s: "
        f"search {search['max_admitted']} (allowed {SEARCH_RPM / 60 * 2:.0f}), "
        f"model {model['max_admitted']} (allowed {MODEL_RPM / 60 * 2:.0f})",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--workers", nargs="+", default=["128", "auto"])
    parser.add_argument("--quick", action="store_true", help="100 brands, for a smoke run")
    args = parser.parse_args()
    rows = 100 if args.quick else args.rows
    print(f"brand research, {rows:,} brands, {date.today().isoformat()}")
    print(f"machine: {machine()}")
    print(
        f"simulator: model {MODEL_RPM:,} rpm, {LLM_LATENCY_MS} ms; search {SEARCH_RPM:,} rpm, "
        f"{SEARCH_LATENCY_MS} ms; ceiling {min(SEARCH_RPM, MODEL_RPM) / 60:.0f} brands/s",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-brand-") as work:
        for workers in args.workers:
            chosen: int | str = int(workers) if workers.isdigit() else workers
            for line in report(run_once(rows, chosen, Path(work)), rows):
                print(line, flush=True)


if __name__ == "__main__":
    main()
