"""rowpilot: run a task over every row of a dataset, in parallel, durably, resumably."""

from rowpilot import errors
from rowpilot._api import compare, dedupe, embed, label, run
from rowpilot._result import Result, Summary
from rowpilot.sinks.exports import ExportRecord as ItemRecord
from rowpilot.tasks.ctx import Ctx

__all__ = [
    "Ctx",
    "ItemRecord",
    "Result",
    "Summary",
    "compare",
    "dedupe",
    "embed",
    "errors",
    "label",
    "run",
]

__version__ = "0.1.0"
