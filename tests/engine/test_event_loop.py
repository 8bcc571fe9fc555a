"""The engine never holds its event loop for long: source reads and commits come in
bounded slices, with the loop free to run timers and outcomes between them.

Measured in work, not in seconds (a loaded machine stretches any callback): a ticker
coroutine counts the loop's turns, and no turn may read more than one chunk of rows
or commit more than one window of outcomes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rowpilot._config import build_config
from rowpilot.engine.job import PreparedJob, execute, prepare
from rowpilot.engine.progress import Counters, NoProgress

ROWS = 5000
WORKERS = 16
CHUNK_ROWS = 1024  # rowpilot.engine.items.selected_items reads the source this many rows at a time


class LoopTurns:
    """Counts the event loop's turns while the run goes on."""

    def __init__(self) -> None:
        self.turn = 0
        self.rows_read: Counter[int] = Counter()  # turn -> rows read in it
        self.commits: Counter[int] = Counter()  # turn -> outcomes committed in it
        self.counters: Counters | None = None

    async def tick(self) -> None:
        done = 0
        while True:
            await asyncio.sleep(0)
            self.turn += 1
            if self.counters is not None:
                finished = self.counters.done + self.counters.failed
                self.commits[self.turn] += finished - done
                done = finished

    def rows(self) -> Iterator[dict[str, Any]]:
        for i in range(ROWS):
            self.rows_read[self.turn] += 1
            yield {"id": f"k{i}", "text": "some text " * (i % 7)}


class WatchedProgress(NoProgress):
    def __init__(self, turns: LoopTurns) -> None:
        self.turns = turns

    def start(self, counters: Counters) -> None:
        self.turns.counters = counters


async def echo(row: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"length": len(row["text"])}


async def _run_counting_turns(job: PreparedJob, turns: LoopTurns) -> int:
    ticker = asyncio.create_task(turns.tick())
    try:
        result = await execute(job, WatchedProgress(turns))
    finally:
        ticker.cancel()
    return result.summary.done


def test_a_run_reads_and_commits_in_slices_between_loop_turns(tmp_path: Path) -> None:
    turns = LoopTurns()
    settings = {
        "task": echo,
        "source": turns.rows(),
        "key": "id",
        "workers": WORKERS,
        "state": tmp_path / "state",
    }
    job = prepare(build_config(settings))
    done = asyncio.run(_run_counting_turns(job, turns))
    assert done == ROWS
    assert sum(turns.rows_read.values()) == ROWS
    assert max(turns.rows_read.values()) <= CHUNK_ROWS + 1  # +1: the row read ahead
    assert len(turns.rows_read) >= ROWS // CHUNK_ROWS  # reads spread over many turns
    window = 2 * WORKERS
    assert max(turns.commits.values()) <= window
