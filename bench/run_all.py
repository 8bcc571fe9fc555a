"""Run every benchmark, one after the other (`make bench`); --quick is passed through.

Run: .venv/bin/python bench/run_all.py [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

BENCHMARKS = (
    "bench_brand.py",
    "bench_budget.py",
    "bench_embed.py",
    "bench_engine.py",
    "bench_examples.py",
    "bench_executors.py",
    "bench_llm.py",
    "bench_local_executor.py",
    "bench_vectors.py",
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    quick = parser.parse_args().quick
    failed = []
    for name in BENCHMARKS:
        print(f"== {name} ==", flush=True)
        args = [sys.executable, str(Path(__file__).parent / name), *(["--quick"] if quick else [])]
        if subprocess.call(args) != 0:
            failed.append(name)
        print(flush=True)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
