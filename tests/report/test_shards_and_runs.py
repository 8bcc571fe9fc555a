"""The report of merged shards (one line a shard, merged totals, every shard's runs drawn
from the logs the merge brought), of a job run several times, of --workers auto and
memory pauses, and of resources beyond a prompt's model (a ctx.call resource, a limit
learned from the headers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import rowpilot
from conftest import Simulators, WriteCsv, start_cli, wait_until
from rowpilot.errors import StateError
from rowpilot.report import read_report
from rowpilot.report.page import render_page
from rowpilot.simulator.server import SimulatorConfig
from rowpilot.state.operations import merge


def double(row: dict[str, Any]) -> dict[str, Any]:
    if row["n"] % 7 == 0:
        raise ValueError("seven")
    return {"double": row["n"] * 2}


def test_merged_shards_have_a_line_each_and_merged_totals(tmp_path: Path) -> None:
    rows = [{"id": f"k{i}", "n": i} for i in range(60)]
    shards = []
    for k in (1, 2, 3):
        state = tmp_path / f"shard-{k}"
        rowpilot.run(double, rows, key="id", shard=f"{k}/3", state=state, progress=False)
        shards.append(state)
    into = tmp_path / "merged"
    merge(shards, into)
    assert len(list((into / "logs").glob("*.jsonl"))) == 3  # the shards' logs came along

    data = read_report(into)
    assert [s.shard for s in data.shards] == ["1/3", "2/3", "3/3"]
    assert sum(s.done for s in data.shards) == data.done == 60 - 9
    assert sum(s.failed for s in data.shards) == data.failed == 9
    assert len(data.runs) == 3 and len(data.timeline.lengths) == 3
    assert sum(data.items_series) == 60
    page = render_page(data)
    assert '<section id="shards">' in page and "<b>merged</b>" in page

    merge(shards, into)  # again: the logs are not copied twice
    assert len(list((into / "logs").glob("*.jsonl"))) == 3


def test_each_run_of_a_job_has_its_line(tmp_path: Path) -> None:
    rows = [{"id": f"k{i}", "n": i} for i in range(20)]
    state = tmp_path / "state"
    rowpilot.run(double, rows, key="id", state=state, limit=5, progress=False)
    rowpilot.run(double, rows, key="id", state=state, progress=False)
    rowpilot.run(double, rows, key="id", state=state, retry_failed=True, progress=False)
    data = read_report(state)
    assert [run.done for run in data.runs] == [4, 13, 0]
    assert [run.failed for run in data.runs] == [1, 2, 3]
    assert data.shards == []  # no shard: no shard table
    assert data.failed == 3 and data.items_total == 20


def test_workers_auto_and_memory_pauses_are_drawn(tmp_path: Path) -> None:
    rows = [{"id": f"k{i}", "n": i} for i in range(40)]
    # 1 MB of memory cannot hold an item: admission pauses, and goes on one at a time.
    state = tmp_path / "state"
    rowpilot.run(double, rows, key="id", state=state, workers="auto", max_memory=1,
                 progress=False)  # fmt: skip
    data = read_report(state)
    assert data.runs[0].workers.startswith("auto (from ")
    assert any(workers is not None for workers in data.workers_series)
    assert [pause.kind for pause in data.pauses].count("memory") >= 1
    assert all(0 <= p.start <= p.end <= data.timeline.span + 1e-6 for p in data.pauses)


def lookup(text: str) -> str:
    return text.upper()


async def with_a_resource(row: dict[str, Any], ctx: Any) -> dict[str, Any]:
    found = await ctx.call("lookup", lookup, str(row["n"]), cost=0.001)
    return {"found": found}


def test_a_ctx_call_resource_has_its_requests_limit_and_cost(tmp_path: Path) -> None:
    rows = [{"id": f"k{i}", "n": i} for i in range(30)]
    state = tmp_path / "state"
    limits = {"lookup": {"rpm": 60_000}}
    rowpilot.run(with_a_resource, rows, key="id", state=state, limits=limits, progress=False)
    data = read_report(state)
    view = data.resources["lookup"]
    assert view.requests == 30 and view.rpm == 60_000 and not view.learned
    assert sum(view.latency.values()) == 30
    assert abs(data.cost_usd - 0.03) < 1e-9
    page = render_page(data)
    assert "<code>lookup</code>" in page and "60,000 rpm (given)" in page


def test_a_limit_learned_from_the_headers_is_shown_as_learned(
    simulator_for: Simulators, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = simulator_for(SimulatorConfig(api_key="sk-" + "learned-limit-1", rpm=6000))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-" + "learned-limit-1")
    rows = [{"id": f"k{i}", "text": f"text {i}"} for i in range(20)]
    state = tmp_path / "state"
    rowpilot.run(source=rows, key="id", model="openai/gpt-4o-mini", prompt="Say {text}",
                 labels=["a", "b"], base_url=sim.openai_base_url, state=state,
                 env_file=None, progress=False)  # fmt: skip
    view = read_report(state).resources["openai/gpt-4o-mini"]
    assert (view.rpm, view.learned) == (6000, True)
    assert "6,000 rpm (learned)" in render_page(read_report(state))


def test_a_killed_run_is_shown_as_crashed(
    tmp_path: Path, tasks_file: Path, write_csv: WriteCsv
) -> None:
    # Three quick rows, then rows that sleep far longer than the test: it is killed there.
    rows = [[f"k{i}", "0.001" if i < 3 else "600"] for i in range(8)]
    source = write_csv(tmp_path / "rows.csv", ["id", "sleep"], rows)
    state = tmp_path / "state"
    process = start_cli(
        "run", str(source), "--task", f"{tasks_file}:sleepy", "--key", "id", "--state",
        str(state), "--workers", "2", "--no-progress", cwd=tmp_path, to_kill=True,
    )  # fmt: skip
    try:
        wait_until(lambda: _done(state) == 3, "the quick rows committed")
        assert read_report(state).runs[0].status == "running"  # the lock is held
    finally:
        process.kill()
        process.communicate()
    data = read_report(state)
    assert [run.status for run in data.runs] == ["crashed"] and not data.running
    assert data.done == 3 and data.items_total == 8
    assert "crashed (killed: no end recorded" in render_page(data)


def _done(state: Path) -> int:
    if not (state / "registry.sqlite").exists():
        return 0
    try:
        return read_report(state).done
    except StateError:  # the registry being created
        return 0
