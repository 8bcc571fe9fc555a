"""A Python task's ``ctx.llm(..., can_wait=True)`` steps through the Batch API
(``rowpilot.llm.step_batches``), end to end: the engine, the real simulator's batch
endpoints on 127.0.0.1, the official SDKs.

The task searches (``ctx.call``, a local function that counts its calls), then asks two
can-wait steps in turn, the second built from the first's answer, then one online step.
Expected outputs are an online run's over the same rows (the simulator answers a batch
request as it answers the same request online). The run's waits between looks are moves
of the simulator's batch clock (``rowpilot.llm.batch.poll_sleep``): no test sleeps.
"""

from __future__ import annotations

import collections
import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from test_batch import HOUR, KEY, batch_stats, online_calls

import rowpilot
from conftest import BatchClock, Cli, Simulators
from rowpilot import Ctx
from rowpilot.llm.cost import cost_usd, find_price
from rowpilot.simulator.server import Simulator, SimulatorConfig
from rowpilot.state.batches import LEDGER_FILE, BatchLedger
from rowpilot.state.registry import REGISTRY_FILE

MODEL = "openai/gpt-4o-mini"
CLAUDE = "anthropic/claude-haiku-4-5"
SEARCHED: collections.Counter[str] = collections.Counter()
_LOCK = threading.Lock()


class Summary(BaseModel):
    size: int
    title: str


def search(name: str) -> dict[str, Any]:
    with _LOCK:
        SEARCHED[name] += 1
    return {"hits": [f"{name} news", f"{name} review"]}


