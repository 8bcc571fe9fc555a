"""Tasks the benchmarks run: they do nothing, so only the engine's own cost is measured."""

from __future__ import annotations

from typing import Any


async def noop(row: dict[str, Any]) -> dict[str, Any]:
    return {}


def noop_sync(row: dict[str, Any]) -> dict[str, Any]:
    return {}


def spin(row: dict[str, Any]) -> dict[str, Any]:
    """CPU-bound: ``row["loops"]`` turns of a pure-Python loop (the benchmark calibrates the
    count to about 10 ms once, so every executor does the same work per row)."""
    total = 0
    for i in range(int(row["loops"])):
        total += i * i % 7
    return {"total": total}


def where(row: dict[str, Any]) -> dict[str, Any]:
    """Which rowpilot and which process ran the row: checks a worker loads the right code."""
    import os

    import rowpilot

    return {"rowpilot": rowpilot.__file__, "pid": os.getpid()}


async def ask(row: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """One ``ctx.llm`` per row, on the job's model: a Python task's steps served by the
    driver whatever the executor."""
    answer = await ctx.llm(f"Classify: {row['text']}", max_tokens=64)
    return {"answer": answer}


async def _nothing(step: str) -> int:
    return len(step)


async def calls(row: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """``row["calls"]`` ``ctx.call("noop", ...)`` steps, each a permit, a journal lookup
    and a journaled result on the driver, and nothing else. Each call's arguments are its
    own (the row's key and the step's number): identical calls would be answered from the
    journal of an earlier row without a permit."""
    total = 0
    for i in range(int(row["calls"])):
        total += await ctx.call("noop", _nothing, f"{row['id']}/{i}")
    return {"total": total}
