"""Tasks for the executor conformance suite, loaded by path (``load_task``) so that worker
processes and Ray actors get this file's code as the driver has it.

Synchronisation crosses processes through files: a task that must wait waits for a file
the test creates, and a task that must say it ran (or was cancelled) writes one."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from rowpilot.tasks.base import Task
from rowpilot.tasks.values import RunStop


def upper(row: dict[str, Any]) -> dict[str, Any]:
    return {"upper": row["text"].upper(), "pid": os.getpid()}


async def async_upper(row: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"upper": row["text"].upper()}


class NoColumn(Exception):
    """A task's own exception class, defined in the task file."""


def broken(row: dict[str, Any]) -> dict[str, Any]:
    raise NoColumn(f"no column for {row['text']}")


class Unpicklable(Exception):
    def __init__(self, a: int, b: int) -> None:  # pickle cannot rebuild it from args
        super().__init__(f"{a}+{b}")


def raises_unpicklable(row: dict[str, Any]) -> dict[str, Any]:
    raise Unpicklable(1, 2)


def returns_a_lock(row: dict[str, Any]) -> Any:
    return {"lock": threading.Lock()}


def stops(row: dict[str, Any]) -> dict[str, Any]:
    raise RunStop("interrupted", f"stop at {row['text']}")


def _wait_for(path: str) -> None:
    # The task's own polling of a file the test creates: cross-process, event-driven enough.
    while not Path(path).exists():
        time.sleep(0.01)


def stuck_until(row: dict[str, Any]) -> dict[str, Any]:
    Path(row["started"]).touch()
    _wait_for(row["release"])
    return {}


async def waits_forever(row: dict[str, Any]) -> dict[str, Any]:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        Path(row["cancelled"]).touch()
        raise
    return {}


async def own_timeout(row: dict[str, Any]) -> dict[str, Any]:
    raise TimeoutError("the task's own")


class Grouped(Task):
    name = "grouped"
    version = "1"
    groups_rows = True
    rows_per_worker = 3
    portable = True

    def __init__(self, short_by: int = 0) -> None:
        self.short_by = short_by

    def call(self, row: dict[str, Any], ctx: Any) -> Any:
        return {"n": len(row["text"])}

    def batch_call(self, rows: list[dict[str, Any]]) -> list[Any]:
        where = f"{os.getpid()}:{threading.current_thread().name}"
        return [{"n": len(row["text"]), "where": where} for row in rows[self.short_by :]]


def holds_the_gil(row: dict[str, Any]) -> dict[str, Any]:
    Path(row["started"]).touch()
    # Catastrophic backtracking: the regex engine runs in C and never lets the GIL go.
    re.match(r"(a+)+$", "a" * 64 + "b")
    return {}