async def research(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    found = await ctx.call("search", search, row["name"])
    draft = await ctx.llm(f"Write about {row['name']}: {found['hits']}", can_wait=True)
    summary = await ctx.llm(f"Summarise {draft}", schema=Summary, can_wait=True)
    title = await ctx.llm(f"Title for {summary.title}")  # cannot wait: online
    return {"draft": draft, "size": summary.size, "title": title}


def plain(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    return {"title": ctx.llm_sync(f"Title for {row['name']}")}  # nothing waits


def brands(n: int) -> list[dict[str, str]]:
    return [{"id": f"b{i:03d}", "name": f"brand {i}"} for i in range(n)]


@pytest.fixture(autouse=True)
def keyed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    SEARCHED.clear()


@pytest.fixture
def sim(simulator_for: Simulators) -> Simulator:
    return simulator_for(SimulatorConfig(api_key=KEY, completion_delay_s=2 * HOUR))


@pytest.fixture
def clock(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> BatchClock:
    return BatchClock.installed(sim, monkeypatch)


def run(sim: Simulator, task: Any, rows: Any, state: Path, **settings: Any) -> rowpilot.Result:
    defaults: dict[str, Any] = {
        "key": "id",
        "model": MODEL,
        "base_url": sim.openai_base_url,
        "state": state,
        "env_file": None,
        "batch_api": True,
        "batch_poll": 900.0,
        "progress": False,
    }
    defaults.update(settings)
    return rowpilot.run(task, rows, **defaults)


def outputs(result: rowpilot.Result) -> dict[str, dict[str, Any]]:
    return {record.key: dict(record.output) for record in result if record.status == "done"}


def online_reference(sim: Simulator, task: Any, rows: Any, tmp_path: Path) -> dict[str, Any]:
    """The task's outputs asked online, then the simulator as if new."""
    reference = run(sim, task, rows, tmp_path / "online", batch_api=False)
    assert reference.summary.done == len(rows)
    sim.reset()
    SEARCHED.clear()
    return outputs(reference)


def query(state: Path, sql: str, file: str = REGISTRY_FILE) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{state / file}?mode=ro", uri=True) as db:
        return db.execute(sql).fetchall()


def test_can_wait_steps_are_answered_through_batches_and_a_rerun_pays_nothing(
    sim: Simulator, clock: BatchClock, tmp_path: Path
) -> None:
    given = brands(30)
    want = online_reference(sim, research, given, tmp_path)
    state = tmp_path / "state"
    result = run(sim, research, given, state)
    assert result.summary.status == "completed"
    assert outputs(result) == want
    stats = batch_stats(sim)
    # Two can-wait steps in turn: a batch for each, every row in each once.
    assert stats["created"] == 2 and stats["rows_per_batch"] == [30, 30]
    assert online_calls(sim) == 30  # the one step that cannot wait, and nothing else
    assert dict.fromkeys((row["name"] for row in given), 1) == SEARCHED  # replays are free
    assert clock.waits and set(clock.waits) == {900.0}
    # Journaled at the batch price: the batch answers cost half the online ones.
    price = find_price("openai", "gpt-4o-mini", batch=True)
    assert price is not None
    batched = query(state, "SELECT count(*) FROM calls WHERE seconds = 0 AND model = 'gpt-4o-mini'")
    assert batched == [(60,)]
    statuses = query(state, "SELECT status, count(*) FROM batches GROUP BY status", LEDGER_FILE)
    assert statuses == [("collected", 2)]

    again = run(sim, research, given, state, force=True)  # every row again, from the journal
    assert again.summary.done == 30 and again.summary.cost_usd == 0.0
    assert batch_stats(sim)["created"] == 2 and online_calls(sim) == 30
    assert dict.fromkeys((row["name"] for row in given), 1) == SEARCHED
    assert outputs(again) == want


def test_without_batch_api_can_wait_changes_nothing(sim: Simulator, tmp_path: Path) -> None:
    result = run(sim, research, brands(5), tmp_path / "state", batch_api=False)
    assert result.summary.done == 5
    assert batch_stats(sim)["created"] == 0 and online_calls(sim) == 15


def test_items_whose_steps_cannot_wait_go_on_online_beside_parked_ones(
    sim: Simulator, clock: BatchClock, tmp_path: Path
) -> None:
    async def some_wait(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        waits = int(row["id"][1:]) % 2 == 0
        return {"text": await ctx.llm(f"About {row['name']}", can_wait=waits)}

    given = brands(10)
    result = run(sim, some_wait, given, tmp_path / "state")
    assert result.summary.done == 10
    assert batch_stats(sim)["rows_per_batch"] == [5] and online_calls(sim) == 5
    texts = {key: out["text"] for key, out in outputs(result).items()}
    assert all(texts[row["id"]].endswith(f"ABOUT {row['name'].upper()}") for row in given)


def test_map_sub_items_that_wait_share_one_batch(
    sim: Simulator, clock: BatchClock, tmp_path: Path
) -> None:
    def fan_out(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        parts = ctx.map_sync(
            [1, 2, 3], lambda n, c: c.llm_sync(f"part {n} of {row['name']}", can_wait=True)
        )
        return {"parts": " | ".join(parts)}

    result = run(sim, fan_out, brands(4), tmp_path / "state")
    assert result.summary.done == 4
    assert batch_stats(sim)["rows_per_batch"] == [12] and online_calls(sim) == 0
    parts = outputs(result)["b002"]["parts"].split(" | ")
    assert [part.split(": ")[-1] for part in parts] == [f"PART {n} OF BRAND 2" for n in (1, 2, 3)]


def test_a_detached_run_exits_waiting_then_the_same_command_collects(
    sim: Simulator, clock: BatchClock, tmp_path: Path, cli: Cli
) -> None:
    task_file = tmp_path / "task.py"
    task_file.write_text(
        "async def research(row, ctx):\n"
        "    found = await ctx.call('search', lambda name: {'hits': [name]}, row['name'])\n"
        "    text = await ctx.llm(f\"Write about {found['hits']}\", can_wait=True)\n"
        "    return {'text': text}\n",
        encoding="utf-8",
    )
    (tmp_path / "rows.csv").write_text(
        "id,name\n" + "".join(f"b{i},brand {i}\n" for i in range(20)), encoding="utf-8"
    )
    command = (
        "run", "rows.csv", "--task", "task.py:research", "--key", "id", "--model", MODEL,
        "--base-url", sim.openai_base_url, "--batch-api", "--detach", "--state", "state",
    )  # fmt: skip
    first = cli(*command)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("waiting: 0 done"), first.stdout
    assert "20 rows wait in 1 open batch(es)" in first.stdout
    assert batch_stats(sim)["created"] == 1 and not clock.waits

    still = cli(*command)  # the batch is not done: nothing submitted again
    assert still.stdout.startswith("waiting: 0 done"), still.stdout
    assert batch_stats(sim)["created"] == 1

    sim.advance_batches(2 * HOUR)
    last = cli(*command)
    assert last.returncode == 0 and last.stdout.startswith("completed: 20 done"), last.stdout
    assert batch_stats(sim)["created"] == 1 and online_calls(sim) == 0
    done = query(tmp_path / "state", "SELECT key, output FROM items WHERE status = 'done'")
    assert len(done) == 20


def test_a_step_request_carries_its_item_alone_reserved_by_the_key_its_answer_takes(
    sim: Simulator, clock: BatchClock, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    given = brands(5)
    first = run(sim, research, given, state, detach=True)
    assert first.summary.status == "waiting"
    requests = query(state, "SELECT custom_id, item_key, row_key, call_key FROM batch_rows",
                     LEDGER_FILE)  # fmt: skip
    members = query(state, "SELECT custom_id, item_key, row_key FROM batch_members",
                    LEDGER_FILE)  # fmt: skip
    # one row a request, never packed: the step's item, under the request's own row key
    assert sorted(members) == sorted((cid, item, row) for cid, item, row, _ in requests)
    assert sorted(item for _, item, _ in members) == [row["id"] for row in given]
    with contextlib.closing(BatchLedger(state)) as ledger:
        reserved = ledger.reserved([row_key for _, _, row_key, _ in requests])
    assert len(reserved) == 5  # held while the batch is open

    sim.advance_batches(2 * HOUR)
    last = run(sim, research, given, state)
    assert last.summary.done == 5
    answers = set(query(state, "SELECT row_key, call_key FROM answers"))
    # the key each step request was reserved by is the key its answer is journaled under
    assert {(row_key, call_key) for _, _, row_key, call_key in requests} <= answers


def test_a_python_task_with_nothing_that_waits_runs_online_under_batch_api(
    sim: Simulator, tmp_path: Path
) -> None:
    result = run(sim, plain, brands(3), tmp_path / "state")  # accepted, as before refused
    assert result.summary.done == 3
    assert batch_stats(sim)["created"] == 0 and online_calls(sim) == 3
    assert not (tmp_path / "state" / LEDGER_FILE).exists()  # no batch, no ledger


def test_the_budget_reserves_each_batch_at_batch_prices_and_the_rest_waits(
    sim: Simulator, clock: BatchClock, tmp_path: Path
) -> None:
    given = brands(40)
    state = tmp_path / "state"
    dear = {MODEL: {"input": 1000.0, "output": 1000.0}}  # a request's worst case: cents
    first = run(sim, research, given, state, budget=1.0, prices=dear)
    assert first.summary.status == "budget_reached" and first.summary.exit_code == 3
    reserved, submitted = query(
        state, "SELECT sum(worst_usd), sum(rows) FROM batches", LEDGER_FILE
    )[0]
    assert reserved <= 1.0 and 0 < submitted < 40  # whole batches' worst cases fitted
    assert query(state, "SELECT sum(cost_usd) FROM calls")[0][0] <= 1.0
    assert online_calls(sim) == 0

    second = run(sim, research, given, state, budget=1000.0, prices=dear)
    assert second.summary.done == 40
    rows = query(state, "SELECT count(*), count(DISTINCT call_key) FROM batch_rows", LEDGER_FILE)
    assert rows[0][0] == rows[0][1] == 80  # every can-wait request in one batch
    assert batch_stats(sim)["rows"] == 80

    # Without overrides, a batch answer is settled at the model's batch price (half).
    cheap = run(sim, research, brands(5), tmp_path / "cheap")
    price = find_price("openai", "gpt-4o-mini", batch=True)
    assert price is not None and cheap.summary.done == 5
    batched = query(
        tmp_path / "cheap",
        "SELECT cost_usd, input_tokens, output_tokens FROM calls WHERE seconds = 0",
    )
    assert len(batched) == 10
    assert all(cost == pytest.approx(cost_usd(price, i, o)) for cost, i, o in batched)


def test_a_step_no_batch_answers_fails_its_item_after_max_attempts_batches(
    simulator_for: Simulators, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = simulator_for(SimulatorConfig(api_key=KEY, completion_delay_s=HOUR, batch_row_errors=0.5))
    BatchClock.installed(sim, monkeypatch)
    # keep_going: the items answered go on to their next step, so the first outcomes of
    # the pass after the batch are the failures, which the early-stop probe would take
    # for a broken job (docs/batch.md, limits)
    result = run(sim, research, brands(40), tmp_path / "state", max_attempts=1, keep_going=True)
    failed = [record for record in result if record.status == "failed"]
    assert failed and result.summary.done == 40 - len(failed)
    assert all("no batch answered a ctx.llm step" in (r.error or "") for r in failed)
    assert result.summary.causes == {"server": len(failed)}

    online = run(sim, research, brands(40), tmp_path / "online", batch_fallback="online")
    assert online.summary.done == 40  # the steps no batch answered, asked online


def test_a_worker_process_task_parks_and_resumes_through_the_driver(
    sim: Simulator, clock: BatchClock, tmp_path: Path
) -> None:
    task_file = tmp_path / "task.py"
    task_file.write_text(
        "def research(row, ctx):\n"
        "    text = ctx.llm_sync(f\"Write about {row['name']}\", can_wait=True)\n"
        "    return {'text': text}\n",
        encoding="utf-8",
    )
    result = run(sim, f"{task_file}:research", brands(6), tmp_path / "state",
                 executor="process", workers=2)  # fmt: skip
    assert result.summary.done == 6 and "process" in result.summary.executor
    assert batch_stats(sim)["rows_per_batch"] == [6] and online_calls(sim) == 0


def test_anthropic_steps_go_through_message_batches(
    sim: Simulator, clock: BatchClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)

    async def summarise(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        summary = await ctx.llm(f"Summarise {row['name']}", schema=Summary, can_wait=True)
        return {"size": summary.size, "title": summary.title}

    given = brands(8)
    settings = {"model": CLAUDE, "base_url": sim.anthropic_base_url}
    want = outputs(run(sim, summarise, given, tmp_path / "online", batch_api=False, **settings))
    sim.reset()
    result = run(sim, summarise, given, tmp_path / "state", **settings)
    assert outputs(result) == want and len(want) == 8
    assert batch_stats(sim, "anthropic")["rows_per_batch"] == [8] and online_calls(sim) == 0
