"""Tests for rowpilot.state.registry: migrations, transactions and the item store, on real files."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from rowpilot.errors import StateError
from rowpilot.state.registry import REGISTRY_FILE, Outcome, PriorState, Registry
from rowpilot.state.schema import MIGRATIONS, atomic, connect, migrate

TABLES = {"meta", "runs", "items", "migrations", "calls", "answers", "crashes"}


# -- helpers -------------------------------------------------------------------------------


def outcome(
    key: str,
    seq: int,
    status: str = "done",
    *,
    finished_at: float = 100.0,
    output: dict[str, object] | None = None,
    fingerprint: str = "fp",
    run_id: str = "run-1",
) -> Outcome:
    done = status == "done"
    return Outcome(
        key=key,
        seq=seq,
        fingerprint=fingerprint,
        input_json=json.dumps({"id": key, "seq": seq}),
        status=status,
        attempts=1 if done else 3,
        output_json=json.dumps(output if output is not None else {"n": seq}) if done else None,
        error=None if done else f"ValueError: bad {key}",
        error_type=None if done else "ValueError",
        traceback=None if done else "Traceback (most recent call last): ...",
        started_at=finished_at - 1.0,
        finished_at=finished_at,
        task_seconds=0.5,
        run_id=run_id,
    )


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def registry(state: Path) -> Iterator[Registry]:
    registry = Registry(state)
    try:
        yield registry
    finally:
        registry.close()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A migrated registry connection on a fresh file."""
    connection = connect(tmp_path / "r.sqlite")
    migrate(connection)
    try:
        yield connection
    finally:
        connection.close()


def schema(db: sqlite3.Connection) -> list[tuple[str, str, str]]:
    return db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()


