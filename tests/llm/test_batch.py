"""Prompt tasks through the providers' Batch APIs (``rowpilot.llm.batch``), end to end:
the engine, the real simulator's batch endpoints on 127.0.0.1, the official SDKs.

The simulator's batches run on its batch clock; the run's wait between looks
(``rowpilot.llm.batch.poll_sleep``) is replaced by a move of that clock, so no test
waits for time to pass. Expected answers are the simulator's rules applied to each row.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

import rowpilot
from conftest import Simulators
from rowpilot.llm import batch
from rowpilot.llm.cost import cost_usd, find_price
from rowpilot.simulator.server import Simulator, SimulatorConfig, _row_object
from rowpilot.state.batches import LEDGER_FILE
from rowpilot.state.registry import REGISTRY_FILE

KEY = "sk-" + "batch-test-5be1"
MODEL = "openai/gpt-4o-mini"
CLAUDE = "anthropic/claude-haiku-4-5"
LABELS = ["racist", "sexist", "homophobic"]
HOUR = 3600.0


def rows(n: int, start: int = 0) -> list[dict[str, str]]:
    words = ["kind", "racist", "plain", "sexist", "quiet", "homophobic", "green", "loud"]
    return [
        {
            "id": f"k{i:05d}",
            "text": f"row {i} is " + " ".join(words[j % 8] for j in range(i % 5 + 1)),
        }
        for i in range(start, start + n)
    ]


def expected(text: str) -> dict[str, Any]:
    return _row_object(text, {label: {"type": "boolean"} for label in LABELS})


@pytest.fixture(autouse=True)
def keyed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


class BatchClock:
    """The run's waits between looks, as moves of the simulator's batch clock."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.sim.advance_batches(seconds)


@pytest.fixture
def sim(simulator_for: Simulators) -> Simulator:
    return simulator_for(SimulatorConfig(api_key=KEY, completion_delay_s=2 * HOUR))


@pytest.fixture
def clock(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> BatchClock:
    fake = BatchClock(sim)
    monkeypatch.setattr(batch, "poll_sleep", fake)
    return fake


def base_url(sim: Simulator, model: str) -> str:
    return sim.anthropic_base_url if model.startswith("anthropic/") else sim.openai_base_url


def batch_run(
    sim: Simulator, source: Any, state: Path, model: str = MODEL, **settings: Any
) -> rowpilot.Result:
    defaults: dict[str, Any] = {
        "key": "id",
        "model": model,
        "base_url": base_url(sim, model),
        "text_column": "text",
        "labels": LABELS,
        "state": state,
        "env_file": None,
        "batch_api": True,
        "batch_poll": 900.0,
    }
    defaults.update(settings)
    return rowpilot.run(source=source, **defaults)


def batch_stats(sim: Simulator, provider: str = "openai") -> dict[str, Any]:
    stats: dict[str, Any] = sim.stats()["batches"][provider]
    return stats


def online_calls(sim: Simulator) -> int:
    requests = sim.stats()["requests"]
    return sum(sum(requests.get(name, {}).values()) for name in ("chat.completions", "messages"))


def query(state: Path, sql: str, file: str = REGISTRY_FILE) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{state / file}?mode=ro", uri=True) as db:
        return db.execute(sql).fetchall()


def check_answers(result: rowpilot.Result, given: list[dict[str, str]]) -> None:
    records = {record.key: record for record in result}
    assert len(records) == len(given)
    for row in given:
        record = records[row["id"]]
        assert record.status == "done", (row, record.error)
        assert {label: record.output[label] for label in LABELS} == expected(row["text"])


def test_a_batch_run_answers_every_row_through_batches_within_the_request_limit(
    sim: Simulator, clock: BatchClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(batch.MAX_REQUESTS_ENV, "50")
    given = rows(120)
    result = batch_run(sim, given, tmp_path / "state")
    check_answers(result, given)
    assert result.summary.status == "completed"
    stats = batch_stats(sim)
    assert stats["created"] == 3  # 120 rows at 50 a batch: as few batches as fit
    assert stats["rows_per_batch"] == [50, 50, 20]
    assert online_calls(sim) == 0
    assert clock.waits and set(clock.waits) == {900.0}
    # Journaled like online answers: a call and an answer per row, at the batch price.
    calls = query(
        tmp_path / "state", "SELECT rows, cost_usd, input_tokens, output_tokens FROM calls"
    )
    assert len(calls) == 120 and all(row[0] == 1 for row in calls)
    online = find_price("openai", "gpt-4o-mini")
    price = find_price("openai", "gpt-4o-mini", batch=True)
    assert price is not None and online is not None and price.input == online.input / 2
    paid = sum(cost_usd(price, i, o) for _, _, i, o in calls)
    assert sum(row[1] for row in calls) == pytest.approx(paid)
    assert result.summary.cost_usd == pytest.approx(paid)
    statuses = query(tmp_path / "state", "SELECT status FROM batches", LEDGER_FILE)
    assert sorted(statuses) == [("collected",)] * 3

    again = batch_run(sim, given, tmp_path / "state")
    assert again.summary.skipped == 120
    assert batch_stats(sim)["created"] == 3  # nothing asked twice


def test_an_anthropic_batch_run_answers_every_row_through_message_batches(
    sim: Simulator, clock: BatchClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(batch.MAX_REQUESTS_ENV, "40")
    given = rows(100)
    result = batch_run(sim, given, tmp_path / "state", CLAUDE)
    check_answers(result, given)
    stats = batch_stats(sim, "anthropic")
    assert stats["rows_per_batch"] == [40, 40, 20]
    assert online_calls(sim) == 0
    price = find_price("anthropic", "claude-haiku-4-5", batch=True)
    online = find_price("anthropic", "claude-haiku-4-5")
    assert price is not None and online is not None and price.output == online.output / 2
    calls = query(tmp_path / "state", "SELECT cost_usd, input_tokens, output_tokens FROM calls")
    assert sum(c for c, _, _ in calls) == pytest.approx(
        sum(cost_usd(price, i, o) for _, i, o in calls)
    )
