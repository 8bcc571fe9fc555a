"""The engine never blocks its event loop for long: CSV chunks and batch commits are short.

asyncio's debug mode logs every callback that holds the loop longer than
``slow_callback_duration``; a run must log none.
"""

from __future__ import annotations

import asyncio
import csv
import gc
import logging
from pathlib import Path
from typing import Any

import pytest

from rowpilot._config import build_config
from rowpilot._engine import PreparedJob, execute, prepare
from rowpilot._progress import NoProgress

SLOW_CALLBACK_SECONDS = 0.1


async def echo(row: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"length": len(row["text"])}


async def _run_with_loop_watch(job: PreparedJob) -> int:
    asyncio.get_running_loop().slow_callback_duration = SLOW_CALLBACK_SECONDS
    result = await execute(job, NoProgress())
    return result.summary.done


def test_a_run_never_holds_the_event_loop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = tmp_path / "data.csv"
    with source.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "text"])
        writer.writerows((f"k{i}", "some text " * (i % 7)) for i in range(5000))
    settings = {
        "task": echo,
        "source": str(source),
        "key": "id",
        "workers": 16,
        "state": tmp_path / "state",
    }
    # A full garbage collection of a heap that other tests filled (the LLM SDKs bring
    # ~170,000 objects) can take 60 ms, not rowpilot's doing: keep it out of the watch.
    gc.collect()
    gc.disable()
    try:
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            # The validation pass runs before the loop starts, as rowpilot.run does it.
            job = prepare(build_config(settings))
            done = asyncio.run(_run_with_loop_watch(job), debug=True)
    finally:
        gc.enable()
    assert done == 5000
    slow = [r.getMessage() for r in caplog.records if "took" in r.getMessage()]
    assert slow == []
