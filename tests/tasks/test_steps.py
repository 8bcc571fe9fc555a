"""Multi-step Python tasks: ctx.llm, ctx.call, ctx.map and ctx.log through the real engine.

LLM steps talk to a real ``Simulator`` on 127.0.0.1 through the official SDK, whose
answers are deterministic, so a test can say what each step must have returned and count
the requests the simulator answered. ``ctx.call`` steps call local functions that record
when they ran.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import rowpilot
from conftest import Simulators, invoke_cli, unmeasured, wait_until
from rowpilot import Ctx
from rowpilot._config import build_config
from rowpilot.errors import ConfigError, SubItemError, TaskOutputError
from rowpilot.llm.cost import Budget
from rowpilot.llm.limits import Limits
from rowpilot.simulator.server import Simulator, SimulatorConfig
from rowpilot.state.registry import REGISTRY_FILE
from rowpilot.tasks.steps import _build_resource, item_pace, step_session

ROWPILOT = str(Path(sys.executable).parent / "rowpilot")
CANARY = "sk-" + "canary-5be0e1d2c3a4f607"
MODEL = "openai/gpt-4o-mini"
PRICES = {MODEL: {"input": 1.0, "output": 4.0}}


@pytest.fixture(autouse=True)
def keyed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)


@pytest.fixture
def sim(simulator_for: Simulators) -> Simulator:
    """The session's simulator for this file's key, reset as if new."""
    return simulator_for(SimulatorConfig(api_key=CANARY, latency_ms=5))


def chat_answered(sim: Simulator) -> int:
    return int(sim.stats()["requests"].get("chat.completions", {}).get("200", 0))


def run(sim: Simulator, task: Any, rows: list[dict[str, Any]], state: Path, **settings: Any) -> Any:
    defaults: dict[str, Any] = {
        "key": "id",
        "model": MODEL,
        "base_url": sim.openai_base_url,
        "state": state,
        "env_file": None,
        "prices": PRICES,
        "progress": False,
    }
    defaults.update(settings)
    return rowpilot.run(task, rows, **defaults)


def brands(n: int) -> list[dict[str, Any]]:
    return [{"id": f"b{i:03d}", "name": f"brand {i}"} for i in range(n)]


class Verdict(BaseModel):
    fine: bool
    notes: str


SIZE_AND_TITLE = {
    "type": "object",
    "properties": {"size": {"type": "integer"}, "title": {"type": "string"}},
    "required": ["size", "title"],
}

# -- ctx.llm ----------------------------------------------------------------------------


async def three_steps(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    draft = await ctx.llm(f"Write about {row['name']}")
    verdict = await ctx.llm(f"Review this: {draft}", schema=Verdict)
    fields = await ctx.llm(
        [
            {"role": "system", "content": "You describe brands."},
            {"role": "user", "content": f"Describe {row['name']}"},
        ],
        schema=SIZE_AND_TITLE,
    )
    return {"draft": draft, "fine": verdict.fine, "size": fields["size"], "title": fields["title"]}


def test_llm_steps_return_text_models_and_dicts(sim: Simulator, tmp_path: Path) -> None:
    result = run(sim, three_steps, brands(12), tmp_path / "state")
    assert result.summary.status == "completed"
    for record in result:
        name = f"brand {int(record.key[1:])}"
        assert record.output["draft"].endswith(f"WRITE ABOUT {name.upper()}")
        assert isinstance(record.output["fine"], bool)
        assert record.output["size"] == len(f"Describe {name}")
        assert record.output["title"] == f"DESCRIBE {name.upper()}"
    assert chat_answered(sim) == 36
    assert result.summary.calls == 36
    assert result.summary.cost_usd > 0


def test_a_retried_item_replays_its_answered_steps_for_free(sim: Simulator, tmp_path: Path) -> None:
    async def flaky(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        first = await ctx.llm(f"one {row['name']}")
        second = await ctx.llm(f"two {first}")
        if ctx.attempt == 1:
            raise ConnectionError("dropped after two paid steps")
        third = await ctx.llm(f"three {second}")
        return {"third": third}

    result = run(sim, flaky, brands(5), tmp_path / "state", retry_delay=0)
    assert result.summary.done == 5 and result.summary.retries == 5
    # Two steps each before the failure, then only the third: the replays were free.
    assert chat_answered(sim) == 15
    assert result.summary.cached == 10


def test_the_same_prompt_twice_is_two_steps_and_both_replay(sim: Simulator, tmp_path: Path) -> None:
    async def ask_twice(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        answers = [await ctx.llm("tell me a joke", temperature=1.0) for _ in range(2)]
        if ctx.attempt == 1:
            raise TimeoutError("after both")
        return {"n": len(answers)}

    run(sim, ask_twice, brands(1), tmp_path / "state", retry_delay=0)
    # Two requests (a loop that asks again gets a second answer), none on the retry.
    assert chat_answered(sim) == 2


def test_a_schema_answer_is_repaired_when_invalid(tmp_path: Path) -> None:
    config = SimulatorConfig(api_key=CANARY, latency_ms=1, missing_field=0.3, seed=3)
    with Simulator(config) as simulator:
        result = run(simulator, three_steps, brands(20), tmp_path / "state", repair_attempts=6)
    assert result.summary.done == 20, [r.error for r in result if r.error]
    assert result.summary.calls > 60  # the repairs: 60 steps, some asked again


def test_llm_without_a_model_is_a_clear_error(tmp_path: Path) -> None:
    async def ask(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        return {"a": await ctx.llm("hi")}

    with pytest.raises(rowpilot.errors.ConfigError, match=r"ctx\.llm needs a model"):
        rowpilot.run(ask, brands(1), key="id", state=tmp_path / "s", progress=False)


def test_a_bad_key_fails_once_before_any_state(sim: Simulator, tmp_path: Path) -> None:
    async def ask(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        return {"a": await ctx.llm("hi")}

    os.environ["OPENAI_API_KEY"] = "sk-wrong"
    with pytest.raises(rowpilot.errors.ProviderSetupError):
        run(sim, ask, brands(3), tmp_path / "state")
    assert not (tmp_path / "state").exists()
    assert chat_answered(sim) == 0


def test_sync_tasks_use_the_sync_twins(sim: Simulator, tmp_path: Path) -> None:
    def sync_task(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        draft = ctx.llm_sync(f"Write about {row['name']}")
        found = ctx.call_sync("lookup", lambda q: {"q": q}, row["name"])
        parts = ctx.map_sync([1, 2, 3], lambda n, c: c.llm_sync(f"part {n}"), workers=2)
        return {"draft": draft, "q": found["q"], "parts": len(parts)}

    result = run(sim, sync_task, brands(6), tmp_path / "state", workers=2)
    assert result.summary.done == 6
    assert {r.output["q"] for r in result} == {f"brand {i}" for i in range(6)}


def test_sync_twins_refuse_to_block_an_async_task(sim: Simulator, tmp_path: Path) -> None:
    async def wrong(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        return {"a": ctx.llm_sync("hi")}

    result = run(sim, wrong, brands(1), tmp_path / "state", max_attempts=1)
    [record] = list(result)
    assert record.status == "failed" and "await ctx.llm" in (record.error or "")


# -- ctx.call ---------------------------------------------------------------------------


class Recorder:
    """A fake API: records when each call started, answers from its argument."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.starts: list[float] = []
        self.seconds = seconds
        self.lock = threading.Lock()

    async def __call__(self, query: str) -> dict[str, Any]:
        with self.lock:
            self.starts.append(time.monotonic())
        await asyncio.sleep(self.seconds)
        return {"query": query, "hits": [query.upper()]}

    def most_in(self, window: float) -> int:
        starts = sorted(self.starts)
        return max(
            sum(1 for t in starts[i:] if t - start < window) for i, start in enumerate(starts)
        )


