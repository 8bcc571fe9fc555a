"""One JSON file per done item, in a folder, rewritten only where the item changed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rowpilot.sinks.atomic import check_writable
from rowpilot.sinks.exports import write_json_dir

if TYPE_CHECKING:
    from rowpilot.state.registry import Registry


class JsonFolderSink:
    """``--json-dir``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.name = f"{folder}/"

    def check(self) -> None:
        check_writable(self.folder, what="JSON folder", folder=True)

    def write(self, registry: Registry) -> str:
        report = write_json_dir(self.folder, lambda: registry.records(status="done"))
        return f"JSON files: {self.folder}/ ({report.total:,} keys, {report.written:,} written now)"
