"""Tasks the benchmarks run: they do nothing, so only the engine's own cost is measured."""

from __future__ import annotations

from typing import Any


async def noop(row: dict[str, Any]) -> dict[str, Any]:
    return {}


def noop_sync(row: dict[str, Any]) -> dict[str, Any]:
    return {}
