"""The registry's schema: its tables, and the migrations that bring an older registry up
to date (append-only: a registry written by any release opens in any later one), with the
connection settings every registry connection shares."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rowpilot.engine.items import fingerprint
from rowpilot.errors import StateError


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


def _add_versions_and_crashes(db: sqlite3.Connection) -> None:
    # Each item remembers the task version that produced it, so exports and status can
    # tell current outputs from stale ones; crashes counts the process deaths a key was
    # in flight for (see Registry.record_crash).
    db.execute("ALTER TABLE items ADD COLUMN task_version TEXT")
    db.execute(
        """
        CREATE TABLE crashes (
            key TEXT PRIMARY KEY,
            in_flight INTEGER NOT NULL,
            alone INTEGER NOT NULL,
            last_run TEXT NOT NULL
        )
        """
    )
    _backfill_versions(db)


def _backfill_versions(db: sqlite3.Connection) -> None:
    """Older items: the version whose fingerprint matches theirs (None if none does)."""
    versions = {v for (v,) in db.execute("SELECT DISTINCT task_version FROM runs") if v}
    versions |= {v for (v,) in db.execute("SELECT value FROM meta WHERE name = 'task_version'")}
    last = 0
    while versions:
        rows = db.execute(
            "SELECT rowid, fingerprint, input FROM items WHERE rowid > ? ORDER BY rowid LIMIT 5000",
            (last,),
        ).fetchall()
        if not rows:
            return
        last = rows[-1][0]
        found = [(_version_of(fp, text, versions), rowid) for rowid, fp, text in rows]
        db.executemany("UPDATE items SET task_version = ? WHERE rowid = ?", found)


def _version_of(item_fingerprint: str, input_json: str, versions: Iterable[str]) -> str | None:
    return next((v for v in versions if fingerprint(v, input_json) == item_fingerprint), None)


def _add_vector_files(db: sqlite3.Connection) -> None:
    # Where a row's raw vectors are in its run's vector file (state.vector_files); rows
    # written before keep theirs in ``vectors``: nothing is rewritten.
    db.execute("ALTER TABLE items ADD COLUMN vector_at INTEGER")
    db.execute("ALTER TABLE items ADD COLUMN vector_len INTEGER")


def _add_vector_blobs(db: sqlite3.Connection) -> None:
    # Raw little-endian float32 beside the output JSON, which names each vector's place
    # (items.encode_output_parts); older rows keep base64 in the JSON: nothing is rewritten.
    db.execute("ALTER TABLE items ADD COLUMN vectors BLOB")


# Append-only: never edit or reorder a released migration; add a new one at the end.
MIGRATIONS: tuple[tuple[str, Callable[[sqlite3.Connection], None]], ...] = (
    ("0001_create_tables", _create_tables),
    ("0002_call_journal", _add_call_journal),
    ("0003_versions_and_crashes", _add_versions_and_crashes),
    ("0004_vector_blobs", _add_vector_blobs),
    ("0005_vector_files", _add_vector_files),
)


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    configure(db)
    return db


def configure(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit survives a killed process (not a power cut) without an
    # fsync per transaction, which is what lets small batches commit cheaply.
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=10000")


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


def pending_migrations(db: sqlite3.Connection) -> list[str]:
    applied = {row[0] for row in db.execute("SELECT name FROM migrations")}
    return [name for name, _ in MIGRATIONS if name not in applied]
