"""The scheduler on its own: built by hand from a real registry, a real executor and a
source's items, with no engine around it. Each outcome lands on its own row, a failing
row fails alone, and the executor's stuck-call report stops the run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rowpilot.engine.events import EventLog
from rowpilot.engine.items import Item, Keyer, Selection, selected_items
from rowpilot.engine.progress import Counters, NoProgress
from rowpilot.engine.retry import RetryPolicy
from rowpilot.engine.scheduler import Scheduler
from rowpilot.engine.settings import RunEnd, RunSettings
from rowpilot.executors.local import LocalExecutor
from rowpilot.sources import open_source
from rowpilot.state.registry import Registry
from rowpilot.tasks.base import Task
from rowpilot.tasks.python import PythonTask


def items(rows: list[dict[str, Any]]) -> Iterator[list[Item]]:
    source = open_source(rows)
    return selected_items(source, Keyer(source, "id"), Selection(), chunk_size=7)


def run_scheduler(task: Task, registry: Registry, tmp_path: Path, rows: Any) -> RunEnd:
    """A scheduler built by hand, run to its end, its executor and log closed."""
    run_id = "run-1"
    run_row = {"run_id": run_id, "started_at": time.time(), "status": "running"}
    executor = LocalExecutor(4)
    events = EventLog(tmp_path / "logs", run_id)
    scheduler = Scheduler(
        task=task,
        executor=executor,
        registry=registry,
        run_id=run_id,
        settings=RunSettings(workers=4, retry=RetryPolicy(max_attempts=1)),
        events=events,
        progress=NoProgress(),
        counters=Counters(),
        first_commit=lambda: ({"task_version": task.version}, run_row),
    )
    try:
        return asyncio.run(scheduler.run(rows))
    finally:
        executor.close()
        events.close()


def square(row: dict[str, Any]) -> dict[str, Any]:
    if row["n"] == 13:
        raise ValueError("thirteen")
    return {"square": row["n"] ** 2}


def test_a_hand_built_scheduler_puts_every_outcome_on_its_row(tmp_path: Path) -> None:
    rows = [{"id": f"k{n}", "n": n} for n in range(40)]
    registry = Registry(tmp_path / "state")
    try:
        end = run_scheduler(PythonTask(square), registry, tmp_path, items(rows))
        records = {record.key: record for record in registry.records()}
    finally:
        registry.close()
    assert end is RunEnd.COMPLETED
    assert len(records) == 40
    for n in range(40):
        record = records[f"k{n}"]
        if n == 13:
            assert (record.status, record.error_type) == ("failed", "ValueError")
        else:
            assert (record.status, record.output) == ("done", {"square": n * n})


def test_a_hand_built_scheduler_runs_at_most_its_workers_at_once(tmp_path: Path) -> None:
    """Every chunk is read and every row done, never more than 4 running at once."""
    read: list[int] = []
    running = 0
    most = 0

    async def counted(row: dict[str, Any]) -> dict[str, Any]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0)
        running -= 1
        return {"n": row["n"]}

    def tracked() -> Iterator[list[Item]]:
        for chunk in items([{"id": f"k{n}", "n": n} for n in range(50)]):
            read.append(len(chunk))
            yield chunk

    registry = Registry(tmp_path / "state")
    try:
        run_scheduler(PythonTask(counted), registry, tmp_path, tracked())
        done = registry.counts()["done"]
    finally:
        registry.close()
    assert done == 50 and read == [7] * 7 + [1]
    assert most <= 4
