"""Run the brand-research job against the local simulator (--simulate) or for real.

    python examples/brand-research/run.py --simulate [rowpilot run options]
    python examples/brand-research/run.py [rowpilot run options]     # your keys, real APIs

With --simulate it starts rowpilot's simulator in this process on a free port: the OpenAI
API (for the model) and a search API (POST /search), each held to the rate limit job.toml
gives it ([limits."openai/gpt-4o-mini"] and [limits.search]), each with a realistic
latency. Then it runs the real `rowpilot run job.toml` in a subprocess against them, so
you see the usual progress bar and summary. A simulated run keeps its own state and
outputs (...-simulated), apart from a real run's.

Without --simulate it checks that the keys are set (in the environment or in .env in this
folder; it never prints them) and runs `rowpilot run job.toml` here.

Options the script does not know go to `rowpilot run`: --limit 5, --workers 4,
--budget 0.05, --force, --estimate --yes, --no-progress, ... After the run it prints the
run's figures the way the seed's script did (ok/failed %, average per brand, speed-up over
one brand at a time, cost), and with --simulate what the simulator saw of each limit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from rowpilot.simulator.server import SEARCH_RESOURCE, Simulator, SimulatorConfig

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SIMULATOR_KEY = "simulator-placeholder-key"  # the simulator's key: no real key goes near it
LLM_LATENCY_MS = 3000  # a structured analysis of ~1,000 prompt tokens
SEARCH_LATENCY_MS = 800  # a web search
WINDOW_S = 10  # the window in which the limits are checked at the simulator


def rowpilot_command() -> list[str]:
    beside = Path(sys.executable).parent / "rowpilot"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("rowpilot")
    return [found] if found else [sys.executable, "-m", "rowpilot"]


def option(args: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``args`` (the last one wins)."""
    value = None
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            value = args[index + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], allow_abbrev=False, add_help=True
    )
    parser.add_argument("--simulate", action="store_true", help="run against the simulator")
    parser.add_argument("--job", type=Path, default=HERE / "job.toml", help="the job file")
    parser.add_argument("--llm-latency-ms", type=float, default=LLM_LATENCY_MS)
    parser.add_argument("--search-latency-ms", type=float, default=SEARCH_LATENCY_MS)
    args, rowpilot_args = parser.parse_known_args(argv)
    job_file = args.job.resolve()
    job = tomllib.loads(job_file.read_text(encoding="utf-8"))
    if args.simulate:
        return simulate(job_file, job, args, rowpilot_args)
    return for_real(job_file, job, rowpilot_args)


