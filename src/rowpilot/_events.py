"""Per-run logs: a JSONL event log and a plain-text log in ``STATE/logs/``.

Events are named ``run.started``, ``run.finished``, ``item.failed``, ``item.retry`` and
``task.log`` (lines the task wrote through ``ctx.logger``). The registry, not this log, is
the record of each item; the log says what happened and when.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, TextIO

from rowpilot._items import encode_output


class EventLog:
    """Writes one run's events; each line is flushed, so a killed run keeps its log."""

    def __init__(self, directory: Path | None, run_id: str) -> None:
        self.run_id = run_id
        self.logger = logging.getLogger(f"rowpilot.run.{run_id}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        self._jsonl: TextIO | None = None
        self.jsonl_path: Path | None = None
        self.text_path: Path | None = None
        if directory is not None:
            self._open(directory)

    def _open(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.jsonl_path = directory / f"{stamp}-{self.run_id}.jsonl"
        self.text_path = directory / f"{stamp}-{self.run_id}.log"
        self._jsonl = self.jsonl_path.open("a", encoding="utf-8")
        handler = logging.FileHandler(self.text_path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.logger.addHandler(handler)

    def emit(
        self, event: str, *, level: int = logging.INFO, message: str = "", **data: Any
    ) -> None:
        record = {"ts": round(time.time(), 6), "event": event, "run_id": self.run_id, **data}
        if self._jsonl is not None:
            self._jsonl.write(encode_output(record) + "\n")
            self._jsonl.flush()
        self.logger.log(level, "%s %s", event, message or json.dumps(data, default=str))

    def task_logger(self) -> logging.Logger:
        """The logger tasks get as ``ctx.logger``: its lines land in the text log."""
        return self.logger.getChild("task")

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)
