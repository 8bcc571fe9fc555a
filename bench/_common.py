"""Shared helpers for the benchmarks: data generation and child-process measurement."""

from __future__ import annotations

import csv
import json
import os
import platform
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"
ROWPILOT = str(Path(sys.executable).parent / "rowpilot")


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    python = platform.python_version()
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, {cpu}, Python {python}"
    )


def make_csv(rows: int) -> Path:
    """A CSV of ``rows`` rows (id, n, text), made once and kept in bench/data (not committed)."""
    DATA.mkdir(exist_ok=True)
    path = DATA / f"rows-{rows}.csv"
    if not path.exists():
        partial = path.with_suffix(".tmp")
        with partial.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["id", "n", "text"])
            writer.writerows(
                (f"id-{i:07d}", i, f"row number {i} of the benchmark") for i in range(rows)
            )
        partial.rename(path)
    return path


def run_measured(args: list[str], cwd: Path | None = None) -> tuple[float, int, int, str]:
    """Run a command; return (wall seconds, peak RSS in MB, exit code, stdout)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    return elapsed, usage.ru_maxrss // 1024, process.returncode, output


# Review-like words the LLM benchmarks' texts are made of.
WORDS = tuple(
    " ".join(
        (
            "the delivery arrived late but support was quick and the refund came through",
            "battery lasts two days screen is bright sound is tinny packaging was damaged",
            "would buy again price seems fair for what you get colour differs from photos",
            "setup took ten minutes manual unclear app crashes sometimes otherwise solid",
        )
    ).split(" ")
)


def write_csv(path: Path, rows: int, text: Callable[[int], str]) -> Path:
    """Rows ``id,text`` (``text(i)`` for row i), written once and kept in bench/data."""
    if not path.exists():
        DATA.mkdir(exist_ok=True)
        partial = path.with_suffix(".tmp")
        with partial.open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(["id", "text"])
            writer.writerows((f"id-{i:07d}", text(i)) for i in range(rows))
        partial.rename(path)
    return path


def run_summary(state: Path) -> dict[str, Any]:
    """The summary and settings of the one run recorded in a state folder's registry."""
    with sqlite3.connect(state / "registry.sqlite") as db:
        summary, settings = db.execute("SELECT summary, settings FROM runs").fetchone()
    return {"summary": json.loads(summary), "settings": json.loads(settings)}


def sizing_events(state: Path) -> list[dict[str, Any]]:
    """The ``workers.chosen`` and ``workers.adjusted`` events of a run, seconds from its start."""
    found: list[dict[str, Any]] = []
    for log in sorted((state / "logs").glob("*.jsonl")):
        events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        start = next((e["ts"] for e in events if e.get("event") == "run.started"), None)
        for event in events:
            if start is not None and event.get("event") in ("workers.chosen", "workers.adjusted"):
                found.append({**event, "t": event["ts"] - start})
    return found