def simulate(
    job_file: Path, job: dict[str, Any], args: argparse.Namespace, extra: list[str]
) -> int:
    model = option(extra, "--model") or job["task"]["model"]
    limits = job.get("limits", {})
    search_rpm = limits.get("search", {}).get("rpm")
    model_rpm = limits.get(model, {}).get("rpm")
    config = SimulatorConfig(
        api_key=SIMULATOR_KEY,
        rpm=model_rpm,
        search_rpm=search_rpm,
        latency_ms=args.llm_latency_ms,
        search_latency_ms=args.search_latency_ms,
        latency_jitter=0.25,
    )
    # A simulated run's state and outputs are its own: a real run must not find its
    # journal (it would replay the simulator's answers). Outputs follow --state's name.
    state = HERE / (option(extra, "--state") or ROOT / ".rowpilot" / "brand-research-simulated")
    simulated = ROOT / "demo-output" / state.resolve().name
    defaults = [
        "--state", str(state),
        "--output", str(simulated / "brands-analysed.csv"),
        "--json-dir", str(simulated / "brands"),
        "--failures", str(simulated / "failures.jsonl"),
    ]  # fmt: skip
    for name in ("--output", "--json-dir", "--failures"):
        (HERE / (option([*defaults, *extra], name) or "")).parent.mkdir(parents=True, exist_ok=True)
    with Simulator(config) as simulator:
        print(
            f"simulator on {simulator.url}: {model} at {_rate(model_rpm)}, search at "
            f"{_rate(search_rpm)}, latency {args.llm_latency_ms:g} ms and "
            f"{args.search_latency_ms:g} ms",
            flush=True,
        )
        env = {
            **{k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")},
            "OPENAI_API_KEY": SIMULATOR_KEY,
            "SEARCH_API_KEY": SIMULATOR_KEY,
            "SEARCH_API_URL": simulator.search_url,
            "PYTHONUNBUFFERED": "1",
        }
        command = [
            *rowpilot_command(), "run", str(job_file),
            "--base-url", simulator.openai_base_url, *defaults, *extra,
        ]  # fmt: skip
        code = subprocess.call(command, cwd=HERE, env=env)
        print_run_figures(state)
        print_limits_held(simulator, {model.split("/", 1)[-1]: model_rpm, "search": search_rpm})
    return code


def for_real(job_file: Path, job: dict[str, Any], extra: list[str]) -> int:
    env_file = dotenv_values(HERE / ".env") if (HERE / ".env").is_file() else {}
    provider = (option(extra, "--model") or job["task"]["model"]).split("/", 1)[0]
    needed = [f"{provider.upper()}_API_KEY", "SEARCH_API_KEY"]
    missing = [name for name in needed if not (os.environ.get(name) or env_file.get(name))]
    if missing:
        print(
            f"run.py: set {' and '.join(missing)} in the environment or in {HERE / '.env'} "
            "(see .env.example), or add --simulate to rehearse without keys",
            file=sys.stderr,
        )
        return 2
    (job_file.parent / job["output"]["path"]).parent.mkdir(parents=True, exist_ok=True)
    code = subprocess.call([*rowpilot_command(), "run", str(job_file), *extra], cwd=HERE)
    state = HERE / (option(extra, "--state") or job_file.parent / job["run"]["state"])
    print_run_figures(state)
    return code


def print_run_figures(state: Path) -> None:
    """The last run's figures, as the seed's summary gave them."""
    done = subprocess.run(
        [*rowpilot_command(), "status", str(state), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return  # no registry: the run stopped before its first item (its error is above)
    last = json.loads(done.stdout)["states"][0]["last_run"] or {}
    summary = last.get("summary")
    if not summary:
        return
    processed = summary["done"] + summary["failed"]
    print("\nbrand-research figures (this run):")
    total = summary["total"] if summary["total"] is not None else "?"
    print(
        f"  brands: {total} selected, {processed} processed, "
        f"{summary['skipped']} skipped (unchanged), {summary['pending'] or 0} left for later"
    )
    if not processed:
        return
    print(
        f"  ok {summary['done']} ({100 * summary['done'] / processed:.1f}%), "
        f"failed {summary['failed']} ({100 * summary['failed'] / processed:.1f}%)"
    )
    own = _calls_seconds(state, summary["run_id"])
    elapsed = summary["elapsed"]
    average = f"  elapsed {elapsed:.1f}s, {elapsed / processed:.2f}s per brand on average"
    if own:
        print(
            f"{average}; one brand at a time: {own:.1f}s (the calls' own time, from the "
            f"journal), {own / elapsed if elapsed else 0:.1f}x faster in parallel"
        )
    else:
        print(f"{average}; no API was called: every step came back from the journal")
    print(
        f"  cost ${summary['cost_usd']:.4f}: {summary['calls']} paid calls, "
        f"{summary['cached']} replayed from the journal"
    )


def _calls_seconds(state: Path, run_id: str) -> float:
    """The seconds this run's calls took at their APIs: one brand at a time, the sum."""
    with sqlite3.connect(state / "registry.sqlite") as db:
        row = db.execute(
            "SELECT coalesce(sum(seconds), 0) FROM calls WHERE run_id = ?", (run_id,)
        ).fetchone()
    return float(row[0])


def print_limits_held(simulator: Simulator, rpms: dict[str, float | None]) -> None:
    print(f"\nat the simulator (most requests in any {WINDOW_S} s against what the limit allows):")
    requests = simulator.stats()["requests"]
    endpoints = {SEARCH_RESOURCE: SEARCH_RESOURCE}
    admissions = simulator.admissions(WINDOW_S)
    if not admissions:
        print("  no requests")
    for resource, view in admissions.items():
        rpm = rpms.get(resource)
        statuses = requests.get(endpoints.get(resource, "chat.completions"), {})
        allowed = f"{rpm * (WINDOW_S + 1) / 60:.1f}" if rpm else "no limit"
        print(
            f"  {resource}: {view['admitted']} requests, {statuses.get('429', 0)} rate-limited; "
            f"most in {WINDOW_S} s: {view['max_arrived']} (allowed: {allowed})"
        )


def _rate(rpm: float | None) -> str:
    return f"{rpm:g} requests/min" if rpm else "no limit"


if __name__ == "__main__":
    sys.exit(main())
