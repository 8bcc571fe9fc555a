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
from rowpilot._items import decode_output
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
    cause: str | None = None  # failed items: rate_limit, auth, timeout, ..., task_error
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0  # provider calls made for this item (a batch call counts for each row)


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One completed provider call, journaled before its answer is used."""

    call_key: str
    provider: str
    model: str
    run_id: str
    rows: int
    response: str
    finish_reason: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    seconds: float


@dataclass(frozen=True, slots=True)
class RowAnswer:
    """One row's validated answer taken from a call, found again by the row's request hash."""

    row_key: str
    call_key: str
    output: str
    cost_usd: float
    input_tokens: int
    output_tokens: int


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


def _add_call_journal(db: sqlite3.Connection) -> None:
    for statement in _CALL_JOURNAL.split(";"):
        if statement.strip():
            db.execute(statement)


_CALL_JOURNAL = """
        ALTER TABLE items ADD COLUMN cause TEXT;
        ALTER TABLE items ADD COLUMN cost_usd REAL NOT NULL DEFAULT 0;
        ALTER TABLE items ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE items ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE items ADD COLUMN calls INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE calls (
            call_key TEXT PRIMARY KEY,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            run_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            rows INTEGER NOT NULL,
            response TEXT NOT NULL,
            finish_reason TEXT,
            input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            cost_usd REAL NOT NULL,
            seconds REAL
        );
        CREATE TABLE answers (
            row_key TEXT PRIMARY KEY,
            call_key TEXT NOT NULL,
            output TEXT NOT NULL,
            cost_usd REAL NOT NULL,
            input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL
        )
        """


# Append-only: never edit or reorder a released migration; add a new one at the end.
MIGRATIONS: tuple[tuple[str, Callable[[sqlite3.Connection], None]], ...] = (
    ("0001_create_tables", _create_tables),
    ("0002_call_journal", _add_call_journal),
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
            db.executemany(_INSERT_ITEM, [_outcome_row(o) for o in outcomes])

    def journal(self, call: CallRecord, answers: Sequence[RowAnswer] = ()) -> None:
        """Record a completed call (and the row answers read from it) in one transaction.

        Called before the answer is used, so a crash after a paid call never pays again.
        """
        db = self._connection(create=True)
        assert db is not None
        with atomic(db):
            db.execute(
                "INSERT OR REPLACE INTO calls VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    call.call_key,
                    call.provider,
                    call.model,
                    call.run_id,
                    time.time(),
                    call.rows,
                    call.response,
                    call.finish_reason,
                    call.input_tokens,
                    call.output_tokens,
                    call.cost_usd,
                    call.seconds,
                ),
            )
            db.executemany(
                "INSERT OR REPLACE INTO answers VALUES (?,?,?,?,?,?)",
                [
                    (a.row_key, a.call_key, a.output, a.cost_usd, a.input_tokens, a.output_tokens)
                    for a in answers
                ],
            )

    def cached_call(self, call_key: str) -> CallRecord | None:
        db = self._connection(create=False)
        if db is None:
            return None
        row = db.execute(
            "SELECT call_key, provider, model, run_id, rows, response, finish_reason,"
            " input_tokens, output_tokens, cost_usd, seconds FROM calls WHERE call_key = ?",
            (call_key,),
        ).fetchone()
        return CallRecord(*row) if row is not None else None

    def cached_answers(self, row_keys: Sequence[str]) -> dict[str, RowAnswer]:
        db = self._connection(create=False)
        if db is None:
            return {}
        found: dict[str, RowAnswer] = {}
        for start in range(0, len(row_keys), _LOOKUP_CHUNK):
            chunk = row_keys[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT * FROM answers WHERE row_key IN ({marks})"
            for row in db.execute(query, chunk):
                found[row[0]] = RowAnswer(*row)
        return found

    def spending(self) -> dict[str, float]:
        """What the job's provider calls cost: calls, tokens and USD, over every run."""
        db = self._connection(create=False)
        if db is None:
            return {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
        calls, tokens_in, tokens_out, cost = db.execute(
            "SELECT count(*), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),"
            " coalesce(sum(cost_usd), 0) FROM calls"
        ).fetchone()
        return {
            "calls": calls,
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "cost_usd": cost,
        }

    def call_profile(self) -> dict[str, float]:
        """Averages over the journaled calls and paid items, for estimates."""
        db = self._connection(create=False)
        if db is None:
            return {"calls": 0}
        calls, seconds, tokens_in, tokens_out, rows = db.execute(
            "SELECT count(*), avg(seconds), avg(input_tokens), avg(output_tokens), avg(rows)"
            " FROM calls"
        ).fetchone()
        items, cost = db.execute(
            "SELECT count(*), avg(cost_usd) FROM items WHERE status = 'done' AND calls > 0"
        ).fetchone()
        return {
            "calls": calls,
            "seconds": seconds or 0.0,
            "input_tokens": tokens_in or 0.0,
            "output_tokens": tokens_out or 0.0,
            "rows": rows or 1.0,
            "paid_items": items,
            "cost_per_item": cost or 0.0,
        }

    def forget_failures(self, run_id: str, cause: str) -> int:
        """Delete this run's failures of one cause: they go back to pending (an aborted run)."""
        db = self._connection(create=False)
        if db is None:
            return 0
        with atomic(db):
            cursor = db.execute(
                "DELETE FROM items WHERE run_id = ? AND status = 'failed' AND cause = ?",
                (run_id, cause),
            )
        return cursor.rowcount

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
            " finished_at, cause, cost_usd FROM items"
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
            " finished_at, cause, cost_usd, traceback FROM items WHERE status = 'failed'"
            " ORDER BY seq, key"
        )
        for row in self.db().execute(query):
            yield _record(row[:12]), row[12]


def _record(row: tuple[Any, ...]) -> ExportRecord:
    key, seq, status, input_json, output_json, error, error_type, attempts, fp, finished = row[:10]
    cause, cost = row[10:12]
    return ExportRecord(
        key=key,
        seq=seq,
        status=status,
        input=json.loads(input_json),
        output=decode_output(output_json) if output_json is not None else None,
        error=error,
        error_type=error_type,
        attempts=attempts,
        fingerprint=fp,
        finished_at=finished,
        cause=cause,
        cost_usd=cost,
    )


_ITEM_COLUMNS = (
    "key, seq, fingerprint, status, attempts, input, output, error, error_type, traceback,"
    " started_at, finished_at, task_seconds, run_id, cause, cost_usd, input_tokens,"
    " output_tokens, calls"
)
_INSERT_ITEM = f"INSERT OR REPLACE INTO items ({_ITEM_COLUMNS}) VALUES ({','.join('?' * 19)})"


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
        o.cause,
        o.cost_usd,
        o.input_tokens,
        o.output_tokens,
        o.calls,
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
