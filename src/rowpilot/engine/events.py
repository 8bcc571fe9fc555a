"""Per-run logs: a JSONL event log and a plain-text log in ``STATE/logs/``.

Events are named ``run.started``, ``run.finished``, ``item.failed``, ``item.retry`` and
``task.log`` (lines the task wrote through ``ctx.logger``). The registry, not this log, is
the record of each item; the log says what happened and when.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any, TextIO

from rowpilot.engine.items import encode_output
from rowpilot.errors import StateError

NOTICES = logging.getLogger("rowpilot")
"""Warnings for the user (a folder's skipped symlinks, a crashed run found): the CLI prints
them as ``rowpilot: warning: ...``; a library caller sees them through logging."""


def warn(message: str) -> None:
    NOTICES.warning(message)


class _QuietFileHandler(logging.FileHandler):
    """A text log that, once the disk is full, stops instead of printing a traceback for
    every line (logging's default)."""

    _broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self._broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self._broken = True
        stream, self.stream = self.stream, None
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()  # its flush fails again; the file is closed all the same


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
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.jsonl_path = directory / f"{stamp}-{self.run_id}.jsonl"
        self.text_path = directory / f"{stamp}-{self.run_id}.log"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._jsonl = self.jsonl_path.open("a", encoding="utf-8")
            handler = _QuietFileHandler(self.text_path, encoding="utf-8")
        except OSError as exc:
            raise StateError(
                f"cannot write the run's log in {directory}: {exc.strerror or exc}",
                hint="check that the state folder is writable and the disk has room",
            ) from exc
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.logger.addHandler(handler)

    def emit(
        self, event: str, *, level: int = logging.INFO, message: str = "", **data: Any
    ) -> None:
        record = {"ts": round(time.time(), 6), "event": event, "run_id": self.run_id, **data}
        if self._jsonl is not None:
            try:
                self._jsonl.write(encode_output(record) + "\n")
                self._jsonl.flush()
            except OSError as exc:
                # A full disk: the log is lost, not the run (its registry write fails next,
                # with an error that says so).
                self._jsonl = None
                warn(f"the event log {self.jsonl_path} cannot be written any more: {exc}")
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
