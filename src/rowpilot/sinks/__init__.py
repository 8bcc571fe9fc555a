"""Sinks: the outputs a job writes from the registry after a run (a table file: CSV, JSONL,
Parquet or Excel; a folder of JSON files, the failures report, a LanceDB vector table, a
Google Sheets worksheet).

Each implements :class:`Sink`: ``check()`` before the first item, ``write(registry)`` at
the end; a :class:`LiveSink` (the Sheets write-back) also writes while the run goes.
``sinks_for(config)`` builds a job's list; ``register_sink`` adds a kind of ``--output``
by suffix or URL scheme. One module per kind: ``table`` (its writers in ``exports``,
Excel's in ``excel``, the spreadsheet cell rules in ``cells``), ``json_folder``,
``failures``, ``lancedb``, ``gsheet``.
"""

from rowpilot.sinks.base import LiveSink, Sink, SinkFactory, SinkOptions
from rowpilot.sinks.failures import FailuresSink
from rowpilot.sinks.json_folder import JsonFolderSink
from rowpilot.sinks.lancedb import LanceDBSink
from rowpilot.sinks.registry import (
    SinkKind,
    open_sink,
    register_sink,
    sink_options,
    sinks_for,
    unregister_sink,
)
from rowpilot.sinks.table import TableSink

__all__ = [
    "FailuresSink",
    "JsonFolderSink",
    "LanceDBSink",
    "LiveSink",
    "Sink",
    "SinkFactory",
    "SinkKind",
    "SinkOptions",
    "TableSink",
    "open_sink",
    "register_sink",
    "sink_options",
    "sinks_for",
    "unregister_sink",
]
