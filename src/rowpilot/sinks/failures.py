"""The failures report: one JSON line per failed item (key, row, cause, error, attempts)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rowpilot.sinks.atomic import check_writable
from rowpilot.sinks.exports import write_failures

if TYPE_CHECKING:
    from rowpilot.state.registry import Registry


class FailuresSink:
    """``--failures``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)

    def check(self) -> None:
        check_writable(self.path, what="failures report")

    def write(self, registry: Registry) -> str:
        count = write_failures(self.path, lambda: registry.records(status="failed"))
        return f"failures: {self.path} ({count:,} items)"
