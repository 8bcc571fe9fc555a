"""Jobs on two Ray actors against a rate-limited simulator: the driver is the one authority
for every limit, so the actors together keep to the model's rpm and tpm and the search
API's rpm as one process would, next to no 429s (at most 0.5% of the requests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import rowpilot
from rowpilot.simulator.server import Simulator, SimulatorConfig

RPM = 1200  # the model's and the search API's: 20 a second
TPM = 36_000  # about 15 requests a second of ~40 tokens: the tighter of the two
MODEL = "openai/gpt-4o-mini"
TASKS = Path(__file__).with_name("job_tasks.py")


@pytest.fixture(scope="module")
def sim() -> Any:
    config = SimulatorConfig(
        rpm=RPM, tpm=TPM, search_rpm=RPM, latency_ms=20, search_latency_ms=10, seed=5
    )
    with Simulator(config) as simulator:
        yield simulator


@pytest.fixture(autouse=True)
def ray_and_key(ray_session: None, monkeypatch: pytest.MonkeyPatch, sim: Simulator) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-" + "test-not-checked")
    sim.reset()


def check_limits_held(sim: Simulator, requests: int) -> None:
    stats = sim.stats()
    assert stats["rate_limited"] <= 0.005 * requests, stats
    for resource, view in sim.admissions(1.0).items():
        # One second's refill plus the one second's worth the bucket holds, at most.
        assert view["max_admitted"] <= RPM / 60 * 2, (resource, view)
        assert view["max_arrived"] <= RPM / 60 * 2, (resource, view)


def test_a_steps_job_on_two_actors_keeps_to_every_limit(sim: Simulator, tmp_path: Path) -> None:
    rows = [
        {"id": f"r{i:03d}", "name": f"brand {i}", "search_url": sim.search_url} for i in range(150)
    ]
    result = rowpilot.run(
        f"{TASKS}:llm_then_search",
        rows,
        key="id",
        model=MODEL,
        base_url=sim.openai_base_url,
        executor="ray",
        ray_workers=2,
        workers=8,
        max_tokens=16,
        limits={"search": {"rpm": RPM}},
        state=tmp_path / "state",
        progress=False,
    )
    assert result.summary.status == "completed", result.summary.lines()
    assert result.summary.executor == "2 Ray actors"
    for record in result:
        assert record.output["hits"] == 3
        assert record.output["pid"] != 0
    requests = sim.stats()["requests"]
    assert requests["chat.completions"]["200"] == 150
    assert requests["search"]["200"] == 150
    check_limits_held(sim, 300)


def test_a_prompt_job_asked_for_ray_stays_on_the_driver_within_the_limits(
    sim: Simulator, tmp_path: Path
) -> None:
    rows = [{"id": f"r{i:03d}", "text": f"review number {i}"} for i in range(120)]
    result = rowpilot.run(
        source=rows,
        key="id",
        model=MODEL,
        base_url=sim.openai_base_url,
        prompt="Summarise: {text}",
        executor="ray",
        workers=8,
        max_tokens=16,
        state=tmp_path / "state",
        progress=False,
    )
    assert result.summary.status == "completed", result.summary.lines()
    assert result.summary.executor == "threads"  # its HTTP calls are the driver's own
    assert sim.stats()["requests"]["chat.completions"]["200"] == 120
    check_limits_held(sim, 120)
