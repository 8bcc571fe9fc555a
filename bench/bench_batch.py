"""A batch job killed at random moments (issue 15): every row once, batches created =
batches needed, no row in two batches, the budget never passed.

Run: .venv/bin/python bench/bench_batch.py [--rows 5000] [--kills 6] [--seed 1]
[--batch-size 1]

`rowpilot run --batch-api` over ``--rows`` rows (``--batch-size`` rows a request, 1,000
rows a batch: 1,000 / batch size requests) against the
simulator, whose batches take an hour on its batch clock. Each round starts the real
command and SIGKILLs it at a moment drawn from the seeded dice: once N batches are created,
once N have their ids recorded, or once N answers are journaled; the bench moves the batch
clock a minute forward at each look while it waits for that moment (so batches end while
runs come and go), and a final run finishes the job. Then it checks the invariants at the
simulator and in the state, and prints what a clean run of the same job takes, for scale.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import ROWPILOT, machine

from rowpilot.simulator.server import Simulator, SimulatorConfig

KEY = "bench-" + "simulator-key"
PER_BATCH = 1_000
HOUR = 3600.0
BUDGET = 1.0  # USD: far above the job's worst case, so the run never stops for it


def write_rows(path: Path, count: int) -> None:
    words = ["kind", "racist", "plain", "sexist", "quiet", "homophobic", "green", "loud"]
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "text"])
        for i in range(count):
            writer.writerow([f"k{i:05d}", f"row {i} is " + " ".join(words[: i % 7 + 1])])


def query(path: Path, sql: str) -> list[tuple[object, ...]]:
    if not path.exists():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return db.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []


def command(sim: Simulator, batch_size: int) -> list[str]:
    return [
        ROWPILOT, "run", "rows.csv", "--key", "id", "--model", "openai/gpt-4o-mini",
        "--base-url", sim.openai_base_url, "--text-column", "text",
        "--labels", "racist,sexist,homophobic", "--batch-api", "--batch-poll", "0.05",
        "--budget", str(BUDGET), "--state", "state", "--no-progress",
        "--batch-size", str(batch_size),
    ]  # fmt: skip


def moment(
    rng: random.Random, sim: Simulator, state: Path, requests: int, needed: int
) -> tuple[str, Callable[[], bool]]:
    """A random state to kill at: created, recorded or journaled counts past a draw."""
    kind = rng.choice(["created", "recorded", "journaled"])
    if kind == "created":
        past = rng.randint(1, needed)
        return f"{past} created", lambda: sim.stats()["batches"]["openai"]["created"] >= past
    if kind == "recorded":
        past = rng.randint(1, needed)
        sql = "SELECT count(*) FROM batches WHERE status IN ('open', 'collected')"
        return (
            f"{past} recorded",
            lambda: (query(state / "batches.sqlite", sql) or [(0,)])[0][0] >= past,
        )
    past = rng.randint(1, requests)
    sql = "SELECT count(*) FROM calls"
    return (
        f"{past} journaled",
        lambda: (query(state / "registry.sqlite", sql) or [(0,)])[0][0] >= past,
    )


def kill_at(process: subprocess.Popen[str], condition: Callable[[], bool], sim: Simulator) -> str:
    """Kill the run once ``condition`` holds, moving the batch clock a minute at each look
    meanwhile, so that the batches the run waits for do end."""
    while process.poll() is None and not condition():
        sim.advance_batches(60.0)
        time.sleep(0.002)
    if process.poll() is not None:
        return "ended before the kill"
    process.send_signal(signal.SIGKILL)
    process.communicate()
    return "killed"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5_000)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    per_batch = max(1, PER_BATCH // args.batch_size)  # requests: as many batches as unpacked
    env = {**os.environ, "OPENAI_API_KEY": KEY, "ROWPILOT_BATCH_MAX_REQUESTS": str(per_batch)}
    requests = -(-args.rows // args.batch_size)  # every row's text is its own
    needed = -(-requests // per_batch)
    print(machine())
    with (
        tempfile.TemporaryDirectory() as folder,
        Simulator(SimulatorConfig(api_key=KEY, completion_delay_s=HOUR)) as sim,
    ):
        work = Path(folder)
        write_rows(work / "rows.csv", args.rows)
        state = work / "state"
        for round_ in range(args.kills):
            process = subprocess.Popen(
                command(sim, args.batch_size), cwd=work, env=env, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            what, condition = moment(rng, sim, state, requests, needed)
            print(f"round {round_ + 1}: at {what}: {kill_at(process, condition, sim)}")
        sim.advance_batches(HOUR)
        started = time.perf_counter()
        last = subprocess.run(
            command(sim, args.batch_size),
            cwd=work,
            env=env,
            text=True,
            capture_output=True,
            check=False,
        )
        print(f"final run: exit {last.returncode} in {time.perf_counter() - started:.1f} s")
        print(last.stdout.strip().splitlines()[0] if last.stdout else last.stderr)
        stats = sim.stats()["batches"]["openai"]
        answers = query(state / "registry.sqlite", "SELECT count(*), sum(cost_usd) FROM calls")
        done = query(state / "registry.sqlite", "SELECT count(*) FROM items WHERE status='done'")
        carried = query(
            state / "batches.sqlite",
            "SELECT count(*), count(DISTINCT m.item_key) FROM batch_members m"
            " JOIN batches b ON b.intent = m.intent WHERE b.status = 'collected'",
        )
        checks = {
            "every row done": done == [(args.rows,)],
            f"every request answered once ({requests})": answers[0][0] == requests,
            f"batches created = needed ({needed})": stats["created"] == needed,
            "no request in two batches": stats["rows"] == requests,
            "no row in two requests": carried == [(args.rows, args.rows)],
            "budget never passed": (answers[0][1] or 0.0) <= BUDGET,
            "nothing asked online": sim.stats()["requests"].get("chat.completions") is None,
        }
        for name, ok in checks.items():
            print(f"  {'ok' if ok else 'FAILED'}: {name}")
        print(f"  batches {stats['rows_per_batch']}, spent ${answers[0][1]:.4f}")
    clean_run(args.rows, args.batch_size, env)
    if not all(checks.values()):
        sys.exit(1)


def clean_run(rows: int, batch_size: int, env: dict[str, str]) -> None:
    """The same job run once without kills (batches done at their first look)."""
    with tempfile.TemporaryDirectory() as folder, Simulator(SimulatorConfig(api_key=KEY)) as sim:
        work = Path(folder)
        write_rows(work / "rows.csv", rows)
        started = time.perf_counter()
        subprocess.run(command(sim, batch_size), cwd=work, env=env, capture_output=True, check=True)
        seconds = time.perf_counter() - started
        print(f"clean run of {rows:,} rows: {seconds:.1f} s ({rows / seconds:,.0f} rows/s)")


if __name__ == "__main__":
    main()
