"""Runs that died: which keys were in flight, and rows that kill the process.

A task can kill its own process: ``os._exit``, a segfault in a C extension, the OOM killer.
Such a row is never recorded, so without this module every resume would die the same way.
Written by hand because it is part of the product's core promise (nothing stuck, nothing
lost), and no library knows the registry's invariants.

* **Before a key runs**, its run appends it to ``inflight/<run>.keys`` with one unbuffered
  write (a SIGKILL cannot lose it: the page cache outlives the process). The file is
  compacted now and then to the keys still in flight, and removed when the run ends in
  any orderly way (completed, stopped, budget, error), so only a run that died leaves one.
* **The next run**, holding the lock (so the dead run is surely dead), reads each such
  file: the keys started and not committed by that run were in flight when it died. Each
  gets one crash (counted as *alone* when it was the only one), and the dead run is closed
  as ``crashed``, in one transaction; the file goes after, and a file whose run is already
  closed is only removed, so a crash is never counted twice.
* **Suspects** (keys with a crash) run first as they come, never beside ordinary items:
  in groups of about the square root of their number while they can afford another
  crash, alone when the next crash would be their last. A key that reaches
  ``max_attempts`` crashes, the last one alone, fails with cause ``process_crash``
  without running again, and the job goes on. So one poison row among many ends the job
  after at most ``max(max_attempts, 2) + 1`` invocations (the first crash is shared, the
  last must be alone), and a row that was merely in flight beside it is never blamed past
  its one shared crash: it runs again and is done.

A SIGKILL from outside looks the same as a crash (nothing can tell them apart), so a
killed run's in-flight keys ("in flight" is admitted and not committed: up to the window,
not only the rows running) also run apart as suspects on resume; they complete and their
crash records are cleared, as are those of suspects that turn out to be done already.
Only a row that is in flight at ``max_attempts`` kills, the last time alone, is failed:
``--retry-failed`` runs it again.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from rowpilot.engine.items import Item
from rowpilot.state._errors import state_error
from rowpilot.state.registry import Outcome, Registry

INFLIGHT_DIR = "inflight"
_COMPACT_BYTES = 1 << 20  # rewrite the file with the keys still in flight past this size
PROCESS_CRASH = "process_crash"


class InFlightLog:
    """One run's keys as they start, written before they run."""

    def __init__(self, state: Path, run: dict[str, Any]) -> None:
        self.directory = state / INFLIGHT_DIR
        self.path = self.directory / f"{run['run_id']}.keys"
        self._header = _line(
            {name: run.get(name) for name in ("run_id", "started_at", "command", "task")}
        )
        self._fd: int | None = None
        self._size = 0

    def open(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
            self._fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            raise state_error(exc, self.path, "write") from exc
        self._write(self._header)

    def started(self, keys: Iterable[str], running: Iterable[str]) -> None:
        """``keys`` are about to run; ``running`` are all keys in flight (for compaction)."""
        self._write(_lines(keys))
        if self._size > _COMPACT_BYTES:
            self._compact(running)

    def clear(self) -> None:
        """Nothing is in flight now (a pass of the run ended: its items committed, or
        parked to wait for a batch): a kill from here on blames no key."""
        self._compact(())

    def close(self) -> None:
        """The run ended in an orderly way: nothing of it can be in flight any more."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _write(self, data: bytes) -> None:
        if self._fd is not None and data:
            try:
                os.write(self._fd, data)
            except OSError as exc:
                raise state_error(exc, self.path, "write") from exc
            self._size += len(data)

    def _compact(self, running: Iterable[str]) -> None:
        # A new file renamed over the old: a crash mid-way leaves one or the other whole.
        data = self._header + _lines(running)
        temp = self.path.with_suffix(".compacting")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        os.write(fd, data)
        os.replace(temp, self.path)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        self._size = len(data)


def _line(value: Any) -> bytes:
    # JSON: a key may hold a newline.
    return (json.dumps(value, ensure_ascii=False) + "\n").encode("utf-8", "surrogatepass")


def _lines(keys: Iterable[str]) -> bytes:
    """Keys as JSON strings, a line each (the C encoder: this is on every item's path)."""
    text = "".join(f"{_quoted(key)}\n" for key in keys)
    return text.encode("utf-8", "surrogatepass")


_quoted = json.encoder.encode_basestring


@dataclass(frozen=True)
class Recovery:
    """What the start of a run found of runs that died."""

    runs: int  # runs that died, closed now as crashed
    keys: int  # keys that were in flight in them

    def notice(self) -> str | None:
        if not self.runs:
            return None
        return (
            f"{self.runs} earlier run(s) ended without closing (killed, or the process "
            f"crashed) with {self.keys:,} item(s) in flight; those run apart from the others "
            "as they come, so a row that kills the process is found and failed "
            f"(cause {PROCESS_CRASH}) instead of stopping every resume"
        )


def recover(registry: Registry, state: Path, this_run: str) -> Recovery:
    """Count a crash against each key the dead runs had in flight; close those runs."""
    runs = keys = 0
    closed = _closed_runs(registry)
    for path in sorted((state / INFLIGHT_DIR).glob("*.keys")):
        header, started = _read(path)
        run_id = str(header.get("run_id") or path.stem)
        if run_id == this_run:
            continue
        if run_id not in closed:
            in_flight = sorted(set(started) - registry.committed_by(run_id, sorted(started)))
            registry.record_crash(_crashed_row(registry, header, run_id, path), in_flight)
            runs += 1
            keys += len(in_flight)
        with contextlib.suppress(OSError):
            path.unlink()
    for leftover in (state / INFLIGHT_DIR).glob("*.compacting"):  # a compaction cut short
        with contextlib.suppress(OSError):
            leftover.unlink()
    _close_stale_runs(registry, this_run)
    return Recovery(runs, keys)


def _read(path: Path) -> tuple[dict[str, Any], list[str]]:
    header: dict[str, Any] = {}
    keys: list[str] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle):
            try:
                value = json.loads(raw)
            except ValueError:  # a line cut short by the crash: that key never ran
                continue
            if number == 0 and isinstance(value, dict):
                header = value
            elif isinstance(value, str):
                keys.append(value)
    return header, keys


def _closed_runs(registry: Registry) -> set[str]:
    if not registry.exists:
        return set()
    return {run["run_id"] for run in registry.runs() if run["status"] != "running"}


def _crashed_row(
    registry: Registry, header: dict[str, Any], run_id: str, path: Path
) -> dict[str, Any]:
    known = {run["run_id"]: run for run in registry.runs()} if registry.exists else {}
    row = dict(known.get(run_id) or header)
    row.update(run_id=run_id, status="crashed", ended_at=path.stat().st_mtime)
    row.setdefault("started_at", path.stat().st_mtime)
    return row


def _close_stale_runs(registry: Registry, this_run: str) -> None:
    """Runs still marked running whose process is gone (we hold the lock) crashed."""
    if not registry.exists:
        return
    for run in registry.runs():
        if run["status"] == "running" and run["run_id"] != this_run:
            registry.update_run({**run, "status": "crashed", "ended_at": run["ended_at"]})


class Verdict(Enum):
    RUN = "run"  # not a suspect
    GROUP = "group"  # a suspect that can afford another crash: a small group of suspects
    ALONE = "alone"  # its next crash would be its last: nothing else in flight
    FAIL = "fail"  # crashed max_attempts times, the last alone: fail without running


@dataclass(frozen=True)
class CrashPolicy:
    """How suspects run, from their crash counts and ``--max-attempts``."""

    max_attempts: int
    counts: dict[str, tuple[int, int]]  # key -> (crashes, crashes alone)

    @property
    def group_size(self) -> int:
        return max(1, math.isqrt(max(1, len(self.counts) - 1)) + 1)

    def verdict(self, key: str) -> Verdict:
        found = self.counts.get(key)
        if found is None:
            return Verdict.RUN
        crashes, alone = found
        if alone and crashes >= self.max_attempts:
            return Verdict.FAIL
        if crashes + 1 >= self.max_attempts:
            return Verdict.ALONE
        return Verdict.GROUP

    def failure(self, key: str) -> str:
        crashes, _ = self.counts[key]
        return (
            f"the process died {crashes} time(s) while this item ran, the last time with "
            "nothing else running (a segfault, os._exit, the OOM killer or a kill signal); "
            "it is not run again"
        )

    def failed_outcome(self, item: Item, run_id: str, version: str | None) -> Outcome:
        """The outcome of a key that crashed the process too often: failed unrun."""
        now = time.time()
        return Outcome(
            key=item.key,
            seq=item.seq,
            fingerprint=item.fingerprint,
            input_json=item.input_json,
            status="failed",
            attempts=self.counts[item.key][0],
            output_json=None,
            error=f"ProcessCrash: {self.failure(item.key)}",
            error_type="ProcessCrash",
            traceback=None,
            started_at=now,
            finished_at=now,
            task_seconds=0.0,
            run_id=run_id,
            cause=PROCESS_CRASH,
            task_version=version,
        )
