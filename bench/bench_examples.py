"""The examples at full size against the simulator, as a user runs them: one figure each.

Run: .venv/bin/python bench/bench_examples.py [--quick] [--only disease-incidence ...]

tests/examples runs each example small (hundreds of rows, millisecond latencies) to prove
what it promises; how long the full-size runs take is measured here instead, where a slow
machine changes a figure rather than failing a test. Each example runs in a fresh copy of
its folder (its own out/ and data untouched), with no provider key in its environment.

Figures per example: the command, its wall seconds (process start-up included), its peak
resident size and its exit code. --quick runs the sizes the tests use. brand-research has
its own benchmark (bench_brand.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import machine, run_measured

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@dataclass(frozen=True)
class Example:
    folder: str
    full: tuple[str, ...]  # run.py's arguments at full size
    quick: tuple[str, ...]  # ... at the size tests/examples uses
    exit_code: int = 0  # what a good run exits with


RUNS = (
    Example(
        "disease-incidence",
        ("--simulate", "--count", "15000", "--latency-ms", "100"),
        ("--simulate", "--count", "400", "--latency-ms", "5"),
    ),
    Example("label-reviews", ("--simulate",), ("--simulate", "--limit", "15")),
    # Exits 1 by design: some questions stay rejected after their rounds (its README).
    Example("question-review-loop", ("--simulate",), ("--simulate",), exit_code=1),
    Example("opportunity-files", ("--simulate",), ("--simulate", "--latency-ms", "5")),
)


def run_example(example: Example, quick: bool) -> None:
    args = example.quick if quick else example.full
    with tempfile.TemporaryDirectory(prefix=f"bench-{example.folder}-") as tmp:
        folder = Path(tmp) / example.folder
        shutil.copytree(
            EXAMPLES / example.folder,
            folder,
            ignore=shutil.ignore_patterns("out", "__pycache__", ".env"),
        )
        command = [sys.executable, "run.py", *args, "--out", str(folder / "out")]
        seconds, peak_mb, code, _ = run_measured(command, cwd=folder)
    print(
        f"{example.folder:<22} {seconds:8.1f} s  peak {peak_mb:5d} MB  exit {code}  "
        f"run.py {' '.join(args)}",
        flush=True,
    )
    if code != example.exit_code:
        raise SystemExit(f"{example.folder} exited {code}, not {example.exit_code}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the sizes the tests use")
    parser.add_argument("--only", nargs="*", help="example folders to run (default: all)")
    options = parser.parse_args()
    for name in [name for name in os.environ if name.endswith("_API_KEY")]:
        del os.environ[name]  # the simulator only: never a real provider
    print(f"examples at {'test' if options.quick else 'full'} size on {machine()}", flush=True)
    for example in RUNS:
        if not options.only or example.folder in options.only:
            run_example(example, options.quick)


if __name__ == "__main__":
    main()
