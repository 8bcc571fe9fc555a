"""The batch ledger: what a job sent to a provider's Batch API (``rowpilot.llm.batch``), in
``batches.sqlite`` beside the registry.

A batch's life in the ledger, each step committed before the next is taken:

1. **intent**: a new intent id, the request file's content hash, the worst case reserved,
   every request's ``custom_id`` (``INTENT-CALLKEY``) with its call key (``batch_rows``),
   and the rows each request carries, their item and row keys (``batch_members``; a
   ledger written before requests carried several rows has none: each of its requests
   is the one row ``batch_rows`` names), in one transaction, *before* the provider is
   asked to create anything;
2. **open**: the provider's batch id, recorded right after the create call returned;
3. **collected**: once the batch has ended and every answer it holds is journaled in the
   registry (``Registry.journal``, the online calls' journal); or **lost**: an intent whose
   batch was never created (found nowhere at the provider).

A row is *reserved* while its row key is in an intent or open batch: no other batch gets
it, however a later run groups the rows still free. (A can-wait ``ctx.llm`` step's request
carries one row whose row key is the step's key, the key its answer is journaled under.)
A ledger opened for one provider and model (``only``: the batch pass of one ``ctx.llm``
model) sees only that model's unfinished batches; reservations are the job's.

The ledger is a file of its own, as the Sheets write-back's is (``state/writeback.py``),
so the registry's schema and migrations stay as they are; losing it while batches are open
loses only those batches' answers (their rows are submitted again).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rowpilot.errors import StateError

__all__ = ["LEDGER_FILE", "BatchLedger", "BatchMember", "BatchRecord", "BatchRow"]

LEDGER_FILE = "batches.sqlite"
_OPEN = ("intent", "open")
_CHUNK = 500

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS batches (intent TEXT PRIMARY KEY, provider TEXT NOT NULL,"
    " model TEXT NOT NULL, content_hash TEXT NOT NULL, intended_at REAL NOT NULL,"
    " batch_id TEXT, status TEXT NOT NULL, rows INTEGER NOT NULL, worst_usd REAL NOT NULL,"
    " run_id TEXT NOT NULL, ended_at REAL, done INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS batch_rows (custom_id TEXT PRIMARY KEY, intent TEXT NOT NULL,"
    " item_key TEXT NOT NULL, row_key TEXT NOT NULL, call_key TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS batch_rows_by_intent ON batch_rows (intent)",
    "CREATE INDEX IF NOT EXISTS batch_rows_by_call ON batch_rows (call_key)",
    "CREATE INDEX IF NOT EXISTS batch_rows_by_row ON batch_rows (row_key)",
    "CREATE TABLE IF NOT EXISTS batch_members (custom_id TEXT NOT NULL, intent TEXT NOT NULL,"
    " item_key TEXT NOT NULL, row_key TEXT NOT NULL, PRIMARY KEY (custom_id, row_key))",
    "CREATE INDEX IF NOT EXISTS batch_members_by_intent ON batch_members (intent)",
    "CREATE INDEX IF NOT EXISTS batch_members_by_row ON batch_members (row_key)",
)


@dataclass(frozen=True)
class BatchRecord:
    """One batch as the ledger holds it."""

    intent: str
    provider: str
    model: str
    content_hash: str
    intended_at: float
    batch_id: str | None
    status: str  # intent, open, collected, lost
    rows: int
    worst_usd: float
    run_id: str
    ended_at: float | None
    done: int = 0  # rows the provider counted done at the last look


@dataclass(frozen=True)
class BatchRow:
    """One request of a batch: its custom_id, its call key, and its first row's keys."""

    custom_id: str
    item_key: str
    row_key: str
    call_key: str


@dataclass(frozen=True)
class BatchMember:
    """One row a request carries: the item key its prompt tags it with, its row key."""

    custom_id: str
    item_key: str
    row_key: str