def test_two_resources_keep_their_own_limits(sim: Simulator, tmp_path: Path) -> None:
    search, crm = Recorder(), Recorder()

    async def two_apis(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        hits = await ctx.call("search", search, row["name"])
        record = await ctx.call("crm", crm, row["id"])
        return {"hits": hits["hits"], "crm": record["query"]}

    limits = {"search": {"rpm": 1200}, "crm": {"rpm": 2400}}
    started = time.monotonic()
    result = run(sim, two_apis, brands(60), tmp_path / "state", workers=16, limits=limits)
    elapsed = time.monotonic() - started
    assert result.summary.done == 60
    # 20/s and 40/s with half a second of burst: no one-second window holds more.
    assert search.most_in(1.0) <= 20 + 10 + 1
    assert crm.most_in(1.0) <= 40 + 20 + 1
    assert elapsed >= (60 - 10) / 20 * 0.9  # the slower API set the pace
    assert {r.output["crm"] for r in result} == {f"b{i:03d}" for i in range(60)}


@pytest.mark.parametrize(
    ("shard_limits", "search", "model"),
    [
        ("split", Limits(rpm=300, max_concurrent=2), Limits(rpm=150, tpm=25_000)),
        ("full", Limits(rpm=1200, max_concurrent=8), Limits(rpm=600, tpm=100_000)),
    ],
)
def test_a_shards_step_resources_pace_at_its_share(
    shard_limits: str, search: Limits, model: Limits
) -> None:
    """Shard 2 of 4: a ctx.call resource's [limits.NAME] and a ctx.llm model's limits are
    each a quarter (max_concurrent rounded down), unless --shard-limits full."""
    config = build_config(
        {
            "source": "data.csv",
            "task": "tasks.py:f",
            "model": MODEL,
            "shard": "2/4",
            "shard_limits": shard_limits,
            "limits": {"search": {"rpm": 1200, "max_concurrent": 8}, MODEL: {"tpm": 100_000}},
            "rpm": 600,
        }
    )
    resource, _ = _build_resource("search", config)
    assert resource.limits == search
    session = step_session(config, MODEL, {"OPENAI_API_KEY": CANARY}, Budget(None))
    try:
        assert session.resource.limits == model
    finally:
        asyncio.run(session.aclose())


def test_call_results_are_journaled_and_replayed(sim: Simulator, tmp_path: Path) -> None:
    api = Recorder()

    async def task(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        found = await ctx.call("search", api, row["name"], cost=0.01)
        if ctx.attempt == 1:
            raise ConnectionError("after the paid call")
        return {"hits": found["hits"]}

    result = run(sim, task, brands(4), tmp_path / "state", retry_delay=0)
    assert result.summary.done == 4
    assert len(api.starts) == 4  # the retries replayed the journal
    assert result.summary.cost_usd == pytest.approx(0.04)
    with sqlite3.connect(tmp_path / "state" / REGISTRY_FILE) as db:
        assert db.execute("SELECT count(*) FROM calls WHERE provider = 'search'").fetchone() == (4,)


def test_journal_false_calls_again(sim: Simulator, tmp_path: Path) -> None:
    api = Recorder()

    async def task(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        await ctx.call("search", api, row["name"], journal=False)
        if ctx.attempt == 1:
            raise ConnectionError("again")
        return {}

    run(sim, task, brands(3), tmp_path / "state", retry_delay=0)
    assert len(api.starts) == 6


class StatusError(Exception):
    def __init__(self, status: int, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status_code = status
        self.headers = {"retry-after": str(retry_after)} if retry_after is not None else {}


def test_call_errors_with_a_status_are_retried_by_the_resource_policy(
    sim: Simulator, tmp_path: Path
) -> None:
    failures = {"b000": [503, 503], "b001": [429], "b002": [400]}
    seen: dict[str, int] = {}

    def api(key: str) -> dict[str, Any]:
        seen[key] = seen.get(key, 0) + 1
        pending = failures.get(key, [])
        if pending:
            raise StatusError(pending.pop(0), retry_after=0.05)
        return {"ok": key}

    async def task(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        return await ctx.call("api", api, row["id"])  # type: ignore[no-any-return]

    limits = {"api": {"max_attempts": 3, "retry_delay": 0.01}}
    result = run(sim, task, brands(4), tmp_path / "state", limits=limits, max_attempts=1)
    by_key = {r.key: r for r in result}
    assert by_key["b000"].status == "done" and seen["b000"] == 3
    assert by_key["b001"].status == "done" and seen["b001"] == 2
    assert by_key["b002"].status == "failed" and seen["b002"] == 1  # a 400 is not retried
    assert "HTTP 400" in (by_key["b002"].error or "")
    assert result.summary.rate_limited == 1


def test_an_auth_error_from_an_api_aborts_the_run(sim: Simulator, tmp_path: Path) -> None:
    def api(key: str) -> dict[str, Any]:
        raise StatusError(401)

    async def task(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        return await ctx.call("api", api, row["id"])  # type: ignore[no-any-return]

    result = run(sim, task, brands(30), tmp_path / "state", workers=2)
    assert result.summary.status == "aborted"
    assert result.summary.done == 0 and result.summary.pending == 30


def test_a_result_that_is_not_json_is_a_clear_error(sim: Simulator, tmp_path: Path) -> None:
    async def task(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        await ctx.call("api", object)
        return {}

    with pytest.raises(TaskOutputError, match="cannot be journaled"):
        run(sim, task, brands(1), tmp_path / "state")


def test_call_costs_never_pass_the_budget(sim: Simulator, tmp_path: Path) -> None:
    api = Recorder()

    async def task(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        try:
            await ctx.call("api", api, row["id"], cost=0.01)
        except Exception:  # a task's own catch-all must not swallow the budget stop
            return {"swallowed": True}
        return {"swallowed": False}

    result = run(sim, task, brands(40), tmp_path / "state", budget=0.055, workers=4)
    assert result.summary.status == "budget_reached"
    assert len(api.starts) == 5
    assert result.summary.cost_usd <= 0.055
    assert all(not r.output["swallowed"] for r in result if r.status == "done")


def test_llm_and_call_costs_share_one_budget(sim: Simulator, tmp_path: Path) -> None:
    async def task(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        await ctx.call("api", Recorder(), row["id"], cost=0.002)
        return {"a": await ctx.llm(f"Write about {row['name']}")}

    for budget in (0.004, 0.011, 0.02):
        state = tmp_path / f"state-{budget}"
        result = run(sim, task, brands(50), state, budget=budget, workers=3)
        assert result.summary.status == "budget_reached"
        assert result.summary.cost_usd <= budget


def test_a_cost_known_only_after_the_call_needs_its_ceiling(sim: Simulator, tmp_path: Path) -> None:
    async def task(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        return await ctx.call("api", Recorder(), row["id"], cost=lambda result: 0.001)  # type: ignore[no-any-return]

    with pytest.raises(ConfigError, match="max_cost") as caught:
        run(sim, task, brands(5), tmp_path / "state", budget=0.01)
    assert "max_cost=" in (caught.value.hint or "")


def test_a_late_cost_past_its_ceiling_stops_the_run_at_once(sim: Simulator, tmp_path: Path) -> None:
    api = Recorder()

    async def task(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        # Each call really costs twice what the task said it could: 0.002 of a 0.001 ceiling.
        return await ctx.call("api", api, row["id"], cost=lambda result: 0.002, max_cost=0.001)  # type: ignore[no-any-return]

    result = run(sim, task, brands(200), tmp_path / "state", budget=0.01, workers=32)
    assert result.summary.status == "budget_reached"
    # Reservations of 0.001 let at most 10 calls at a time go out before any settled; each
    # settles at 0.002, and once the limit is passed no further call is let out: the
    # over-run is at most one in-flight window's worth of misjudged costs.
    assert len(api.starts) <= 10 + 10
    assert result.summary.cost_usd == pytest.approx(0.002 * len(api.starts))
    assert result.summary.cost_usd <= 0.01 + 0.001 * 10 + 1e-12
    assert "passed the budget" in (result.summary.stop_reason or "")


def test_a_cost_function_within_its_ceiling_never_passes_the_budget(
    sim: Simulator, tmp_path: Path
) -> None:
    api = Recorder()

    async def task(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        return await ctx.call("api", api, row["id"], cost=lambda result: 0.0007, max_cost=0.001)  # type: ignore[no-any-return]

    result = run(sim, task, brands(200), tmp_path / "state", budget=0.01, workers=32)
    assert result.summary.status == "budget_reached"
    assert result.summary.cost_usd <= 0.01
    # Holds wait for the calls in flight to settle below their ceiling: the run uses the
    # budget to its end: after 13 calls of 0.0007 (0.0091), a 14th ceiling of 0.001 does
    # not fit in the 0.01.
    assert len(api.starts) == 13


def test_no_cache_asks_every_step_again(sim: Simulator, tmp_path: Path) -> None:
    api = Recorder()

    async def task(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        found = await ctx.call("api", api, row["id"])
        return {"a": await ctx.llm(f"Write about {found['query']}")}

    first = run(sim, task, brands(6), tmp_path / "state", workers=2)
    assert (first.summary.done, chat_answered(sim), len(api.starts)) == (6, 6, 6)
    replayed = run(sim, task, brands(6), tmp_path / "state", workers=2, force=True)
    assert (replayed.summary.done, chat_answered(sim), len(api.starts)) == (6, 6, 6)
    asked = run(sim, task, brands(6), tmp_path / "state", workers=2, force=True, cache=False)
    assert (asked.summary.done, chat_answered(sim), len(api.starts)) == (6, 12, 12)


# -- ctx.map ----------------------------------------------------------------------------


def test_map_never_passes_the_run_workers(sim: Simulator, tmp_path: Path) -> None:
    running = 0
    most = 0

    async def part(n: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.005)
        running -= 1
        return n * n

    async def parent(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        squares = await ctx.map(range(10), part, workers=8)
        return {"sum": sum(squares)}

    result = run(sim, parent, brands(12), tmp_path / "state", workers=4)
    assert result.summary.done == 12
    assert {r.output["sum"] for r in result} == {285}
    assert 1 < most <= 4


def test_sync_map_with_every_worker_a_parent_does_not_deadlock(
    sim: Simulator, tmp_path: Path
) -> None:
    def part(n: int) -> int:
        time.sleep(0.002)
        return n + 1

    def parent(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        return {"parts": ctx.map_sync(range(6), part, workers=3)}

    result = run(sim, parent, brands(10), tmp_path / "state", workers=2, timeout=20)
    assert result.summary.done == 10
    assert all(r.output["parts"] == [1, 2, 3, 4, 5, 6] for r in result)


def test_failed_sub_items_are_named_to_the_parent(sim: Simulator, tmp_path: Path) -> None:
    def read(name: str) -> str:
        if name.endswith(".bad"):
            raise ValueError(f"cannot parse {name}")
        return name.upper()

    async def parent(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        files = ["a.txt", "b.bad", "c.txt"]
        kept = await ctx.map(files, read, return_exceptions=True)
        await ctx.map(files, read)
        return {"kept": [str(k) for k in kept]}

    result = run(sim, parent, brands(1), tmp_path / "state", max_attempts=1)
    [record] = list(result)
    assert record.status == "failed"
    assert record.error is not None
    assert "1 of 3 sub-items failed" in record.error
    assert "'b.bad'" in record.error and "cannot parse b.bad" in record.error


def test_sub_item_error_lists_each_failure() -> None:
    error = SubItemError.of({1: ("x", ValueError("bad x")), 4: ("y", KeyError("k"))}, total=6)
    assert str(error).startswith("2 of 6 sub-items failed: #1 'x': ValueError: bad x; #4 'y'")
    assert set(error.failures) == {1, 4}


# -- ctx.log ----------------------------------------------------------------------------


def test_task_logs_are_jsonl_beside_the_engine_log(sim: Simulator, tmp_path: Path) -> None:
    async def task(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        ctx.log("review", verdict="pass", round=1)
        return {}

    run(sim, task, brands(3), tmp_path / "state")
    [path] = (tmp_path / "state" / "logs").glob("*.review.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(line["key"] for line in lines) == ["b000", "b001", "b002"]
    assert all(line["verdict"] == "pass" and line["kind"] == "review" for line in lines)


def test_a_bad_log_kind_is_refused(sim: Simulator, tmp_path: Path) -> None:
    async def task(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        ctx.log("../escape", x=1)
        return {}

    with pytest.raises(rowpilot.errors.ConfigError, match=r"ctx\.log kind"):
        run(sim, task, brands(1), tmp_path / "state")


def test_ctx_outside_a_run_says_so() -> None:
    ctx = Ctx("run", "k", 0, 1, __import__("logging").getLogger("t"))
    with pytest.raises(RuntimeError, match="inside a rowpilot run"):
        ctx.log("x")


# -- crash and resume -------------------------------------------------------------------

PIPELINE = textwrap.dedent(
    """
    import asyncio
    import random

    REVIEW = {
        "type": "object",
        "properties": {"fine": {"type": "boolean"}, "notes": {"type": "string"}},
        "required": ["fine", "notes"],
    }

    async def pipeline(row, ctx):
        await asyncio.sleep(random.random() * 0.02)
        outline = await ctx.llm(f"Outline {row['name']}")
        draft = await ctx.llm(f"Draft from {outline}")
        review = await ctx.llm(f"Review {draft}", schema=REVIEW)
        rounds = 1
        while not review["fine"] and rounds < 3:
            draft = await ctx.llm(f"Revise {draft} round {rounds}")
            review = await ctx.llm(f"Review {draft}", schema=REVIEW)
            rounds += 1
        return {"draft": draft, "rounds": rounds, "fine": review["fine"]}
    """
)


def journal(state: Path) -> dict[str, str]:
    try:
        with sqlite3.connect(f"file:{state / REGISTRY_FILE}?mode=ro", uri=True) as db:
            return dict(db.execute("SELECT call_key, run_id FROM calls").fetchall())
    except sqlite3.OperationalError:
        return {}


def in_process(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``command`` (the console script and its arguments) run through rowpilot.cli.main in
    this process, with the test key in the environment as the subprocesses get it."""
    before = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = CANARY
    try:
        return invoke_cli(*command[1:], cwd=cwd)
    finally:
        if before is None:
            del os.environ["OPENAI_API_KEY"]
        else:
            os.environ["OPENAI_API_KEY"] = before


@pytest.mark.slow
def test_sigkill_inside_multi_step_tasks_then_resume_repeats_no_step(tmp_path: Path) -> None:
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    rows = brands(150)
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = unmeasured({**os.environ, "OPENAI_API_KEY": CANARY})  # SIGKILLed runs
    config = SimulatorConfig(api_key=CANARY, latency_ms=10, latency_jitter=0.3, seed=5)
    rng = random.Random(11)
    with Simulator(config) as simulator:

        def command(state: Path) -> list[str]:
            return [
                ROWPILOT, "run", "data.jsonl", "--task", "pipeline.py:pipeline", "--key", "id",
                "--model", MODEL, "--base-url", simulator.openai_base_url, "--workers", "6",
                "--state", str(state), "--no-progress",
            ]  # fmt: skip

        # The reference run and the resume are not killed: they run in-process (the same
        # command through the CLI's entry point), only the killed runs need processes.
        reference = in_process(command(tmp_path / "reference"), tmp_path)
        assert reference.returncode == 0, reference.stderr
        state = tmp_path / "state"
        for _ in range(3):
            process = subprocess.Popen(
                command(state), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            target = len(journal(state)) + rng.randint(20, 120)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(journal(state)) < target:
                time.sleep(0.005)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=120)
        wait_until(lambda: simulator.handling == 0, "the requests in flight at the kill")
        before = journal(state)
        answered = chat_answered(simulator)
        resumed = in_process(command(state), tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        after = journal(state)
        asked = chat_answered(simulator) - answered
    # Every journaled step kept its first answer, and every request of the resume is a
    # step that was not journaled before: nothing paid for was asked again.
    assert all(after[key] == run_id for key, run_id in before.items())
    assert asked == len(after) - len(before)
    with sqlite3.connect(tmp_path / "reference" / REGISTRY_FILE) as db:
        expected = dict(db.execute("SELECT key, output FROM items").fetchall())
    with sqlite3.connect(state / REGISTRY_FILE) as db:
        got = dict(db.execute("SELECT key, output FROM items WHERE status = 'done'").fetchall())
    assert got == expected and len(got) == len(rows)


# -- sizing -----------------------------------------------------------------------------


def test_workers_auto_follows_the_tightest_step_resource(sim: Simulator, tmp_path: Path) -> None:
    api = Recorder(seconds=0.2)

    async def task(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        found = await ctx.call("api", api, row["id"])
        return {"q": found["query"]}

    # 10 calls/s, each 0.2 s: Little's law wants about 2-3 items at once, not the 8 the
    # start gives an async task.
    result = run(
        sim, task, brands(80), tmp_path / "state", workers="auto", limits={"api": {"rpm": 600}}
    )
    assert result.summary.done == 80
    [log] = (tmp_path / "state" / "logs").glob("*[0-9a-f].jsonl")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    adjusted = [e for e in events if e.get("event") == "workers.adjusted"]
    assert adjusted, "the sizer never adjusted"
    assert adjusted[-1]["new"] <= 4, adjusted
    assert any("rpm" in e["why"] and "Little's law" in e["why"] for e in adjusted), adjusted


def test_an_items_pace_is_the_rate_over_its_calls_of_the_resource() -> None:
    assert item_pace(3000, 100, 100) == (3000, "3000 rpm / 1.00 calls an item = 3000 items/min")
    pace, why = item_pace(3000, 300, 100) or (0.0, "")  # 3 calls an item: a third
    assert pace == 1000 and "3.00 calls an item" in why
    assert item_pace(None, 300, 100) is None  # no limit: no pace
    assert item_pace(3000, 0, 100) is None  # not called yet: says nothing


def test_workers_auto_counts_the_calls_an_item_makes(sim: Simulator, tmp_path: Path) -> None:
    api = Recorder(seconds=0.05)

    async def task(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        for n in range(3):
            await ctx.call("api", api, f"{row['id']}-{n}")
        return {"ok": True}

    result = run(
        sim, task, brands(60), tmp_path / "state", workers="auto", limits={"api": {"rpm": 3600}}
    )
    assert result.summary.done == 60
    [log] = (tmp_path / "state" / "logs").glob("*[0-9a-f].jsonl")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    paced = [
        float(found[1])
        for e in events
        if e.get("event") == "workers.adjusted"
        and (found := re.search(r"([0-9.]+) calls an item", e["why"]))
    ]
    assert paced, events
    # Counted against the items started, an item's calls read at most the 3 it makes.
    assert all(calls <= 3.0 for calls in paced)
    assert paced[-1] >= 2.0


def test_a_long_path_keeps_its_file_name_in_the_error() -> None:
    path = "/very/long/absolute/path/to/the/data/folder/of/opportunity/OPP-007/email.txt"
    error = SubItemError.of({0: (path, ValueError("bad"))}, total=1)
    assert "OPP-007/email.txt'" in str(error)


def test_the_speed_up_leaves_out_waits_for_rate_limits(sim: Simulator, tmp_path: Path) -> None:
    api = Recorder(seconds=0.05)

    async def task(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        return await ctx.call("api", api, row["id"])  # type: ignore[no-any-return]

    result = run(
        sim, task, brands(40), tmp_path / "state", workers=16, limits={"api": {"rpm": 1200}}
    )
    summary = result.summary
    # 20 calls/s with 16 workers: most of each item's time is its wait for the limit.
    assert summary.waited_seconds > summary.task_seconds / 2
    work = summary.task_seconds - summary.waited_seconds
    assert summary.speedup == pytest.approx(work / summary.elapsed, rel=0.01)
    assert "waiting for rate limits" in summary.lines()[1]


def test_a_plain_python_task_does_not_load_the_provider_sdks(tmp_path: Path) -> None:
    # They take over a second to import: a task that never calls a model must not pay it.
    script = textwrap.dedent(
        f"""
        import sys
        import rowpilot

        def task(row, ctx):
            return {{"doubled": row["n"] * 2}}

        rows = [{{"n": n}} for n in range(3)]
        rowpilot.run(task, rows, state={str(tmp_path / "state")!r}, progress=False)
        print(sorted(name for name in ("openai", "anthropic") if name in sys.modules))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


# -- the CLI cases (issue 10, items 11 and 24) ----------------------------------

WRITER = textwrap.dedent(
    """
    async def write(row, ctx):
        draft = await ctx.llm(f"Draft about {row['name']}")
        return {"draft": draft}

    async def write_then_break(row, ctx):
        draft = await ctx.llm(f"Draft about {row['name']}")
        return {"draft": draft, "label": row["label"]}  # KeyError: the rows have no label
    """
)


def cli_steps(tmp_path: Path, sim: Simulator, task: str, *extra: str) -> Any:
    (tmp_path / "writer.py").write_text(WRITER, encoding="utf-8")
    (tmp_path / "data.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in brands(300)), encoding="utf-8"
    )
    command = [
        "run", "data.jsonl", "--task", f"writer.py:{task}", "--key", "id",
        "--model", MODEL, "--base-url", sim.openai_base_url, "--workers", "4",
        "--state", "state", "--no-progress", *extra,
    ]  # fmt: skip
    # In-process through the CLI's entry point: these cases are about flags and messages,
    # and a process of their own cost an interpreter start and the provider SDKs' import.
    return in_process([ROWPILOT, *command], tmp_path)


def test_force_no_cache_from_the_cli_asks_every_step_again(sim: Simulator, tmp_path: Path) -> None:
    first = cli_steps(tmp_path, sim, "write", "--limit", "10")
    assert first.returncode == 0, first.stderr
    assert chat_answered(sim) == 10
    replayed = cli_steps(tmp_path, sim, "write", "--limit", "10", "--force")
    assert replayed.returncode == 0, replayed.stderr
    assert chat_answered(sim) == 10  # --force alone replays the journaled steps
    asked = cli_steps(tmp_path, sim, "write", "--limit", "10", "--force", "--no-cache")
    assert asked.returncode == 0, asked.stderr
    assert chat_answered(sim) == 20  # --no-cache is not dropped on its way to the steps


def test_a_task_failing_alike_after_a_paid_step_stops_after_the_first_few(
    sim: Simulator, tmp_path: Path
) -> None:
    done = cli_steps(tmp_path, sim, "write_then_break")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "the first 5 items all failed alike (task_error): KeyError: 'label'" in done.stdout
    assert "writer.py line 8, in write_then_break" in done.stdout
    assert chat_answered(sim) < 20  # not 300 paid requests for 300 failures
    # The steps paid for are journaled: the fixed task would not pay for them again.
    assert len(journal(tmp_path / "state")) == chat_answered(sim)


def test_an_llm_step_with_a_schema_asks_with_the_schemas_bound(
    simulator_for: Simulators, tmp_path: Path
) -> None:
    """A minute's bucket of 400 tokens: a step asked with the default 512 could never pass;
    a one-boolean schema's bound (about 40) passes at once, without a 429."""
    sim = simulator_for(SimulatorConfig(api_key=CANARY, latency_ms=5, tpm=400, window_s=60))
    fine = {"type": "object", "properties": {"fine": {"type": "boolean"}}, "required": ["fine"]}

    async def judge(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        return await ctx.llm(f"Is {row['name']} fine?", schema=fine)

    result = run(sim, judge, brands(1), tmp_path / "state")
    assert result.summary.status == "completed"
    assert sim.stats()["rate_limited"] == 0
    assert chat_answered(sim) == 1
