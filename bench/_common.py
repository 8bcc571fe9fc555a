"""Shared helpers for the benchmarks: data generation and child-process measurement."""

from __future__ import annotations

import csv
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

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
