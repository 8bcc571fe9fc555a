"""Review every survey question in questions/ with a reviewer/transformer loop.

    python examples/question-review-loop/run.py --simulate   # the simulator: no key, no cost
    python examples/question-review-loop/run.py              # the model and key of .env

It runs the real ``rowpilot run job.toml`` in a subprocess, with the settings of the env
file (``.env``; with ``--simulate``, ``.env.example``) and, with ``--simulate``, a local
simulator started here. Run the same command again to resume: done questions are
skipped and no answered step is paid again. Outputs go to ``out/`` beside this file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # review.py, also when run from another folder

from review import Settings, read_settings  # noqa: E402

from rowpilot.simulator.server import Simulator, SimulatorConfig  # noqa: E402

JOB = HERE / "job.toml"
# The simulator takes any key; a placeholder keeps a real key from being sent anywhere.
SIMULATOR_KEY = "simulator-placeholder-key"


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    env_file = args.env_file or HERE / (".env.example" if args.simulate else ".env")
    if not env_file.is_file():
        print(
            f"run.py: error: {env_file} does not exist "
            f"(hint: cp {HERE / '.env.example'} {HERE / '.env'} and fill in the key)",
            file=sys.stderr,
        )
        return 2
    settings = read_settings(env_file)
    args.out.mkdir(parents=True, exist_ok=True)
    logs_before = set(review_logs(args.out))
    with simulator(args.simulate) as sim:
        base_url = sim.openai_base_url if sim is not None else settings.base_url
        command = cli_command(settings, args.out, env_file, base_url, progress=args.progress)
        command += extra
        print("$ " + shlex.join(["python", *command[1:]]), flush=True)
        env = child_env(env_file, simulated=sim is not None)
        code = run_cli_process(command, env)
        if sim is not None:
            answered = sim.stats()["requests"].get("chat.completions", {}).get("200", 0)
            print(f"simulator: {answered} chat requests answered", flush=True)
    for log in set(review_logs(args.out)) - logs_before:
        reviews = [json.loads(line) for line in log.read_text().splitlines()]
        passed = sum(review["approved"] for review in reviews)
        print(f"review log: {shown(log)} ({len(reviews)} reviews, {passed} passed)")
    return code


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """This script's options, and the rest for ``rowpilot run`` (``--retry-failed``, ...)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Other options go to `rowpilot run`, e.g. --retry-failed, --limit 5, --budget 1.",
    )
    parser.add_argument("--simulate", action="store_true", help="run against a local simulator")
    parser.add_argument("--env-file", type=Path, help="settings and key [.env, or .env.example]")
    parser.add_argument("--out", type=Path, default=HERE / "out", help="output folder [out/]")
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, help="the progress bar [on a tty]"
    )
    return parser.parse_known_args(argv)


@contextlib.contextmanager
def simulator(start: bool) -> Iterator[Simulator | None]:
    """The simulator on a free port, in a thread of this process, when asked for."""
    if not start:
        yield None
        return
    # 100 ms a call, and the occasional 503 that rowpilot retries with backoff.
    config = SimulatorConfig(latency_ms=100, latency_jitter=0.3, error_503=0.02, seed=3)
    with Simulator(config) as sim:
        print(f"simulator: listening on {sim.openai_base_url}", flush=True)
        yield sim


def cli_command(
    settings: Settings,
    out: Path,
    env_file: Path,
    base_url: str | None,
    *,
    progress: bool | None = None,
) -> list[str]:
    """``rowpilot run job.toml`` with the env file's settings and outputs under ``out``."""
    command = [
        sys.executable, "-m", "rowpilot", "run", shown(JOB),
        "--env-file", shown(env_file), "--model", settings.model,
        "--workers", str(settings.workers), "--state", shown(out / "state"),
        "--output", shown(out / "reviewed.jsonl"), "--failures", shown(out / "failures.jsonl"),
    ]  # fmt: skip
    if base_url:
        command += ["--base-url", base_url]
    if progress is not None:
        command.append("--progress" if progress else "--no-progress")
    return command


def child_env(env_file: Path, *, simulated: bool) -> dict[str, str]:
    """The CLI's environment: the task reads its settings from the same env file."""
    env = {**os.environ, "REVIEW_ENV_FILE": str(env_file.resolve())}
    if simulated:
        env["OPENAI_API_KEY"] = SIMULATOR_KEY
    return env


def review_logs(out: Path) -> list[Path]:
    """The runs' review logs: ``ctx.log("review", ...)`` lines, one file per run."""
    return sorted((out / "state" / "logs").glob("*.review.jsonl"))


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it: shorter to read."""
    absolute, here = path.resolve(), Path.cwd()
    return str(absolute.relative_to(here)) if absolute.is_relative_to(here) else str(path)


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
