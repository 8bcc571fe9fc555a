"""--workers auto against hand-picked worker counts, on three rate-limited loads.

Run: .venv/bin/python bench/bench_ceiling.py [--quick | --rows N] [--loads brand rpm tpm]
     [--workers 8 32 64 128 256 auto] [--accounting admission|usage]

Each load runs at every worker count, one after the other in this one process (the
machine's noise then hits every count alike), against the simulator in a thread of this
process; rowpilot's CLI runs in a subprocess. Throughput is items done over the run's own
elapsed time (its summary); auto's ratio is to the best fixed count of the same load.

* brand: the brand-research example (bench_brand.run_once): a search at 3,000 rpm
  (300 ms) and an LLM call at 6,000 rpm (1 s) per brand: at most 50 brands/s.
* rpm: ``rowpilot label`` of texts of ~800 characters, a row a request (``--batch-size
  1``: a batch would make the tokens bind), the simulator at 6,000 rpm and 2,000,000 tpm,
  300 ms: the requests bind (100/s).
* tpm: the same at 300,000 tpm and 60,000 rpm: the tokens bind (prompt + max_tokens per
  request at admission: about 16 requests/s at label's own max_tokens of 65).

label asks with its own max_tokens (the schema's bound), and is told the limits.

Full sizes are ~30-second jobs at the ceiling. ``--accounting`` passes the simulator's
``token_accounting`` (given only when asked, for simulators that have it).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import bench_brand
from _common import DATA, ROWPILOT, WORDS, machine, run_summary, sizing_events, write_csv

from rowpilot.simulator.server import Simulator, SimulatorConfig

KEY = "sk-bench-ceiling"
MODEL = "openai/gpt-4o-mini"
TEXT_CHARS = 800
LATENCY_MS = 300
TARGET = 0.95  # auto's least share of the best fixed count's throughput


@dataclass(frozen=True)
class PromptLoad:
    rows: int
    rpm: int
    tpm: int
    ceiling: str  # what binds, for the heading


LOADS = {
    "rpm": PromptLoad(rows=3_000, rpm=6_000, tpm=2_000_000, ceiling="100 requests/s"),
    "tpm": PromptLoad(rows=600, rpm=60_000, tpm=300_000, ceiling="the tokens"),
}
BRAND_ROWS = 1_500  # 30 s at 50 brands/s


@dataclass(frozen=True)
class Result:
    workers: str
    done: int
    elapsed: float
    used: int | None  # the count the run ended with (auto's last)
    decisions: list[dict[str, Any]]

    @property
    def per_s(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0


def texts_csv(rows: int) -> Path:
    """Rows of ~800 characters of review words, each starting with its own number."""

    def text(i: int) -> str:
        pick = random.Random(2_000_000 + i).choice
        words = [f"review {i}:"]
        while sum(len(word) + 1 for word in words) < TEXT_CHARS:
            words.append(pick(WORDS))
        return " ".join(words)[:TEXT_CHARS]

    return write_csv(DATA / f"ceiling-{rows}-{TEXT_CHARS}.csv", rows, text)


def run_label(
    load: PromptLoad, rows: int, workers: str, work: Path, simulator: Mapping[str, Any]
) -> Result:
    """``rowpilot label`` over ``rows`` texts at ``workers`` against a fresh simulator."""
    data = texts_csv(rows)
    state = Path(tempfile.mkdtemp(prefix="state-", dir=work))
    config = SimulatorConfig(
        api_key=KEY, rpm=load.rpm, tpm=load.tpm, latency_ms=LATENCY_MS, **simulator
    )
    with Simulator(config) as sim:
        args = [ROWPILOT, "label", str(data), "--text-column", "text", "--key", "id"]
        args += ["--labels", "spam", "urgent", "--model", MODEL, "--batch-size", "1"]
        args += ["--base-url", sim.openai_base_url, "--rpm", str(load.rpm)]
        args += ["--tpm", str(load.tpm), "--workers", workers, "--state", str(state)]
        args += ["--output", str(state / "out.csv"), "--no-progress"]
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        env |= {"OPENAI_API_KEY": KEY, "NO_PROXY": "127.0.0.1,localhost"}
        done = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"rowpilot exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return _result(workers, state)


def run_brand(rows: int, workers: str, work: Path, simulator: Mapping[str, Any]) -> Result:
    chosen: int | str = int(workers) if workers.isdigit() else workers
    found = bench_brand.run_once(rows, chosen, work, simulator)
    return _result(workers, found["state"])


def _result(workers: str, state: Path) -> Result:
    run = run_summary(state)
    summary = run["summary"]
    decisions = sizing_events(state)
    used = decisions[-1].get("new", decisions[-1].get("workers")) if decisions else None
    return Result(workers, summary["done"], summary["elapsed"], used, decisions)


def sweep(name: str, counts: list[str], run: Callable[[str], Result], heading: str) -> list[Result]:
    print(f"\n{name}: {heading}", flush=True)
    results = []
    for workers in counts:
        result = run(workers)
        results.append(result)
        ended = f", ended at {result.used}" if result.used is not None else ""
        print(
            f"  --workers {workers:>4}: {result.done:,} done in {result.elapsed:6.2f} s = "
            f"{result.per_s:6.1f} items/s{ended}",
            flush=True,
        )
        if workers == "auto":
            steps = ", ".join(
                f"{e['t']:.1f}s {e.get('new', e.get('workers'))}" for e in result.decisions
            )
            print(f"    auto's counts: {steps}")
    fixed = [r for r in results if r.workers != "auto"]
    auto = next((r for r in results if r.workers == "auto"), None)
    if fixed and auto is not None:
        best = max(fixed, key=lambda r: r.per_s)
        share = auto.per_s / best.per_s
        verdict = "met" if share >= TARGET else "MISSED"
        print(
            f"  auto / best fixed ({best.workers}): {share:.3f} "
            f"({verdict}: at least {TARGET:g} wanted)"
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", nargs="+", choices=("brand", "rpm", "tpm"), default=None)
    parser.add_argument("--workers", nargs="+", default=["8", "32", "64", "128", "256", "auto"])
    parser.add_argument("--rows", type=int, help="rows of every load (default: ~30 s each)")
    parser.add_argument("--quick", action="store_true", help="a fifth of the rows: a smoke run")
    parser.add_argument("--accounting", choices=("admission", "usage"))
    args = parser.parse_args()
    loads = args.loads or ["brand", "rpm", "tpm"]
    simulator = {"token_accounting": args.accounting} if args.accounting else {}

    def rows_of(full: int) -> int:
        return args.rows or (full // 5 if args.quick else full)

    print(f"bench_ceiling, {date.today().isoformat()}; machine: {machine()}")
    if args.accounting:
        print(f"simulator token_accounting: {args.accounting}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as folder:
        work = Path(folder)
        if "brand" in loads:
            rows = rows_of(BRAND_ROWS)
            sweep(
                "brand",
                args.workers,
                lambda w: run_brand(rows, w, work, simulator),
                f"{rows:,} brands, search 3,000 rpm / 300 ms, model 6,000 rpm / 1 s: "
                "at most 50 brands/s",
            )
        for name in ("rpm", "tpm"):
            if name not in loads:
                continue
            load = LOADS[name]
            rows = rows_of(load.rows)
            sweep(
                name,
                args.workers,
                lambda w, load=load, rows=rows: run_label(load, rows, w, work, simulator),
                f"rowpilot label, {rows:,} texts of ~{TEXT_CHARS} chars, {load.rpm:,} rpm, "
                f"{load.tpm:,} tpm, {LATENCY_MS} ms, label's own max_tokens: "
                f"{load.ceiling} bind",
            )
    print(f"\nbench_ceiling took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
