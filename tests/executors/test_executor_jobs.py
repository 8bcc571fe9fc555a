"""Whole jobs on each executor (local threads, worker processes, Ray actors), through
``rowpilot.run``: the same outputs on the same rows, failures with their type and cause,
timeouts, stops, the budget, grouped rows, and ``ctx`` steps served by the driver (one
journal, one budget, one set of limits) wherever the task runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

import rowpilot
from conftest import Simulators
from rowpilot.simulator.server import Simulator, SimulatorConfig

TASKS = Path(__file__).with_name("job_tasks.py")
KINDS = ("local", "process", "ray")
CANARY = "sk-" + "canary-0e1d2c3a4f6075be"
MODEL = "openai/gpt-4o-mini"
PRICES = {MODEL: {"input": 1.0, "output": 4.0}}


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "ray":
        request.getfixturevalue("ray_session")
    name: str = request.param
    return name


def run(kind: str, task: Any, rows: list[dict[str, Any]], state: Path, **settings: Any) -> Any:
    chosen: dict[str, Any] = {"executor": kind}
    if kind == "ray":
        chosen["ray_workers"] = 2
    else:
        chosen["workers"] = 2
    if isinstance(task, str):
        task = f"{TASKS}:{task}"
    return rowpilot.run(task, rows, key="id", state=state, progress=False, **chosen, **settings)


def numbered(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"id": f"r{i:03d}", "n": i, "name": f"brand {i}", **extra} for i in range(n)]


def test_every_output_lands_on_its_own_row(kind: str, tmp_path: Path) -> None:
    result = run(kind, "double", numbered(200), tmp_path / "state")
    assert result.summary.status == "completed"
    outputs = {record.key: record.output for record in result}
    assert {key: out["double"] for key, out in outputs.items()} == {
        f"r{i:03d}": 2 * i for i in range(200)
    }
    pids = {out["pid"] for out in outputs.values()}
    assert (os.getpid() in pids) is (kind == "local")
    if kind != "local":
        assert result.summary.executor == ("2 processes" if kind == "process" else "2 Ray actors")


def test_failures_keep_their_type_and_cause(kind: str, tmp_path: Path) -> None:
    result = run(kind, "odd_rows_fail", numbered(10), tmp_path / "state", max_attempts=1)
    assert result.summary.done == 5
    assert result.summary.failed == 5
    failures = {f.key: f for f in result.failures()}
    assert sorted(failures) == [f"r{i:03d}" for i in range(1, 10, 2)]
    assert {f.error_type for f in failures.values()} == {"NoColumn"}
    assert {f.cause for f in failures.values()} == {"task_error"}
    assert "row 3 has no column" in failures["r003"].error


def test_a_row_past_its_timeout_fails_as_a_timeout(kind: str, tmp_path: Path) -> None:
    release = tmp_path / "release"
    rows = numbered(8, release=str(release))
    try:
        result = run(kind, "stuck_on_three", rows, tmp_path / "state", timeout=1.0, max_attempts=1)
    finally:
        release.touch()  # a thread cannot be stopped: let the local one go
    assert result.summary.done == 7
    failures = result.failures()
    assert [f.key for f in failures] == ["r003"]
    assert failures[0].cause == "timeout"


def test_a_stop_leaves_its_row_pending_and_the_next_run_finishes(kind: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    rows = numbered(12, go=str(go))
    first = run(kind, "stops_unless_told", rows, tmp_path / "state")
    assert first.summary.status == "interrupted"
    assert "r005" not in {record.key for record in first}
    go.touch()
    second = run(kind, "stops_unless_told", rows, tmp_path / "state")
    assert second.summary.status == "completed"
    assert sorted(record.key for record in second) == [f"r{i:03d}" for i in range(12)]


def test_the_budget_holds_across_workers(kind: str, tmp_path: Path) -> None:
    record = tmp_path / "paid.log"
    rows = numbered(40, record=str(record))
    result = run(kind, "pays_a_cent", rows, tmp_path / "state", budget=0.105)
    assert result.summary.status == "budget_reached"
    ran = record.read_text().splitlines()
    assert len(ran) == result.summary.done == 10  # reserved before each call, exactly
    assert result.summary.cost_usd <= 0.105


def test_grouped_rows_run_in_the_workers(kind: str, tmp_path: Path) -> None:
    from rowpilot.tasks.python import load_task

    module = sys.modules[load_task(f"{TASKS}:double").fn.__module__]
    result = run(kind, module.Lengths(), numbered(20), tmp_path / "state")
    assert result.summary.done == 20
    outputs = {record.key: record.output for record in result}
    assert all(out["length"] == len(f"brand {int(k[1:])}") for k, out in outputs.items())
    where = {out["where"].split(":")[0] for out in outputs.values()}
    assert (str(os.getpid()) in where) is (kind == "local")


# -- ctx steps, served by the driver ---------------------------------------------------


@pytest.fixture
def sim(simulator_for: Simulators, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    return simulator_for(SimulatorConfig(api_key=CANARY, latency_ms=2))


def chat_answered(sim: Simulator) -> int:
    return int(sim.stats()["requests"].get("chat.completions", {}).get("200", 0))


def test_steps_from_workers_are_journaled_once_and_replayed(
    kind: str, sim: Simulator, tmp_path: Path
) -> None:
    settings = {"model": MODEL, "base_url": sim.openai_base_url, "prices": PRICES}
    result = run(kind, "llm_and_call", numbered(10), tmp_path / "state", retry_delay=0, **settings)
    assert result.summary.status == "completed"
    assert result.summary.retries == 5
    # Two LLM steps per row; the five retried rows replayed theirs from the journal.
    assert chat_answered(sim) == 20
    assert result.summary.calls == 30  # 20 LLM calls and 10 ctx.call calls, each once
    for record in result:
        name = f"brand {int(record.key[1:])}"
        assert record.output["draft"].endswith(f"WRITE ABOUT {name.upper()}")
        assert record.output["hits"] == len(name)
    review = list((tmp_path / "state" / "logs").glob("*.review.jsonl"))
    assert len(review) == 1
    assert len(review[0].read_text().splitlines()) == 10
    # The key stays in the driver's environment: nothing the run wrote holds it.
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path


def test_sync_steps_llm_call_and_map_work_from_workers(
    kind: str, sim: Simulator, tmp_path: Path
) -> None:
    settings = {"model": MODEL, "base_url": sim.openai_base_url, "prices": PRICES}
    result = run(kind, "sync_llm", numbered(6), tmp_path / "state", **settings)
    assert result.summary.status == "completed"
    for record in result:
        name = f"brand {int(record.key[1:])}"
        assert record.output["answer"].endswith(f"WRITE ABOUT {name.upper()}")
        assert record.output["halves"] == [name, name]
    assert chat_answered(sim) == 6


def test_steps_from_workers_run_as_many_at_once_as_the_workers_hold(
    kind: str, simulator_for: Simulators, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Not --workers (2 processes or actors here) but every item the executor holds may
    wait on an LLM answer at once: the provider's limits bound them, not a worker count."""
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    sim = simulator_for(SimulatorConfig(api_key=CANARY, latency_ms=100))
    settings = {"model": MODEL, "base_url": sim.openai_base_url, "prices": PRICES}
    result = run(kind, "async_llm", numbered(40), tmp_path / "state", **settings)
    assert result.summary.status == "completed"
    assert chat_answered(sim) == 40
    in_flight = sim.stats()["in_flight_max"]
    assert in_flight > 2 if kind != "local" else in_flight <= 2


def test_ray_runs_one_actor_per_cpu_of_the_cluster_by_default(
    ray_session: None, tmp_path: Path
) -> None:
    result = rowpilot.run(
        f"{TASKS}:double", numbered(20), key="id", state=tmp_path / "state",
        progress=False, executor="ray",
    )  # fmt: skip
    assert result.summary.done == 20
    assert result.summary.executor == "2 Ray actors"  # the session's Ray has 2 CPUs
    assert len({record.output["pid"] for record in result} - {os.getpid()}) >= 1


@pytest.mark.parametrize("remote", ["process", "ray"])
def test_a_row_that_kills_its_worker_fails_alone_as_a_crash(
    remote: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if remote == "ray":
        request.getfixturevalue("ray_session")
    result = run(
        remote, "kills_its_worker_on_seven", numbered(60), tmp_path / "state", max_attempts=2
    )
    assert result.summary.done == 59
    failures = result.failures()
    assert [f.key for f in failures] == ["r007"]  # none of the rows that shared its worker
    assert failures[0].cause == "process_crash"
