"""`rowpilot label` and `rowpilot.label` take the Batch API settings as `rowpilot run` does
(docs/batch.md), and the local model refuses them: it has no API to batch."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import rowpilot
from conftest import BatchClock, Cli, Simulators
from rowpilot.errors import ConfigError
from rowpilot.simulator.server import Simulator, SimulatorConfig

KEY = "sk-" + "label-batch-7c2d"


@pytest.fixture
def sim(simulator_for: Simulators, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    started = simulator_for(SimulatorConfig(api_key=KEY, completion_delay_s=3600.0))
    BatchClock.installed(started, monkeypatch)
    return started


def texts(tmp_path: Path) -> Path:
    path = tmp_path / "reviews.csv"
    words = ["spam offer", "meeting notes", "urgent spam", "lunch"]
    pd.DataFrame(
        {"id": [f"r{i}" for i in range(12)], "text": [words[i % 4] for i in range(12)]}
    ).to_csv(path, index=False)
    return path


def test_the_python_label_sends_its_rows_through_the_batch_api(
    sim: Simulator, tmp_path: Path
) -> None:
    frame = rowpilot.label(
        texts(tmp_path),
        text_column="text",
        labels=["spam", "urgent"],
        model="openai/gpt-4o-mini",
        base_url=sim.openai_base_url,
        key="id",
        batch_api=True,
        state=tmp_path / "state",
        env_file=None,
        summary=False,
    )
    assert len(frame) == 12 and frame["spam"].notna().all()
    stats = sim.stats()
    assert stats["batches"]["openai"]["created"] >= 1
    assert "chat.completions" not in stats["requests"]  # nothing was asked online


def test_the_label_command_detaches_and_collects(sim: Simulator, tmp_path: Path, cli: Cli) -> None:
    path = texts(tmp_path)
    args = ["label", str(path), "--text-column", "text", "--labels", "spam", "urgent"]
    args += ["--model", "openai/gpt-4o-mini", "--base-url", sim.openai_base_url, "--key", "id"]
    args += ["--batch-api", "--state", str(tmp_path / "state"), "--no-progress"]
    detached = cli(*args, "--detach", cwd=tmp_path)
    assert detached.returncode == 0, detached.stderr
    assert "run the same command again" in detached.stdout
    collected = cli(*args, cwd=tmp_path)
    assert collected.returncode == 0, collected.stderr
    assert "12 done" in collected.stdout
    # The batch's answers were paid in this run: counted apart from those taken from the
    # journal (12 rows, 4 distinct texts: one request of 4 rows, the 8 others share them).
    assert "(1 through the Batch API, answering 4), 8 answers from the call cache" in (
        collected.stdout
    )


def test_the_local_model_refuses_the_batch_api(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--batch-api would do nothing"):
        rowpilot.label(
            texts(tmp_path),
            text_column="text",
            labels=["spam", "urgent"],
            model="local/wordllama",
            batch_api=True,
            state=tmp_path / "state",
        )
