"""Add label columns to reviews.csv with an LLM: 10 rows per request, 3 requests at once.

    python examples/label-reviews/run.py --simulate           # the simulator: no key, no cost
    python examples/label-reviews/run.py                      # gpt-4o-mini, key from env/.env
    python examples/label-reviews/run.py --simulate --python  # the same via rowpilot.label()

The first two run the real ``rowpilot label`` command in a subprocess. Run the same
command again to resume: done rows are skipped and nothing is paid twice. Outputs go to
``out/`` beside this file (``--out`` to change): ``reviews-labelled.csv`` and ``state/``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # label_reviews.py, also when run from another folder

from label_reviews import LABEL_NAMES, MODEL, cli_command, label_reviews  # noqa: E402

from rowpilot.simulator.server import Simulator, SimulatorConfig  # noqa: E402

# The simulator takes any key; a placeholder keeps a real key from being sent anywhere.
SIMULATOR_KEY = "simulator-placeholder-key"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with simulator(args.simulate) as sim:
        base_url = sim.openai_base_url if sim is not None else args.base_url
        env = dict(os.environ)
        if sim is not None:
            env["OPENAI_API_KEY"] = SIMULATOR_KEY
        code = run_python(args, base_url, env) if args.python else run_cli(args, base_url, env)
        if sim is not None:
            answered = sim.stats()["requests"].get("chat.completions", {}).get("200", 0)
            print(f"simulator: {answered} chat requests answered", flush=True)
    return code


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--simulate", action="store_true", help="start the simulator here and label against it"
    )
    parser.add_argument(
        "--base-url", help="an OpenAI-compatible address, e.g. a running `rowpilot simulate`"
    )
    parser.add_argument("--python", action="store_true", help="use rowpilot.label(), not the CLI")
    parser.add_argument("--model", default=MODEL, help=f"provider/model [{MODEL}]")
    parser.add_argument("--batch-size", type=int, default=10, help="rows per request [10]")
    parser.add_argument("--workers", type=int, default=3, help="requests at once [3]")
    parser.add_argument("--limit", type=int, help="only the first N rows (run again for the rest)")
    parser.add_argument("--env-file", type=Path, help="file with OPENAI_API_KEY [./.env]")
    parser.add_argument("--out", type=Path, default=HERE / "out", help="output folder [out/]")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


@contextlib.contextmanager
def simulator(start: bool) -> Iterator[Simulator | None]:
    """The simulator on a free port, in a thread of this process, when asked for."""
    if not start:
        yield None
        return
    # 300 ms a request, like a small real model: enough to see requests overlap.
    with Simulator(SimulatorConfig(latency_ms=300, latency_jitter=0.2, seed=1)) as sim:
        print(f"simulator: listening on {sim.openai_base_url}", flush=True)
        yield sim


def run_cli(args: argparse.Namespace, base_url: str | None, env: dict[str, str]) -> int:
    command = cli_command(
        args.out,
        model=args.model,
        base_url=base_url,
        batch_size=args.batch_size,
        workers=args.workers,
        limit=args.limit,
        env_file=args.env_file,
        progress=False if args.no_progress else None,
    )
    print("$ " + shlex.join(["python", *command[1:]]), flush=True)
    return run_cli_process(command, env)


def run_python(args: argparse.Namespace, base_url: str | None, env: dict[str, str]) -> int:
    os.environ.update(env)  # the key the simulator takes, when simulating
    frame = label_reviews(
        args.out,
        model=args.model,
        base_url=base_url,
        batch_size=args.batch_size,
        workers=args.workers,
        limit=args.limit,
        env_file=args.env_file,
        progress=not args.no_progress,
    )
    with_labels = frame.dropna(subset=LABEL_NAMES)
    print(f"DataFrame: {len(frame)} rows, {len(with_labels)} labelled; the first five:")
    print(with_labels[["id", *LABEL_NAMES, "text"]].head().to_string(index=False, max_colwidth=48))
    return 0


def run_cli_process(command: list[str], env: dict[str, str]) -> int:
    """Run the CLI to its end. Ctrl-C reaches it too (one process group): it stops
    gracefully and prints the command that resumes, so this process only waits for it."""
    process = subprocess.Popen(command, env=env)
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:
            continue


if __name__ == "__main__":
    sys.exit(main())
