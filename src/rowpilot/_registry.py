"""The registry: the durable record of every item, in one SQLite file (WAL mode).

Only the scheduler writes, a batch of item outcomes per transaction. An item's output is
committed in the same transaction as its status. Exports are derived from here.

The file is created on the first commit, not before, so a run that fails on bad input or
does no work leaves no state behind.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rowpilot._exports import ExportRecord
from rowpilot.errors import StateError

REGISTRY_FILE = "registry.sqlite"
_LOOKUP_CHUNK = 500


@dataclass(slots=True)
class Outcome:
    """What one item's processing came to, ready to be committed."""

    key: str
    seq: int
    fingerprint: str
    input_json: str
    status: str  # "done" or "failed"
    attempts: int
    output_json: str | None
    error: str | None
    error_type: str | None
    traceback: str | None
    started_at: float
    finished_at: float
    task_seconds: float
    run_id: str


@dataclass(frozen=True, slots=True)
class PriorState:
    """What the registry knows of an item before this run touches it."""

    fingerprint: str
    status: str
    finished_at: float


def _create_tables(db: sqlite3.Connection) -> None:
    # One statement at a time: executescript() would commit the migration's transaction.
    for statement in _CREATE_TABLES.split(";"):
        if statement.strip():
            db.execute(statement)


_CREATE_TABLES = """
        CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            started_at REAL NOT NULL,
            ended_at REAL,
            status TEXT NOT NULL,
            command TEXT,
            pid INTEGER,
            task TEXT,
            task_version TEXT,
            settings TEXT,
            summary TEXT
        );
        CREATE TABLE items (
            key TEXT PRIMARY KEY,
            seq INTEGER NOT NULL,
            fingerprint TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
            attempts INTEGER NOT NULL,
            input TEXT NOT NULL,
            output TEXT,
            error TEXT,
            error_type TEXT,
            traceback TEXT,
            started_at REAL,
            finished_at REAL NOT NULL,
            task_seconds REAL NOT NULL,
            run_id TEXT NOT NULL
        );
        CREATE INDEX items_by_seq ON items (seq);
        """


# Append-only: never edit or reorder a released migration; add a new one at the end.
MIGRATIONS: tuple[tuple[str, Callable[[sqlite3.Connection], None]], ...] = (
    ("0001_create_tables", _create_tables),
)


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit survives a killed process (not a power cut) without an
    # fsync per transaction, which is what lets small batches commit cheaply.
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=10000")
    return db


@contextmanager
def atomic(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction. A failed rollback never hides the original exception."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def migrate(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL)")
    applied = {row[0] for row in db.execute("SELECT name FROM migrations")}
    known = {name for name, _ in MIGRATIONS}
    if applied - known:
        raise StateError(
            f"the registry was written by a newer rowpilot (migrations {sorted(applied - known)})",
            hint="upgrade rowpilot (pip install -U rowpilot)",
        )
    for name, step in MIGRATIONS:
        if name not in applied:
            with atomic(db):
                step(db)
                db.execute("INSERT INTO migrations VALUES (?, ?)", (name, time.time()))


