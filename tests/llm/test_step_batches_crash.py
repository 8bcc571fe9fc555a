"""A Python task's can-wait steps killed between a batch's create and its record: a real
``rowpilot run --batch-api`` process is SIGKILLed there, and the run resumed in this
process finds the batch again (by its metadata), submits nothing twice and finishes with
every step once: each search once, each can-wait request in one batch, no online call.

The kill lands on a state the test waits for (the simulator's batch counters), never
after a guessed delay; the resume's waits are moves of the simulator's batch clock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_batch import HOUR, KEY, MODEL, batch_stats, events, online_calls
from test_batch_crash import STARTED, kill, ledger, sim, wait_for

import rowpilot
from conftest import start_cli
from rowpilot.llm import batch
from rowpilot.simulator.server import Simulator

__all__ = ["sim"]  # the fixture, shared with test_batch_crash

ROWS, PER_BATCH = 30, 10
TASK = """
from pathlib import Path

def search(name):
    with open(Path(__file__).parent / "searched.txt", "a") as out:
        out.write(name + "\\n")
    return {"hits": [name + " news"]}

async def research(row, ctx):
    found = await ctx.call("search", search, row["name"])
    draft = await ctx.llm(f"Write about {found['hits']}", can_wait=True)
    title = await ctx.llm(f"Title for {draft}", can_wait=True)
    return {"draft": draft, "title": title}
"""


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(batch.MAX_REQUESTS_ENV, str(PER_BATCH))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    (tmp_path / "task.py").write_text(TASK, encoding="utf-8")
    (tmp_path / "rows.csv").write_text(
        "id,name\n" + "".join(f"b{i:02d},brand {i}\n" for i in range(ROWS)), encoding="utf-8"
    )
    return tmp_path


def research_run(sim: Simulator, folder: Path, state: str, **settings: Any) -> rowpilot.Result:
    return rowpilot.run(
        str(folder / "task.py") + ":research", folder / "rows.csv", key="id", model=MODEL,
        base_url=sim.openai_base_url, state=folder / state, env_file=None, progress=False,
        batch_poll=HOUR / 4, **settings,
    )  # fmt: skip


def test_killed_between_a_create_and_its_record_every_step_runs_once(
    sim: Simulator, folder: Path
) -> None:
    reference = research_run(sim, folder, "online")  # the outputs, asked online
    want = {record.key: dict(record.output) for record in reference}
    sim.reset()
    (folder / "searched.txt").unlink()

    sim.hold_batches("create", after=1)  # the second batch is made, its id never heard
    STARTED.append(process := start_cli(
        "run", "rows.csv", "--task", "task.py:research", "--key", "id", "--model", MODEL,
        "--base-url", sim.openai_base_url, "--batch-api", "--batch-poll", "0.05",
        "--state", "state", "--no-progress", cwd=folder, to_kill=True,
    ))  # fmt: skip
    wait_for(process, lambda: batch_stats(sim)["created"] == 2, "the second create")
    kill(process)
    sim.release_batches()
    unrecorded = ledger(folder / "state", "SELECT intent FROM batches WHERE batch_id IS NULL")
    assert len(unrecorded) == 1

    result = research_run(sim, folder, "state", batch_api=True)
    assert {record.key: dict(record.output) for record in result} == want
    assert result.summary.done == ROWS
    stats = batch_stats(sim)
    # Two can-wait steps of 30 rows at 10 a batch: 6 batches, each request in one.
    assert stats["created"] == 2 * ROWS // PER_BATCH, stats["rows_per_batch"]
    assert stats["rows"] == 2 * ROWS
    assert online_calls(sim) == 0
    searched = (folder / "searched.txt").read_text(encoding="utf-8").splitlines()
    assert sorted(searched) == sorted(f"brand {i}" for i in range(ROWS))  # each once
    # Parked items were not in flight when the run was killed waiting: none is a suspect.
    (recovered,) = events(folder / "state", "run.recovered")
    assert recovered["runs"] == 1 and recovered["keys"] == 0
    found = ledger(
        folder / "state", f"SELECT batch_id FROM batches WHERE intent = '{unrecorded[0][0]}'"
    )
    assert found[0][0] is not None  # found again by its metadata
