"""A real job to report on (conftest.py's ``report_job``): a prompt run against the
simulator on 127.0.0.1 that meets 429s (the simulator admits 2 requests at once, the run
starts 8), content-filter failures
(rows with the refused word, one of them keyed ``<script>...``), retried 500s, and a
budget that stops it before the end; then a second run of the same job that finishes it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import rowpilot
from rowpilot.simulator.server import Simulator, SimulatorConfig

KEY = "sk-" + "report-test-93c1"
MODEL = "openai/gpt-4o-mini"
HOSTILE_KEY = "<script>window.pwned=1</script>"
REFUSED = "forbidden"
ROWS = 120
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
    first: rowpilot.Result
    second: rowpilot.Result


def run_job(simulator: Simulator, state: Path, **settings: object) -> rowpilot.Result:
    given: dict[str, object] = {
        "key": "id",
        "model": MODEL,
        "base_url": simulator.openai_base_url,
        "prompt": "Is this review positive? {text}",
        "labels": ["positive", "negative"],
        "state": state,
        "env_file": None,
        "workers": 8,
        "retry_delay": 0.01,
    }
    given.update(settings)
    return rowpilot.run(source=rows(), **given)
