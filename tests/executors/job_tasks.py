"""Tasks for whole jobs run on each executor, loaded by path as a user's task file is.

Rows carry the paths a task needs (a release file to wait for, a log to append to), so
processes and Ray actors synchronise with the test through files."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rowpilot import Ctx
from rowpilot.tasks.base import Task
from rowpilot.tasks.values import RunStop


class NoColumn(Exception):
    """The task's own error, defined in the task file."""


def double(row: dict[str, Any]) -> dict[str, Any]:
    return {"double": int(row["n"]) * 2, "pid": os.getpid()}


def odd_rows_fail(row: dict[str, Any]) -> dict[str, Any]:
    if int(row["n"]) % 2:
        raise NoColumn(f"row {row['n']} has no column")
    return {"ok": True}


def stuck_on_three(row: dict[str, Any]) -> dict[str, Any]:
    if int(row["n"]) == 3:
        while not Path(row["release"]).exists():  # the task's own wait, for the test's file
            time.sleep(0.01)
    return {"ok": True}


def stops_unless_told(row: dict[str, Any]) -> dict[str, Any]:
    if int(row["n"]) == 5 and not Path(row["go"]).exists():
        raise RunStop("interrupted", "told to stop at row 5")
    return {"ok": True}


def paid(record: str, key: str) -> dict[str, Any]:
    with open(record, "a") as out:  # one line per call that really ran
        out.write(f"{key} {os.getpid()}\n")
    return {"paid": True}


def pays_a_cent(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    answer = ctx.call_sync("paid", paid, row["record"], row["id"], cost=0.01)
    return {"paid": answer["paid"]}


class Verdict(BaseModel):
    fine: bool
    notes: str


def search(query: str) -> dict[str, Any]:
    return {"query": query, "hits": len(query)}


async def llm_and_call(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    draft = await ctx.llm(f"Write about {row['name']}")
    verdict = await ctx.llm(f"Review this: {draft}", schema=Verdict)
    found = await ctx.call("search", search, row["name"])
    if ctx.attempt == 1 and int(row["n"]) % 2 == 0:
        raise ConnectionError("dropped after three paid steps")  # retried: steps replay
    ctx.log("review", fine=verdict.fine)
    return {"draft": draft, "fine": verdict.fine, "hits": found["hits"], "pid": os.getpid()}


def sync_llm(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    answer = ctx.llm_sync(f"Write about {row['name']}")
    found = ctx.call_sync("search", search, row["name"])
    halves = ctx.map_sync([row["name"], row["name"].upper()], str.lower, workers=2)
    return {"answer": answer, "hits": found["hits"], "halves": halves}


class Lengths(Task):
    """Grouped rows, as the local model's tasks are."""

    name = "lengths"
    version = "1"
    groups_rows = True
    rows_per_worker = 4
    portable = True

    def call(self, row: dict[str, Any], ctx: Any) -> Any:
        return {"length": len(row["name"])}

    def batch_call(self, rows: list[dict[str, Any]]) -> list[Any]:
        where = f"{os.getpid()}:{threading.current_thread().name}"
        return [{"length": len(row["name"]), "where": where} for row in rows]


def web_search(url: str, query: str) -> dict[str, Any]:
    body = json.dumps({"query": query, "max_results": 3}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    # A 429 or 5xx raises HTTPError with its status: the driver's retry policy takes it.
    with urllib.request.urlopen(request, timeout=30) as response:
        return {"hits": len(json.loads(response.read())["results"])}


async def llm_then_search(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    await ctx.llm(f"Write about {row['name']}")
    found = await ctx.call("search", web_search, row["search_url"], row["name"])
    return {"hits": found["hits"], "pid": os.getpid()}


async def async_llm(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    return {"answer": await ctx.llm(f"Write about {row['name']}")}


def kills_its_worker_on_seven(row: dict[str, Any]) -> dict[str, Any]:
    if int(row["n"]) == 7:
        os.kill(os.getpid(), signal.SIGKILL)  # a segfault, the OOM killer: the worker is gone
    return {"ok": True}
