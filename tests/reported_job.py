"""A real job to report on (conftest.py's ``report_job``): a prompt run against the
simulator on 127.0.0.1 that meets 429s (the simulator admits 2 requests at once, the run
starts 8), content-filter failures
(rows with the refused word, one of them keyed ``<script>...``), retried 500s, and a
budget that stops it before the end; then a second run of the same job that finishes it."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rowpilot
from rowpilot.simulator.server import Simulator, SimulatorConfig

KEY = "sk-" + "report-test-93c1"
MODEL = "openai/gpt-4o-mini"
HOSTILE_KEY = "<script>window.pwned=1</script>"
REFUSED = "forbidden"
ROWS = 120
RPM = 60_000.0  # given to the second run
CONFIG = SimulatorConfig(
    api_key=KEY, max_concurrent=2, latency_ms=5, refuse_word=REFUSED, error_500=0.05, seed=3
)


def rows(n: int = ROWS) -> list[dict[str, str]]:
    found = []
    for i in range(n):
        text = f"review {i}: " + ("great" if i % 2 else "awful")
        if i % 10 == 3:
            text += f" {REFUSED}"
        found.append({"id": HOSTILE_KEY if i == 3 else f"r{i:03d}", "text": text})
    return found


@dataclass
class Job:
    state: Path
    simulator: Simulator
    first: str  # what the first run (the CLI's) printed
    second: rowpilot.Result


def write_rows(path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["id", "text"])
        writer.writeheader()
        writer.writerows(rows())
    return path


def settings(simulator: Simulator, state: Path) -> dict[str, Any]:
    return {
        "key": "id",
        "model": MODEL,
        "base_url": simulator.openai_base_url,
        "prompt": "Is this review positive? {text}",
        "labels": ["positive", "negative"],
        "state": state,
        "workers": 8,
        "retry_delay": 0.01,
    }


def cli_args(source: Path, simulator: Simulator, state: Path, budget: float) -> list[str]:
    """The first run, as a user types it: its command is what the report shows."""
    args = ["run", str(source), "--budget", str(budget), "--no-progress"]
    for name, value in settings(simulator, state).items():
        flag = "--" + name.replace("_", "-")
        args += [flag, *value] if isinstance(value, list) else [flag, str(value)]
    return args


def run_job(simulator: Simulator, source: Path, state: Path) -> rowpilot.Result:
    """The second run, through the library, with a limit given (the report says so)."""
    return rowpilot.run(source=source, env_file=None, rpm=RPM, **settings(simulator, state))
