"""The registry: the durable record of every item, in one SQLite file (WAL mode).

Only the scheduler writes (for grouped tasks, on engine.grouped.CommitThread), a batch
of outcomes per transaction, an item's output with its status: the JSON in ``output``,
its vectors raw (little-endian float32) in the run's vector file beside the registry
(``state.vector_files``, migration 0005: ``vector_at``, ``vector_len``). Rows of older
registries keep them in ``vectors`` (migration 0004) or as base64 in the JSON, read back
alike. Exports are derived from here.

The file is created on the first commit, not before, so a run that fails on bad input or
does no work leaves no state behind.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple, ParamSpec, TypeVar

from rowpilot.engine.items import decode_output
from rowpilot.errors import StateError
from rowpilot.sinks.exports import ExportRecord
from rowpilot.state._errors import state_error
from rowpilot.state.schema import atomic, configure, migrate, pending_migrations
from rowpilot.state.vector_files import VectorFiles

REGISTRY_FILE = "registry.sqlite"
VALIDATED_META = "validated_source"  # the file the last complete run's validation read
_LOOKUP_CHUNK = 500


class Outcome(NamedTuple):
    """What one item's processing came to, ready to be committed: a tuple that is the
    registry's row as it stands (``_ITEM_COLUMNS`` names its fields in order), so a group
    of them is built from zipped columns and written with no tuple made a row."""

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
    task_version: str | None = None  # the task version that produced it
    vectors: bytes | None = None  # the output's vectors, raw float32 (encode_output_parts)


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


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _mapped(doing: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Registry methods raise StateError (one line, exit 2), never a raw sqlite3 error."""

    def decorate(method: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(method)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return method(*args, **kwargs)
            except (sqlite3.Error, OSError) as exc:
                registry = args[0]
                assert isinstance(registry, Registry)
                raise state_error(exc, registry.path, doing) from exc

        return wrapper

    return decorate


class Registry:
    """The registry of one state directory.

    The file only ever exists whole: a new registry is built (every migration applied) in
    a temporary file that is renamed into place, so an existing ``registry.sqlite`` that
    is empty or lacks rowpilot's tables is someone else's file and is refused, never
    mistaken for a new job (which would redo, and pay for, every done row). On a
    read-only filesystem it is opened immutable, for reading only.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / REGISTRY_FILE
        self._db: sqlite3.Connection | None = None
        self._current: frozenset[str] | None = None
        self.vector_files = VectorFiles(directory)

    @property
    def exists(self) -> bool:
        return self._db is not None or self.path.exists()

    def _connection(self, *, create: bool) -> sqlite3.Connection | None:
        if self._db is None:
            if not self.path.exists():
                if not create:
                    return None
                self._create()
            self._db = self._open_existing()
        return self._db

    def _create(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise state_error(exc, self.directory, "create the state folder") from exc
        temp = self.directory / f".{REGISTRY_FILE}.{os.getpid()}.new"
        try:
            temp.unlink(missing_ok=True)
            db = sqlite3.connect(temp, isolation_level=None)
            try:
                migrate(db)
            finally:
                db.close()
            os.replace(temp, self.path)
        except (sqlite3.Error, OSError) as exc:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            raise state_error(exc, self.path, "create the registry") from exc

    def _open_existing(self) -> sqlite3.Connection:
        try:
            if self.path.stat().st_size == 0:
                raise self._not_a_registry("it is empty")
            if read_only_folder(self.directory):
                return self._open_immutable()
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                self._check_tables(db)
                configure(db)
                migrate(db)
            except BaseException:
                db.close()
                raise
            return db
        except (sqlite3.DatabaseError, OSError) as exc:
            raise state_error(exc, self.path, "open the registry") from exc

    def _open_immutable(self) -> sqlite3.Connection:
        """A registry on a read-only filesystem: SQLite cannot make its WAL index there."""
        wal = self.path.with_name(REGISTRY_FILE + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise StateError(
                f"{self.path} is on a read-only filesystem and has writes not yet folded in "
                f"({wal.name})",
                hint="copy the state folder somewhere writable and point at the copy",
            )
        db = sqlite3.connect(
            f"file:{self.path}?immutable=1",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
        self._check_tables(db)
        if pending_migrations(db):
            db.close()
            raise StateError(
                f"{self.path} was written by an older rowpilot and is on a read-only filesystem",
                hint="open it once where it can be written (rowpilot status there), or copy "
                "the state folder somewhere writable",
            )
        return db

    def _check_tables(self, db: sqlite3.Connection) -> None:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        if "migrations" not in tables:
            raise self._not_a_registry("it has no rowpilot tables")

    def _not_a_registry(self, why: str) -> StateError:
        return StateError(
            f"{self.path} is not a rowpilot registry: {why}",
            hint="point --state at the job's own folder; if this file is a leftover, move "
            "it away and run again (only a missing registry starts a new job)",
        )

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
        self._current = None
        self.vector_files.close()

    @_mapped("read the registry")
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

    @_mapped("write the registry")
    def commit(
        self,
        outcomes: Sequence[Outcome],
        *,
        meta: dict[str, str] | None = None,
        run: dict[str, Any] | None = None,
        cleared: Sequence[str] = (),
    ) -> None:
        """Commit outcomes (and optionally metadata and a run row) in one transaction;
        ``cleared`` keys lose their crash record (they ended, one way or the other)."""
        db = self._connection(create=True)
        assert db is not None
        with atomic(db):
            if meta:
                db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
            if run:
                _upsert_run(db, run)
            if outcomes:
                _insert_items(db, outcomes, self._vector_places(outcomes))
            if cleared:
                db.executemany("DELETE FROM crashes WHERE key = ?", [(k,) for k in cleared])
        if run or meta:
            self._current = None

    def _vector_places(self, outcomes: Sequence[Outcome]) -> list[tuple[int, int] | None]:
        """Each outcome's vectors written to its run's vector file (before the transaction
        that names them commits); where they went, None for an outcome without."""
        blobs = list(map(_VECTORS, outcomes))
        if not any(blobs):
            return [None] * len(outcomes)
        run_ids = set(map(_RUN_ID, outcomes))
        if len(run_ids) == 1:  # always, for a run's own outcomes
            return self.vector_files.append(run_ids.pop(), blobs)
        return [self.vector_files.append(o.run_id, [o.vectors])[0] for o in outcomes]

    @_mapped("write the registry")
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

    @_mapped("read the registry")
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

    @_mapped("read the registry")
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

    @_mapped("read the registry")
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

    @_mapped("read the registry")
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

    @_mapped("read the registry")
    def call_figures(self) -> list[tuple[str, str, float | None, int, int, float]]:
        query = "SELECT provider, model, seconds, input_tokens, output_tokens, cost_usd FROM calls"
        return [tuple(row) for row in self.db().execute(query)]

    @_mapped("merge a registry")
    def merge_from(self, shard: Path) -> tuple[int, int]:
        """Fold the shard registry at ``shard`` into this one, in one transaction: a key in
        both keeps its done, newest outcome. Returns (keys in both, the shard's items)."""
        db = self.db()
        db.execute("ATTACH DATABASE ? AS shard", (str(shard),))
        try:
            return _merge_shard(db)
        finally:
            db.execute("DETACH DATABASE shard")

    @_mapped("read the registry")
    def vector_ends(self) -> dict[str, int]:
        """Each run whose vector file rows point into, and the end of the last bytes named."""
        query = (
            "SELECT run_id, max(vector_at + vector_len) FROM items"
            " WHERE vector_at IS NOT NULL GROUP BY run_id"
        )
        return {run_id: int(end) for run_id, end in self.db().execute(query)}

    @_mapped("read the registry")
    def prune_vector_files(self, current_run: str) -> list[str]:
        """Remove the vector files no row points into any more (the caller holds the
        state's lock); their names. The current run's rows are its own: its file is kept
        unread, and each older file costs a lookup that stops at its first row."""
        query = "SELECT 1 FROM items WHERE run_id = ? AND vector_at IS NOT NULL LIMIT 1"
        older = self.vector_files.runs() - {current_run}
        named = {run for run in older if self.db().execute(query, (run,)).fetchone()}
        return self.vector_files.remove_all_but({*named, current_run})

    @_mapped("read the registry")
    def has_items(self) -> bool:
        """Whether any item was ever recorded (no count: that would read every row)."""
        db = self._connection(create=False)
        return db is not None and db.execute("SELECT 1 FROM items LIMIT 1").fetchone() is not None

    def item_count(self) -> int:
        return int(self.db().execute("SELECT count(*) FROM items").fetchone()[0])

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the file (a file moved or copied is then whole)."""
        self.db().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def copy_to(self, path: Path) -> None:
        """A consistent copy of the registry at ``path``, its WAL contents included."""
        copy = sqlite3.connect(path)
        try:
            self.db().backup(copy)
        finally:
            copy.close()

    def step_profile(self) -> tuple[int, float | None, int, float | None, list[Any]]:
        """For a Python task's estimate: paid items and their mean cost, done items and
        their mean task time, and the journal's calls per (provider, model, plain)."""
        db = self.db()
        paid, cost = db.execute(
            "SELECT count(*), avg(cost_usd) FROM items WHERE status = 'done' AND calls > 0"
        ).fetchone()
        done, task_seconds = db.execute(
            "SELECT count(*), avg(task_seconds) FROM items WHERE status = 'done'"
        ).fetchone()
        journal = db.execute(
            "SELECT provider, model, finish_reason = 'ok' AND input_tokens = 0, count(*),"
            " sum(coalesce(seconds, 0)), sum(input_tokens) FROM calls GROUP BY 1, 2, 3"
        ).fetchall()
        return paid, cost, done, task_seconds, journal

    @_mapped("write the registry")
    def update_run(self, run: dict[str, Any], *, meta: dict[str, str] | None = None) -> None:
        db = self._connection(create=False)
        if db is not None:
            with atomic(db):
                _upsert_run(db, run)
                db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", (meta or {}).items())
            self._current = None

    # -- crashes --------------------------------------------------------------------------

    @_mapped("read the registry")
    def crash_counts(self) -> dict[str, tuple[int, int]]:
        """Keys in flight when the process died before: ``(crashes, crashes alone)``."""
        db = self._connection(create=False)
        if db is None:
            return {}
        rows = db.execute("SELECT key, in_flight, alone FROM crashes").fetchall()
        return {key: (in_flight, alone) for key, in_flight, alone in rows}

    @_mapped("write the registry")
    def record_crash(self, run: dict[str, Any], keys: Sequence[str]) -> None:
        """A run that died (SIGKILL, a segfault, os._exit) with ``keys`` in flight: each
        gets one crash, counted as alone when it was the only one; the run is closed as
        crashed, in the same transaction, so a crash is never counted twice."""
        db = self._connection(create=True)
        assert db is not None
        alone = 1 if len(keys) == 1 else 0
        with atomic(db):
            _upsert_run(db, run)
            db.executemany(
                "INSERT INTO crashes VALUES (?, 1, ?, ?) ON CONFLICT (key) DO UPDATE SET"
                " in_flight = in_flight + 1, alone = alone + excluded.alone,"
                " last_run = excluded.last_run",
                [(key, alone, run["run_id"]) for key in keys],
            )
        self._current = None

    @_mapped("read the registry")
    def committed_by(self, run_id: str, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` have an outcome committed by run ``run_id``."""
        db = self._connection(create=False)
        if db is None:
            return set()
        found: set[str] = set()
        for start in range(0, len(keys), _LOOKUP_CHUNK):
            chunk = keys[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT key FROM items WHERE run_id = ? AND key IN ({marks})"
            found.update(key for (key,) in self.db().execute(query, [run_id, *chunk]))
        return found

    # -- reading --------------------------------------------------------------------------

    @_mapped("read the registry")
    def meta(self) -> dict[str, str]:
        return dict(self.db().execute("SELECT name, value FROM meta").fetchall())

    def input_columns(self) -> list[str]:
        columns: list[str] = json.loads(self.meta().get("input_columns", "[]"))
        return columns

    @_mapped("read the registry")
    def current_versions(self) -> frozenset[str]:
        """The task versions whose outputs are current: the version of each shard's latest
        run (one version, unless shards run with different code were merged here).

        A run that changes the task makes every item of an older version stale at once,
        also those outside its --limit: they are pending until redone."""
        if self._current is None:
            latest: dict[Any, str] = {}
            query = "SELECT task_version, settings FROM runs ORDER BY started_at"
            for version, settings in self.db().execute(query):
                shard = json.loads(settings).get("shard") if settings else None
                if version:
                    latest[shard] = version
            if not latest:  # no run row: the version the meta names, if any
                meta = self.meta().get("task_version")
                latest = {None: meta} if meta else {}
            self._current = frozenset(latest.values())
        return self._current

    def _version_filter(self, include_stale: bool) -> tuple[str, list[str]]:
        versions = sorted(self.current_versions())
        if include_stale or not versions:
            return "1", []
        return f"task_version IN ({','.join('?' * len(versions))})", versions

    @_mapped("read the registry")
    def counts(self) -> dict[str, int]:
        """Current items by status, and ``stale``: items done or failed by another version."""
        current, params = self._version_filter(include_stale=False)
        query = f"SELECT ({current}) AS fresh, status, count(*) FROM items GROUP BY fresh, status"
        counts = {"done": 0, "failed": 0, "stale": 0}
        for fresh, status, count in self.db().execute(query, params):
            counts["stale" if not fresh else status] += count
        return counts

    @_mapped("read the registry")
    def runs(self) -> list[dict[str, Any]]:
        cursor = self.db().execute("SELECT * FROM runs ORDER BY started_at")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]

    def records(
        self, *, status: str | None = None, include_stale: bool = False
    ) -> Iterator[ExportRecord]:
        """Every current item as an export record, in source order (``include_stale``:
        also the items an older task version produced)."""
        where, params = self._version_filter(include_stale)
        if status is not None:
            where += " AND status = ?"
            params = [*params, status]
        query = f"SELECT {_RECORD_COLUMNS} FROM items WHERE {where} ORDER BY seq, key"
        yield from self._rows(query, params, lambda row: _record(row, self.vector_files))

    def failures(self, *, include_stale: bool = False) -> Iterator[tuple[ExportRecord, str | None]]:
        """Failed items with their tracebacks."""
        where, params = self._version_filter(include_stale)
        query = (
            f"SELECT {_RECORD_COLUMNS}, traceback FROM items WHERE {where} AND"
            " status = 'failed' ORDER BY seq, key"
        )
        files = self.vector_files
        yield from self._rows(query, params, lambda row: (_record(row[:-1], files), row[-1]))

    def _rows(
        self, query: str, params: Sequence[Any], make: Callable[[tuple[Any, ...]], _R]
    ) -> Iterator[_R]:
        try:
            for row in self.db().execute(query, params):
                yield make(row)
        except sqlite3.Error as exc:
            raise state_error(exc, self.path, "read the registry") from exc


def peek_meta(directory: Path, name: str) -> str | None:
    """One meta value, read without opening the registry for a run (no migration, no
    write: the state is not locked yet); None if it cannot be read."""
    path = directory / REGISTRY_FILE
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row is not None else None


def read_only_folder(directory: Path) -> bool:
    """Whether the folder cannot be written (a read-only mount, or no permission)."""
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY) or not os.access(
            directory, os.W_OK
        )
    except OSError:
        return False


_RECORD_COLUMNS = (
    "key, seq, status, input, output, error, error_type, attempts, fingerprint, finished_at,"
    " cause, cost_usd, task_version, vectors, run_id, vector_at, vector_len"
)


def _record(row: tuple[Any, ...], files: VectorFiles) -> ExportRecord:
    """An export record from the ``_RECORD_COLUMNS`` of a row (the version is left out)."""
    key, seq, status, input_json, output_json, error, error_type, attempts, fp, finished = row[:10]
    cause, cost, _, vectors, run_id, vector_at, vector_len = row[10:17]
    if vector_at is not None:
        vectors = files.read(run_id, vector_at, vector_len)
    return ExportRecord(
        key=key,
        seq=seq,
        status=status,
        input=json.loads(input_json),
        output=decode_output(output_json, vectors) if output_json is not None else None,
        error=error,
        error_type=error_type,
        attempts=attempts,
        fingerprint=fp,
        finished_at=finished,
        cause=cause,
        cost_usd=cost,
    )


_ITEM_COLUMNS = (
    "key, seq, fingerprint, input, status, attempts, output, error, error_type, traceback,"
    " started_at, finished_at, task_seconds, run_id, cause, cost_usd, input_tokens,"
    " output_tokens, calls, task_version, vector_at, vector_len"
)  # Outcome's fields in order but its vectors, then where its vectors were written
_INSERT_ITEM = f"INSERT OR REPLACE INTO items ({_ITEM_COLUMNS}) VALUES ({','.join('?' * 22)})"
# A large batch goes in statements of 32 rows: one SQLite step (and one GIL hand-back on
# the commit thread) for 32 rows instead of one a row; 704 values, far under the limit.
_ROWS_A_STATEMENT = 32
_INSERT_ITEMS = _INSERT_ITEM + f",({','.join('?' * 22)})" * (_ROWS_A_STATEMENT - 1)
# A batch of plain done rows (a grouped task's: one attempt, no error, nothing paid) binds
# only what varies, 12 values a row instead of 22: binding holds the GIL the model needs.
_PLAIN_FIXED = itemgetter(4, 5, 7, 8, 9, 14, 15, 16, 17, 18)
_PLAIN_VALUES = ("done", 1, None, None, None, None, 0.0, 0, 0, 0)
_PLAIN_VARYING = itemgetter(0, 1, 2, 3, 6, 10, 11, 12, 13, 19)
_PLAIN_COLUMNS = (
    "key, seq, fingerprint, input, output, started_at, finished_at, task_seconds, run_id,"
    " task_version, vector_at, vector_len, status, attempts, cost_usd, input_tokens,"
    " output_tokens, calls"
)
_PLAIN_ROW = f"({','.join('?' * 12)},'done',1,0.0,0,0,0)"
_INSERT_PLAIN = f"INSERT OR REPLACE INTO items ({_PLAIN_COLUMNS}) VALUES {_PLAIN_ROW}"
_INSERT_PLAINS = _INSERT_PLAIN + f",{_PLAIN_ROW}" * (_ROWS_A_STATEMENT - 1)
_VECTORS, _RUN_ID = itemgetter(20), itemgetter(13)
_NO_PLACE = (None, None)


def _insert_items(
    db: sqlite3.Connection, outcomes: Sequence[Outcome], places: list[tuple[int, int] | None]
) -> None:
    """The outcomes' rows, their vectors' places in the vector file in place of the bytes."""
    ends = [_NO_PLACE if place is None else place for place in places]
    rows: list[tuple[Any, ...]]
    if all(map(_PLAIN_VALUES.__eq__, map(_PLAIN_FIXED, outcomes))):
        rows = list(map(tuple.__add__, map(_PLAIN_VARYING, outcomes), ends))
        one, many = _INSERT_PLAIN, _INSERT_PLAINS
    else:
        rows = [(*outcome[:20], *end) for outcome, end in zip(outcomes, ends, strict=True)]
        one, many = _INSERT_ITEM, _INSERT_ITEMS
    whole = len(rows) - len(rows) % _ROWS_A_STATEMENT
    if whole:
        db.executemany(many, _rows_together(rows[:whole]))
    db.executemany(one, rows[whole:])


def _rows_together(rows: Sequence[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    """The rows' values, ``_ROWS_A_STATEMENT`` rows end to end a tuple (whole ones)."""
    for start in range(0, len(rows), _ROWS_A_STATEMENT):
        yield tuple(chain.from_iterable(rows[start : start + _ROWS_A_STATEMENT]))


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


def _merge_shard(db: sqlite3.Connection) -> tuple[int, int]:
    with atomic(db):
        conflicts = db.execute(
            "SELECT count(*) FROM shard.items s JOIN main.items m ON m.key = s.key"
        ).fetchone()[0]
        count = db.execute("SELECT count(*) FROM shard.items").fetchone()[0]
        db.execute(
            """
            INSERT INTO main.items SELECT * FROM shard.items WHERE true
            ON CONFLICT (key) DO UPDATE SET
                seq = excluded.seq, fingerprint = excluded.fingerprint, status = excluded.status,
                attempts = excluded.attempts, input = excluded.input, output = excluded.output,
                error = excluded.error, error_type = excluded.error_type,
                traceback = excluded.traceback, started_at = excluded.started_at,
                finished_at = excluded.finished_at, task_seconds = excluded.task_seconds,
                run_id = excluded.run_id, cause = excluded.cause,
                cost_usd = excluded.cost_usd, input_tokens = excluded.input_tokens,
                output_tokens = excluded.output_tokens, calls = excluded.calls,
                task_version = excluded.task_version, vectors = excluded.vectors,
                vector_at = excluded.vector_at, vector_len = excluded.vector_len
            WHERE (excluded.status = 'done' AND items.status != 'done')
               OR (excluded.status = items.status AND excluded.finished_at > items.finished_at)
            """
        )
        db.execute("INSERT OR IGNORE INTO main.runs SELECT * FROM shard.runs")
        db.execute("INSERT OR IGNORE INTO main.meta SELECT * FROM shard.meta")
        # Paid calls stay journaled in the merged registry: re-running there never pays again.
        db.execute("INSERT OR IGNORE INTO main.calls SELECT * FROM shard.calls")
        db.execute("INSERT OR IGNORE INTO main.answers SELECT * FROM shard.answers")
    return int(conflicts), int(count)
