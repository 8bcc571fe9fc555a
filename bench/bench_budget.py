"""How much of a budget a run with many workers uses (issue 10, item 13).

Run: .venv/bin/python bench/bench_budget.py [--quick]

`rowpilot label` with 64 workers, batches of 10 rows of about 800 characters, against the
simulator (30 ms latency, no rate limit), with the model's real prices. Each request
reserves its worst case (every prompt byte a token, plus max_tokens per row), about ten
times what it costs. The baseline is the budget itself: the share of it a run spends
before it stops with "budget reached". The run before the fix stopped at the first worst
case that did not fit beside the 63 in flight: 8.6% of $0.02.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import ROWPILOT, machine

from rowpilot.simulator.server import Simulator, SimulatorConfig

KEY = "bench-" + "simulator-key"
WORDS = [
    "the",
    "service",
    "was",
    "slow",
    "and",
    "the",
    "parcel",
    "came",
    "late",
    "but",
    "support",
    "answered",
    "fast",
]


def write_rows(path: Path, count: int) -> None:
    rng = random.Random(3)
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "text"])
        for i in range(count):
            writer.writerow([f"r{i}", " ".join(rng.choice(WORDS) for _ in range(150))[:800]])


def spend(folder: Path, budget: float, base_url: str) -> tuple[float, int, str]:
    state = folder / f"state-{budget}"
    done = subprocess.run(
        [ROWPILOT, "label", "data.csv", "--text-column", "text", "--labels", "spam",
         "--workers", "64", "--budget", str(budget), "--model", "openai/gpt-4o-mini",
         "--base-url", base_url, "--state", str(state), "--no-progress"],
        cwd=folder, env={**os.environ, "OPENAI_API_KEY": KEY}, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    db = sqlite3.connect(state / "registry.sqlite")
    try:
        spent, rows = db.execute("SELECT sum(cost_usd), sum(rows) FROM calls").fetchone()
    finally:
        db.close()
    stop = next((line for line in done.stdout.splitlines() if line.startswith("stopped:")), "")
    return float(spent or 0.0), int(rows or 0), stop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="two budgets instead of four")
    budgets = [0.01, 0.02] if parser.parse_args().quick else [0.005, 0.01, 0.02, 0.05]
    print(f"machine: {machine()}")
    print("rowpilot label, 64 workers, batches of 10 rows of ~800 characters, gpt-4o-mini prices")
    with tempfile.TemporaryDirectory(prefix="rowpilot-bench-") as name:
        folder = Path(name)
        write_rows(folder / "data.csv", 6000)
        with Simulator(SimulatorConfig(api_key=KEY, latency_ms=30)) as sim:
            for budget in budgets:
                spent, rows, stop = spend(folder, budget, sim.openai_base_url)
                print(
                    f"  budget ${budget:.3f}: spent ${spent:.5f} = {spent / budget:.1%} of it "
                    f"(ratio {spent / budget:.3f}), {rows:,} rows answered"
                )
                print(f"    {stop}")


if __name__ == "__main__":
    main()
