"""Shards run by hand: ``rowpilot run --shard K/4`` as four real processes side by side
against one simulator, which keeps one account's rate limit as a provider does; then
their states merged and verified, as docs/scaling.md says.

Each shard paces at a quarter of the model's limit by default (learned from the
simulator's headers, which report the whole account's limit), so together they stay
under it; ``--shard-limits full`` gives each the whole limit again. What is asserted is
counted at the simulator (429s, answers) or read from the runs' logs, never timed.
(Four shards at the whole limit storm the account: tests/llm/test_limits.py shows it on
a virtual clock, where it costs no time.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import Cli, Simulators, WriteCsv, start_cli
from rowpilot.simulator.server import Simulator, SimulatorConfig

# A fake key, assembled so that secret scanners do not take this file for a leak.
CANARY = "sk-" + "canary-3f8a61d2c9b04e75"
MODEL = "openai/gpt-4o-mini"
ROWS = 480
RPM = 6000  # 100 requests/s for the account: 480 rows in about 5 s, however split


@pytest.fixture
def sim(simulator_for: Simulators, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    """One account with an rpm limit (a second's worth of burst, as providers hold)."""
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    return simulator_for(SimulatorConfig(api_key=CANARY, rpm=RPM, latency_ms=20, seed=4))


@pytest.fixture
def data(tmp_path: Path, write_csv: WriteCsv) -> Path:
    rows = ([f"k{i:04d}", f"row {i}"] for i in range(ROWS))
    return write_csv(tmp_path / "data.csv", ["id", "text"], rows)


def run_args(sim: Simulator, *extra: str) -> list[str]:
    return [
        "run",
        "data.csv",
        "--key",
        "id",
        "--model",
        MODEL,
        "--base-url",
        sim.openai_base_url,
        "--prompt",
        "Repeat: {text}",
        "--workers",
        "8",
        *extra,
    ]


def ended_with(state: Path) -> dict[str, Any]:
    """The limits the model's resource ended the run with, from the run's log."""
    [log] = (state / "logs").glob("*.jsonl")
    events = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    [limits] = [event for event in events if event["event"] == "run.limits"]
    found: dict[str, Any] = limits["resources"][MODEL]
    return found


def answered_and_refused(sim: Simulator) -> tuple[int, int]:
    chat = sim.stats()["requests"].get("chat.completions", {})
    return int(chat.get("200", 0)), int(chat.get("429", 0))


@pytest.mark.slow
def test_four_shards_side_by_side_stay_under_one_accounts_limit(
    sim: Simulator, data: Path, tmp_path: Path, cli: Cli
) -> None:
    shards = [start_cli(*run_args(sim, "--shard", f"{k}/4"), cwd=tmp_path) for k in range(1, 5)]
    ends = [shard.communicate(timeout=120) for shard in shards]  # all started, then waited
    for k, (shard, (out, err)) in enumerate(zip(shards, ends, strict=True), start=1):
        assert shard.returncode == 0, f"exit {shard.returncode}\n{out}\n{err}"
        assert f"shard {k}/4: pacing at 1/4 of each provider limit" in err
    answered, refused = answered_and_refused(sim)
    assert answered == ROWS  # each row once, in one of the shards
    assert refused <= 0.005 * (answered + refused), (answered, refused)
    states = sorted((tmp_path / ".rowpilot" / "data-prompt").glob("shard-*-of-4"))
    assert len(states) == 4
    for state in states:  # the headers said 6,000 rpm: the account's, so a quarter each
        assert ended_with(state)["rpm"] == RPM / 4

    merged = cli("merge", *states, "--into", "merged")
    assert merged.returncode == 0, merged.stderr
    verified = cli("verify", "merged", "--source", "data.csv", "--key", "id")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"expected {ROWS}  done {ROWS}" in verified.stdout


@pytest.mark.parametrize(
    ("flags", "rpm"),
    [
        ([], RPM / 4),  # learned from the headers, a quarter of the account's
        (["--shard-limits", "full"], RPM),
        (["--rpm", "2000"], 500),  # given, a quarter of it
        (["--rpm", "2000", "--shard-limits", "full"], 2000),
    ],
    ids=["learned-split", "learned-full", "given-split", "given-full"],
)
def test_a_shard_paces_at_a_quarter_unless_told_full(
    sim: Simulator, data: Path, tmp_path: Path, cli: Cli, flags: list[str], rpm: float
) -> None:
    result = cli(*run_args(sim, "--shard", "2/4", "--limit", "8", "--state", "s", *flags))
    assert result.returncode == 0, result.stdout + result.stderr
    assert ended_with(tmp_path / "s")["rpm"] == rpm
    assert ("pacing at 1/4" in result.stderr) is (rpm < 2000)
