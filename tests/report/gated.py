"""A job whose items wait at gates: the first ``OPEN`` rows run at once, the next
``OPEN`` once the test opens the first gate (a file), the rest at the second. A live page
can be read while the run goes, and its counters seen to move when the test lets them
(and the run still going), with no sleep and no timing."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rowpilot

OPEN = 10
ROWS = 30
HOSTILE = "<img src=x onerror=window.pwned=1>"


@dataclass
class GatedRun:
    state: Path
    gates: Path
    result: list[rowpilot.Result] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def open_gate(self, number: int = 1) -> None:
        (self.gates / f"gate{number}").write_text("open", encoding="utf-8")


def gated_task(gates: Path) -> Any:
    async def task(row: dict[str, Any]) -> dict[str, Any]:
        gate = gates / f"gate{int(row['n']) // OPEN}"
        if int(row["n"]) >= OPEN:
            while not gate.exists():  # the test opens the gate
                await asyncio.sleep(0.01)
        if row["id"] == HOSTILE:
            raise ValueError(f"refused {row['id']}")
        return {"out": row["n"]}

    return task


@contextmanager
def gated_run(folder: Path, **settings: Any) -> Iterator[GatedRun]:
    """The run in a thread, for the block; the gate is opened at the end if the test did
    not, so the run always ends."""
    run = GatedRun(folder / "state", folder / "gates")
    run.gates.mkdir()
    rows = [{"id": HOSTILE if n == 1 else f"k{n:03d}", "n": n} for n in range(ROWS)]

    def go() -> None:
        try:
            run.result.append(
                rowpilot.run(
                    gated_task(run.gates), rows, key="id", state=run.state, workers=4, **settings
                )
            )
        except BaseException as exc:
            run.errors.append(exc)

    thread = threading.Thread(target=go, name="gated-run")
    thread.start()
    try:
        yield run
    finally:
        run.open_gate(1)
        run.open_gate(2)
        thread.join()
    if run.errors:
        raise run.errors[0]


class PrintedUrl:
    """The dashboard URL a run printed on stderr, read through pytest's ``capsys``."""

    def __init__(self, capsys: Any) -> None:
        self.capsys = capsys
        self.printed: list[str] = []

    def __call__(self) -> str | None:
        self.printed.append(self.capsys.readouterr().err)
        found = re.search(r"dashboard: (http://\S+)", "".join(self.printed))
        return found.group(1) if found else None