class Registry:
    """The registry of one state directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / REGISTRY_FILE
        self._db: sqlite3.Connection | None = None

    @property
    def exists(self) -> bool:
        return self._db is not None or self.path.exists()

    def _connection(self, *, create: bool) -> sqlite3.Connection | None:
        if self._db is None and (create or self.path.exists()):
            if create:
                self.directory.mkdir(parents=True, exist_ok=True)
            try:
                db = connect(self.path)
                migrate(db)
                self._db = db
            except sqlite3.DatabaseError as exc:
                raise StateError(
                    f"{self.path} is not a readable rowpilot registry: {exc}",
                    hint="point --state at another directory",
                ) from exc
        return self._db

    def db(self) -> sqlite3.Connection:
        """The connection to an existing registry (StateError if there is none)."""
        db = self._connection(create=False)
        if db is None:
            raise StateError(f"no registry in {self.directory}", hint="run a job there first")
        return db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def lookup(self, keys: Sequence[str]) -> dict[str, PriorState]:
        db = self._connection(create=False)
        if db is None:
            return {}
        found: dict[str, PriorState] = {}
        for start in range(0, len(keys), _LOOKUP_CHUNK):
            chunk = keys[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            query = (
                f"SELECT key, fingerprint, status, finished_at FROM items WHERE key IN ({marks})"
            )
            for key, fp, status, finished in db.execute(query, chunk):
                found[key] = PriorState(fp, status, finished)
        return found

    def commit(
        self,
        outcomes: Sequence[Outcome],
        *,
        meta: dict[str, str] | None = None,
        run: dict[str, Any] | None = None,
    ) -> None:
        """Commit outcomes (and optionally metadata and a run row) in one transaction."""
        db = self._connection(create=True)
        assert db is not None
        with atomic(db):
            if meta:
                db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
            if run:
                _upsert_run(db, run)
            db.executemany(
                "INSERT OR REPLACE INTO items VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [_outcome_row(o) for o in outcomes],
            )

    def update_run(self, run: dict[str, Any]) -> None:
        db = self._connection(create=False)
        if db is not None:
            with atomic(db):
                _upsert_run(db, run)

    def meta(self) -> dict[str, str]:
        return dict(self.db().execute("SELECT name, value FROM meta").fetchall())

    def input_columns(self) -> list[str]:
        columns: list[str] = json.loads(self.meta().get("input_columns", "[]"))
        return columns

    def counts(self) -> dict[str, int]:
        rows = self.db().execute("SELECT status, count(*) FROM items GROUP BY status").fetchall()
        counts = {"done": 0, "failed": 0}
        counts.update(dict(rows))
        return counts

    def runs(self) -> list[dict[str, Any]]:
        cursor = self.db().execute("SELECT * FROM runs ORDER BY started_at")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]

    def records(self, *, status: str | None = None) -> Iterator[ExportRecord]:
        """Every item as an export record, in source order."""
        query = (
            "SELECT key, seq, status, input, output, error, error_type, attempts, fingerprint,"
            " finished_at FROM items"
        )
        params: tuple[str, ...] = ()
        if status is not None:
            query += " WHERE status = ?"
            params = (status,)
        for row in self.db().execute(query + " ORDER BY seq, key", params):
            yield _record(row)

    def failures(self) -> Iterator[tuple[ExportRecord, str | None]]:
        """Failed items with their tracebacks."""
        query = (
            "SELECT key, seq, status, input, output, error, error_type, attempts, fingerprint,"
            " finished_at, traceback FROM items WHERE status = 'failed' ORDER BY seq, key"
        )
        for row in self.db().execute(query):
            yield _record(row[:10]), row[10]


def _record(row: tuple[Any, ...]) -> ExportRecord:
    key, seq, status, input_json, output_json, error, error_type, attempts, fp, finished = row
    return ExportRecord(
        key=key,
        seq=seq,
        status=status,
        input=json.loads(input_json),
        output=json.loads(output_json) if output_json is not None else None,
        error=error,
        error_type=error_type,
        attempts=attempts,
        fingerprint=fp,
        finished_at=finished,
    )


def _outcome_row(o: Outcome) -> tuple[Any, ...]:
    return (
        o.key,
        o.seq,
        o.fingerprint,
        o.status,
        o.attempts,
        o.input_json,
        o.output_json,
        o.error,
        o.error_type,
        o.traceback,
        o.started_at,
        o.finished_at,
        o.task_seconds,
        o.run_id,
    )


_RUN_COLUMNS = (
    "run_id",
    "started_at",
    "ended_at",
    "status",
    "command",
    "pid",
    "task",
    "task_version",
    "settings",
    "summary",
)


def _upsert_run(db: sqlite3.Connection, run: dict[str, Any]) -> None:
    values = [run.get(name) for name in _RUN_COLUMNS]
    marks = ",".join("?" * len(_RUN_COLUMNS))
    db.execute(f"INSERT OR REPLACE INTO runs ({','.join(_RUN_COLUMNS)}) VALUES ({marks})", values)