class BatchLedger:
    """The ledger of one state directory (see the module docstring)."""

    def __init__(self, state: Path, only: tuple[str, str] | None = None) -> None:
        self.path = state / LEDGER_FILE
        self.only = only  # (provider, model): unfinished() sees only that model's batches
        try:
            state.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                self._db.execute(statement)
        except (sqlite3.Error, OSError) as error:
            raise StateError(
                f"{self.path} cannot be written: {error}",
                hint="free disk space or make the state folder writable, then run again",
            ) from None

    @classmethod
    def existing(cls, state: Path) -> BatchLedger | None:
        """The ledger of ``state`` if a batch run made one (for ``status``)."""
        return cls(state) if (state / LEDGER_FILE).exists() else None

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _atomic(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as error:
            raise StateError(
                f"cannot write the batch ledger {self.path}: {error}",
                hint="free disk space or make the state folder writable, then run again",
            ) from None

    def record_intent(
        self, record: BatchRecord, rows: Sequence[BatchRow], members: Sequence[BatchMember]
    ) -> None:
        with self._atomic() as db:
            db.execute(
                "INSERT INTO batches VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    record.intent,
                    record.provider,
                    record.model,
                    record.content_hash,
                    record.intended_at,
                    record.batch_id,
                    record.status,
                    record.rows,
                    record.worst_usd,
                    record.run_id,
                    record.ended_at,
                    record.done,
                ),
            )
            db.executemany(
                "INSERT INTO batch_rows VALUES (?,?,?,?,?)",
                [(r.custom_id, record.intent, r.item_key, r.row_key, r.call_key) for r in rows],
            )
            db.executemany(
                "INSERT INTO batch_members VALUES (?,?,?,?)",
                [(m.custom_id, record.intent, m.item_key, m.row_key) for m in members],
            )

    def record_batch_id(self, intent: str, batch_id: str) -> None:
        with self._atomic() as db:
            db.execute(
                "UPDATE batches SET batch_id = ?, status = 'open' WHERE intent = ?",
                (batch_id, intent),
            )

    def record_look(self, intent: str, done: int) -> None:
        with self._atomic() as db:
            db.execute("UPDATE batches SET done = ? WHERE intent = ?", (done, intent))

    def mark(self, intent: str, status: str) -> None:
        """``collected`` or ``lost``: the batch's rows are no longer reserved."""
        with self._atomic() as db:
            db.execute(
                "UPDATE batches SET status = ?, ended_at = ? WHERE intent = ?",
                (status, time.time(), intent),
            )

    def unfinished(self) -> list[BatchRecord]:
        """Intents and open batches, oldest first (of the ``only`` model, when given)."""
        query = "SELECT * FROM batches WHERE status IN (?, ?) ORDER BY intended_at, intent"
        found = [BatchRecord(*row) for row in self._db.execute(query, _OPEN)]
        if self.only is None:
            return found
        return [record for record in found if (record.provider, record.model) == self.only]

    def unfinished_models(self) -> set[tuple[str, str]]:
        """(provider, model) of every intent or open batch."""
        query = "SELECT DISTINCT provider, model FROM batches WHERE status IN (?, ?)"
        return {(provider, model) for provider, model in self._db.execute(query, _OPEN)}

    def waiting_items(self) -> set[str]:
        """The item keys whose requests are in an intent or an open batch (a request's
        first row's: the whole of a step's, which carries one)."""
        query = (
            "SELECT DISTINCT r.item_key FROM batch_rows r JOIN batches b ON b.intent = r.intent"
            " WHERE b.status IN (?, ?)"
        )
        return {key for (key,) in self._db.execute(query, _OPEN)}

    def known_ids(self) -> set[str]:
        query = "SELECT batch_id FROM batches WHERE batch_id IS NOT NULL"
        return {row[0] for row in self._db.execute(query)}

    def rows_of(self, intent: str) -> list[BatchRow]:
        query = "SELECT custom_id, item_key, row_key, call_key FROM batch_rows WHERE intent = ?"
        return [BatchRow(*row) for row in self._db.execute(query, (intent,))]

    def members_of(self, intent: str) -> dict[str, list[BatchMember]]:
        """The rows each request of ``intent`` carries, by custom_id (its ``batch_rows``
        row alone for a request recorded without members)."""
        query = "SELECT custom_id, item_key, row_key FROM batch_members WHERE intent = ?"
        members: dict[str, list[BatchMember]] = {}
        for row in self._db.execute(query, (intent,)):
            members.setdefault(row[0], []).append(BatchMember(*row))
        for request in self.rows_of(intent):
            if request.custom_id not in members:
                members[request.custom_id] = [
                    BatchMember(request.custom_id, request.item_key, request.row_key)
                ]
        return members

    def reserved(self, row_keys: Sequence[str]) -> set[str]:
        """Which of ``row_keys`` are in a request of an intent or an open batch."""
        return self._rows_in(row_keys, "b.status IN (?, ?)", _OPEN)

    def collected_calls(self, row_keys: Sequence[str]) -> dict[str, set[str]]:
        """The call keys of the collected requests that carried each of ``row_keys``."""
        query = (
            "SELECT m.row_key, r.call_key FROM batch_members m"
            " JOIN batch_rows r ON r.custom_id = m.custom_id"
            " JOIN batches b ON b.intent = m.intent"
            " WHERE b.status = ? AND m.row_key IN ({})"
        )
        calls: dict[str, set[str]] = {}
        for row_key, call_key in self._chunked(query, row_keys, ("collected",)):
            calls.setdefault(row_key, set()).add(str(call_key))
        return calls

    def _rows_in(self, row_keys: Sequence[str], where: str, head: tuple[str, ...]) -> set[str]:
        by_request = (
            "SELECT r.row_key FROM batch_rows r JOIN batches b ON b.intent = r.intent"
            f" WHERE {where} AND r.row_key IN ({{}})"
        )
        by_member = (
            "SELECT m.row_key FROM batch_members m JOIN batches b ON b.intent = m.intent"
            f" WHERE {where} AND m.row_key IN ({{}})"
        )
        found = {row[0] for row in self._chunked(by_request, row_keys, head)}
        return found | {row[0] for row in self._chunked(by_member, row_keys, head)}

    def _chunked(
        self, query: str, keys: Sequence[str], head: tuple[str, ...]
    ) -> Iterator[tuple[str, str]]:
        for start in range(0, len(keys), _CHUNK):
            part = list(keys[start : start + _CHUNK])
            yield from self._db.execute(query.format(",".join("?" * len(part))), [*head, *part])