def table_names(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


# -- columns ----------------------------------------------------------------------------


def test_has_items_only_once_an_item_is_committed(registry: Registry) -> None:
    # The scheduler skips its lookups for a registry without items: a run's own keys are
    # admitted once, so nothing could be found.
    assert not registry.has_items()  # no file yet
    registry.commit([], meta={"task": "t"})
    assert registry.exists and not registry.has_items()
    registry.commit([outcome("a", 0, "failed")])
    assert registry.has_items()


@pytest.mark.parametrize("count", [31, 32, 33, 70, 96])
def test_a_large_batch_written_many_rows_a_statement_keeps_every_row(
    registry: Registry, count: int
) -> None:
    # Whole statements of 32 rows, then the rest one by one: no row lost, doubled or moved.
    registry.commit([outcome(f"k{seq}", seq, finished_at=100.0 + seq) for seq in range(count)])
    records = sorted(registry.records(), key=lambda record: record.seq)
    assert [(r.key, r.seq, r.finished_at) for r in records] == [
        (f"k{seq}", seq, 100.0 + seq) for seq in range(count)
    ]
    assert [r.input for r in records] == [{"id": f"k{seq}", "seq": seq} for seq in range(count)]


def test_every_field_of_an_outcome_lands_in_its_own_column(registry: Registry) -> None:
    # The row is read from the outcome by name: a column matched to the wrong field
    # would store one value under another's name.
    written = Outcome(
        "k", 7, "fp", '{"id":"k"}', "failed", 3, None, "err", "ValueError", "tb", 1.0, 2.0,
        0.5, "run-9", "task_error", 0.25, 11, 12, 13, "v9", b"\x00\x01\x02\x03",
    )  # fmt: skip
    registry.commit([written])
    row = registry.db().execute(f"SELECT {_OUTCOME_COLUMNS} FROM items").fetchone()
    assert row == (
        "k", 7, "fp", '{"id":"k"}', "failed", 3, None, "err", "ValueError", "tb", 1.0, 2.0,
        0.5, "run-9", "task_error", 0.25, 11, 12, 13, "v9", None, 0, 4,
    )  # fmt: skip
    assert (registry.directory / "vectors" / "run-9.f32").read_bytes() == b"\x00\x01\x02\x03"


def test_a_plain_done_group_lands_in_the_same_columns_as_any_outcome(registry: Registry) -> None:
    # A batch of plain done rows (a grouped task's) is written by a narrower statement that
    # binds only what varies: it must store exactly what the general one stores.
    def outcome(key: str, run: str, vectors: bytes | None) -> Outcome:
        return Outcome(key, 1, "fp", "{}", "done", 1, "{}", None, None, None, 1.0, 2.0, 0.5,
                       run, None, 0.0, 0, 0, 0, "v1", vectors)  # fmt: skip

    plain = [outcome(f"p{i}", "run-1", bytes([i]) * 4) for i in range(40)]
    general = [outcome(f"g{i}", "run-1", bytes([i]) * 4) for i in range(40)]
    # keys differ; every other column of p<i> and g<i> must be stored alike
    general[-1] = general[-1]._replace(attempts=2)  # one row not plain: the general path
    registry.commit(plain)
    registry.commit(general)
    stored = {
        key: (tuple(rest), (at, length))
        for key, *rest, at, length in registry.db().execute(f"SELECT {_OUTCOME_COLUMNS} FROM items")
    }
    files = registry.vector_files
    for i in range(39):
        (plain_row, (plain_at, plain_length)), (general_row, (general_at, general_length)) = (
            stored[f"p{i}"],
            stored[f"g{i}"],
        )
        assert plain_row == general_row  # every column but the key and where the bytes are
        assert files.read("run-1", plain_at, plain_length) == bytes([i]) * 4
        assert files.read("run-1", general_at, general_length) == bytes([i]) * 4
    assert stored["g39"][0][4] == 2


_OUTCOME_COLUMNS = (
    "key, seq, fingerprint, input, status, attempts, output, error, error_type, traceback,"
    " started_at, finished_at, task_seconds, run_id, cause, cost_usd, input_tokens,"
    " output_tokens, calls, task_version, vectors, vector_at, vector_len"
)


# -- migrations ----------------------------------------------------------------------------


def test_migrate_on_a_blank_file_creates_every_table_and_records_each_migration(
    tmp_path: Path,
) -> None:
    path = tmp_path / "blank.sqlite"
    path.touch()  # a zero-byte file is an empty SQLite database
    with closing(connect(path)) as db:
        migrate(db)
        assert table_names(db) == TABLES
        indexes = db.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
        assert ("items_by_seq",) in indexes
        applied = [row[0] for row in db.execute("SELECT name FROM migrations ORDER BY rowid")]
        assert applied == [name for name, _ in MIGRATIONS]
        assert all(
            isinstance(when, float) and when > 0
            for (when,) in db.execute("SELECT applied_at FROM migrations")
        )
        items_columns = [row[1] for row in db.execute("PRAGMA table_info(items)")]
        assert items_columns[:4] == ["key", "seq", "fingerprint", "status"]


def test_migrate_twice_is_a_no_op(db: sqlite3.Connection) -> None:
    before = schema(db)
    recorded = db.execute("SELECT name, applied_at FROM migrations ORDER BY name").fetchall()

    migrate(db)

    assert schema(db) == before
    assert db.execute("SELECT name, applied_at FROM migrations ORDER BY name").fetchall() == (
        recorded
    )


def test_migrate_refuses_a_registry_with_a_newer_migration(db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO migrations VALUES ('9999_from_the_future', 0)")
    with pytest.raises(StateError, match="newer rowpilot") as caught:
        migrate(db)
    assert "9999_from_the_future" in caught.value.message
    assert caught.value.hint is not None
    assert "upgrade" in caught.value.hint


def test_registry_opening_a_newer_registry_raises_state_error(
    registry: Registry, state: Path
) -> None:
    registry.commit([outcome("a", 0)])
    registry.close()
    with closing(sqlite3.connect(state / REGISTRY_FILE)) as raw, raw:
        raw.execute("INSERT INTO migrations VALUES ('9999_from_the_future', 0)")

    newer = Registry(state)
    try:
        with pytest.raises(StateError) as caught:
            newer.lookup(["a"])
        assert caught.value.hint is not None
        assert "upgrade" in caught.value.hint
    finally:
        newer.close()


def test_a_file_that_is_not_sqlite_raises_state_error(state: Path) -> None:
    state.mkdir()
    (state / REGISTRY_FILE).write_bytes(b"this is not a database, just some text\n" * 200)
    registry = Registry(state)
    try:
        with pytest.raises(StateError, match="damaged or is not a rowpilot registry"):
            registry.lookup(["a"])
        with pytest.raises(StateError, match="damaged or is not a rowpilot registry"):
            registry.commit([outcome("a", 0)])
    finally:
        registry.close()


# -- atomic --------------------------------------------------------------------------------


def test_atomic_commits_the_body(db: sqlite3.Connection) -> None:
    with atomic(db):
        db.execute("INSERT INTO meta VALUES ('name', 'value')")
    assert db.execute("SELECT value FROM meta").fetchall() == [("value",)]
    assert not db.in_transaction


def in_transaction(db: sqlite3.Connection, body: Callable[[], None]) -> None:
    with atomic(db):
        body()


def test_atomic_rolls_back_and_reraises(db: sqlite3.Connection) -> None:
    error = KeyError("original")

    def body() -> None:
        db.execute("INSERT INTO meta VALUES ('name', 'value')")
        raise error

    with pytest.raises(KeyError) as caught:
        in_transaction(db, body)
    assert caught.value is error
    assert db.execute("SELECT count(*) FROM meta").fetchone() == (0,)
    assert not db.in_transaction


def test_atomic_reraises_the_original_when_rollback_fails_on_a_closed_transaction(
    db: sqlite3.Connection,
) -> None:
    error = ValueError("the body's own error")

    def body() -> None:
        db.execute("INSERT INTO meta VALUES ('name', 'value')")
        db.execute("COMMIT")  # ROLLBACK now fails: no transaction is active
        raise error

    with pytest.raises(ValueError, match="the body's own error") as caught:
        in_transaction(db, body)
    assert caught.value is error
    assert not db.in_transaction
    with pytest.raises(sqlite3.OperationalError, match="no transaction"):
        db.execute("ROLLBACK")  # what atomic() had to swallow


def test_atomic_reraises_the_original_when_rollback_fails_on_a_closed_connection(
    tmp_path: Path,
) -> None:
    db = connect(tmp_path / "r.sqlite")
    migrate(db)
    error = RuntimeError("connection gone")

    def body() -> None:
        db.close()  # ROLLBACK now raises sqlite3.ProgrammingError
        raise error

    with pytest.raises(RuntimeError, match="connection gone") as caught:
        in_transaction(db, body)
    assert caught.value is error


# -- creation on first commit --------------------------------------------------------------


def test_no_file_until_the_first_commit(registry: Registry, state: Path) -> None:
    assert registry.lookup(["a", "b"]) == {}
    assert not registry.exists
    assert not state.exists()
    with pytest.raises(StateError, match="no registry"):
        registry.counts()
    assert not state.exists()

    registry.commit([outcome("a", 0)])

    assert registry.exists
    assert (state / REGISTRY_FILE).is_file()


def test_commit_then_lookup_round_trip(registry: Registry, state: Path) -> None:
    registry.commit(
        [outcome("a", 0, finished_at=10.0), outcome("b", 1, "failed", finished_at=11.0)]
    )
    assert registry.lookup(["a", "b", "missing"]) == {
        "a": PriorState("fp", "done", 10.0),
        "b": PriorState("fp", "failed", 11.0),
    }
    registry.close()

    reopened = Registry(state)
    try:
        assert reopened.lookup(["b"]) == {"b": PriorState("fp", "failed", 11.0)}
        assert reopened.lookup([]) == {}
    finally:
        reopened.close()


def test_lookup_of_more_keys_than_one_query_takes(registry: Registry) -> None:
    registry.commit([outcome(f"k{i:04d}", i) for i in range(1200)])
    keys = [f"k{i:04d}" for i in range(0, 1300, 3)]
    found = registry.lookup(keys)
    assert set(found) == {key for key in keys if int(key[1:]) < 1200}


def test_insert_or_replace_keeps_one_row_per_key(registry: Registry) -> None:
    registry.commit([outcome("a", 0, "failed", finished_at=1.0)])
    registry.commit([outcome("a", 0, "done", finished_at=2.0, output={"v": 2})])

    rows = registry.db().execute("SELECT key, status, output FROM items").fetchall()
    assert rows == [("a", "done", '{"v": 2}')]
    assert registry.counts() == {"done": 1, "failed": 0, "stale": 0}


def test_records_in_seq_order_and_filtered_by_status(registry: Registry) -> None:
    registry.commit([outcome("c", 2), outcome("a", 0, "failed"), outcome("b", 1)])
    registry.commit([outcome("z", -1)])

    records = list(registry.records())
    assert [r.key for r in records] == ["z", "a", "b", "c"]
    assert [r.seq for r in records] == [-1, 0, 1, 2]

    done = list(registry.records(status="done"))
    assert [r.key for r in done] == ["z", "b", "c"]
    assert done[1].input == {"id": "b", "seq": 1}
    assert done[1].output == {"n": 1}
    assert done[1].attempts == 1

    failed = list(registry.records(status="failed"))
    assert [(r.key, r.status, r.output, r.error_type) for r in failed] == [
        ("a", "failed", None, "ValueError")
    ]
    assert failed[0].error == "ValueError: bad a"
    tracebacks = [(record.key, trace) for record, trace in registry.failures()]
    assert tracebacks == [("a", "Traceback (most recent call last): ...")]


def test_journal_mode_is_wal(registry: Registry, state: Path) -> None:
    registry.commit([outcome("a", 0)])
    assert registry.db().execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with closing(sqlite3.connect(state / REGISTRY_FILE)) as other:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_counts(registry: Registry) -> None:
    registry.commit([])
    assert registry.counts() == {"done": 0, "failed": 0, "stale": 0}
    registry.commit([outcome("a", 0), outcome("b", 1), outcome("c", 2, "failed")])
    assert registry.counts() == {"done": 2, "failed": 1, "stale": 0}


def test_runs_after_commit_with_a_run_and_update_run(registry: Registry) -> None:
    first = {"run_id": "r1", "started_at": 5.0, "status": "running", "pid": 42, "task": "t"}
    registry.commit([outcome("a", 0)], run=first)
    registry.commit([], run={"run_id": "r0", "started_at": 1.0, "status": "completed"})

    runs = registry.runs()
    assert [run["run_id"] for run in runs] == ["r0", "r1"]  # by started_at
    assert runs[1] == {
        "run_id": "r1",
        "started_at": 5.0,
        "ended_at": None,
        "status": "running",
        "command": None,
        "pid": 42,
        "task": "t",
        "task_version": None,
        "settings": None,
        "summary": None,
    }

    registry.update_run({**first, "status": "completed", "ended_at": 9.0, "summary": "{}"})
    updated = registry.runs()[1]
    assert (updated["status"], updated["ended_at"], updated["summary"]) == ("completed", 9.0, "{}")
    assert len(registry.runs()) == 2


def test_meta_and_input_columns(registry: Registry) -> None:
    registry.commit([], meta={"task_version": "v1"})
    assert registry.meta() == {"task_version": "v1"}
    assert registry.input_columns() == []

    registry.commit([], meta={"input_columns": json.dumps(["id", "text"]), "task_version": "v2"})
    assert registry.meta() == {"task_version": "v2", "input_columns": '["id", "text"]'}
    assert registry.input_columns() == ["id", "text"]
