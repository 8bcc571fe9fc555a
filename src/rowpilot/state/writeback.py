"""The write-back's own SQLite (``sinks/gsheet.py``): the ledger of what each worksheet
acknowledged, in ``writeback.sqlite`` beside the registry, and the read-only view of the
registry's done items the writer thread polls.

The ledger is a file of its own, not a registry table: the writer thread commits to it
while the scheduler commits to the registry, and two writers on one file would wait on
each other's locks. Losing it costs nothing but work: a write-back without a ledger finds
every cell it would write already in place, and only records it.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rowpilot.engine.items import decode_output
from rowpilot.errors import StateError
from rowpilot.state.registry import REGISTRY_FILE
from rowpilot.state.vector_files import VectorFiles

LEDGER_FILE = "writeback.sqlite"


class Ledger:
    """What each write-back got acknowledged, per worksheet (``sheet``: ID#sheetId)."""

    def __init__(self, state: Path, sheet: str) -> None:
        self.sheet = sheet
        self.path = state / LEDGER_FILE
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS written (sheet TEXT, key TEXT, digest TEXT,"
                " cells TEXT, PRIMARY KEY (sheet, key))"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS columns"
                " (sheet TEXT, name TEXT, PRIMARY KEY (sheet, name))"
            )
        except sqlite3.Error as error:
            raise StateError(
                f"{self.path} cannot be written: {error}",
                hint="free disk space or make the state folder writable, then run again",
            ) from None

    def written(self, keys: Sequence[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        found: dict[str, tuple[str, dict[str, Any]]] = {}
        for start in range(0, len(keys), 500):
            part = list(keys[start : start + 500])
            query = (
                "SELECT key, digest, cells FROM written WHERE sheet = ? AND key IN"
                f" ({','.join('?' * len(part))})"
            )
            for key, digest, cells in self._db.execute(query, [self.sheet, *part]):
                found[key] = (digest, json.loads(cells))
        return found

    def record(
        self, entries: Sequence[tuple[str, str, dict[str, Any]]], columns: Sequence[str]
    ) -> None:
        """Entries (key, digest, cells) and the columns written, in one transaction."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO written VALUES (?, ?, ?, ?)",
                [(self.sheet, key, digest, json.dumps(cells)) for key, digest, cells in entries],
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO columns VALUES (?, ?)", [(self.sheet, c) for c in columns]
            )

    def close(self) -> None:
        self._db.close()


def owned_columns(state: Path, sheet: str) -> list[str]:
    """The columns earlier write-backs to ``sheet`` wrote (read-only; [] if none)."""
    path = state / LEDGER_FILE
    if not path.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT name FROM columns WHERE sheet = ?", (sheet,)).fetchall()
    except sqlite3.Error:
        return []
    return [str(row[0]) for row in rows]


_COLUMNS = "rowid, key, output, vectors, task_version, run_id, vector_at, vector_len"


class DoneItems:
    """Done items of the registry, read on the writer's own read-only connection."""

    def __init__(self, state: Path) -> None:
        self.path = state / REGISTRY_FILE
        self._db: sqlite3.Connection | None = None
        self._vector_files = VectorFiles(state)
        self.seen = 0  # the highest rowid read (a re-committed item gets a new one)

    def since(self, versions: frozenset[str]) -> dict[str, dict[str, Any]]:
        """Items done, of these task versions, committed since the last call."""
        query = f"SELECT {_COLUMNS} FROM items WHERE rowid > ? AND status = 'done' ORDER BY rowid"
        return self._read(query, versions, track=True)

    def every(self, versions: frozenset[str]) -> dict[str, dict[str, Any]]:
        query = (
            f"SELECT {_COLUMNS} FROM items WHERE rowid > ? AND status = 'done' ORDER BY seq, key"
        )
        return self._read(query, versions, track=False)

    def _read(
        self, query: str, versions: frozenset[str], *, track: bool
    ) -> dict[str, dict[str, Any]]:
        db = self._connect()
        if db is None:
            return {}
        found: dict[str, dict[str, Any]] = {}
        for row in db.execute(query, (self.seen if track else 0,)):
            rowid, key, output, vectors, version, run_id, vector_at, vector_len = row
            if track:
                self.seen = max(self.seen, rowid)
            if version in versions and output is not None:
                if vector_at is not None:
                    vectors = self._vector_files.read(run_id, vector_at, vector_len)
                found[key] = decode_output(output, vectors)
        return found

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is None and self.path.exists():
            self._db = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, check_same_thread=False
            )
        return self._db

    def close(self) -> None:
        self._vector_files.close()
        if self._db is not None:
            self._db.close()
