"""The vector sink: embeddings written to a LanceDB table (embedded, local files), by key.

The registry stays the record of every outcome; the vector table is an export derived from
it, so it must be safe to write again and again. ``write_vectors`` streams rows into the
table named by ``lancedb://PATH/TABLE`` (``PATH`` is the LanceDB database folder).

Rules
-----
* One row per key. Each batch is one ``merge_insert`` on ``key``: a new key is inserted; a
  key already there with the same fingerprint is left alone (``unchanged``); with another
  fingerprint the whole row is replaced (``updated``). Writing the same rows twice changes
  nothing the second time. A key repeated within a batch keeps its last row (LanceDB would
  insert both copies of a new key, and refuses a repeat of an existing one).
* Streaming. Only one batch (``insert_batch`` rows) is held at a time.
* Schema. ``key`` and ``fingerprint`` (strings), ``vector`` (``fixed_size_list<float32>``
  of the first row's length), then the row's ``fields`` with types inferred from the first
  batch (a field that is ``None`` throughout the first batch is a string column). Fields
  must be scalars (str, int, float, bool, bytes, dates and times); names beginning with
  ``_`` and the three core names are reserved. An existing table's schema wins: rows that
  do not fit it (another dimension, another set of fields, a value of another type) raise
  ``ConfigError`` before anything of their batch is written.
* Crashes. Each ``merge_insert`` is one atomic commit (a new table version). A process
  killed mid-write loses at most its batch in flight, whose files are left unreferenced;
  the next run finds the committed keys unchanged and inserts the rest.
* Concurrent writers. Two ``merge_insert`` calls that commit at the same time can both
  insert the same new key (lance issues #4585 and #8949, lancedb #2463; reproduced with
  lancedb 0.40: 4,740 rows for 3,000 keys). So every commit is made under an ``flock`` on
  ``PATH/.TABLE.rowpilot-lock`` (the kernel drops it if the process dies), with the
  connection reading the latest version before each operation, and the key column carries
  Lance's ``unenforced-primary-key`` mark, with which Lance itself detects such a conflict
  and retries.
* Versions and compaction. Every ``merge_insert`` commits a version, even one that changes
  nothing, and every batch that inserts or updates adds a fragment. The cost of a commit
  and of a scan grows with the fragments (about 15 ms per commit with a few fragments, 130
  ms with 2,000), so when a write leaves more than 20 small fragments it ends with
  ``table.optimize()``: compaction into fragments of up to about a million rows, plus
  LanceDB's default pruning of versions older than 7 days. Until then old versions keep
  their files, and every rewrite (a replacement, a compaction) adds a copy: 100,000 rows of
  256 dims (100 MB) took 420 MB on disk after a first write and a full replacement. Pruning
  sooner (``cleanup_older_than=0``) would break readers of an older version, so it is left
  to the user. The price of compaction: LanceDB's exhaustive search runs a fragment per
  thread, so on 2 cores ``nearest`` over 100,000 rows took 27 ms in 100 fragments and 45-73
  ms in one; a large table that is searched wants a vector index anyway.
* ``lancedb`` is an optional extra, imported only when a function needs it.
"""

from __future__ import annotations

import fcntl
import importlib
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rowpilot.errors import ConfigError, OutputPathError

if TYPE_CHECKING:
    from types import ModuleType

    import numpy as np
    import numpy.typing as npt
    import pyarrow as pa

__all__ = [
    "SinkReport",
    "VectorRow",
    "VectorTarget",
    "check_vector_target",
    "nearest",
    "parse_vector_target",
    "write_vectors",
]

SCHEME = "lancedb://"
KEY = "key"
FINGERPRINT = "fingerprint"
VECTOR = "vector"
CORE_COLUMNS = (KEY, FINGERPRINT, VECTOR)
# With this mark on the key column Lance records the inserted keys of a merge_insert and
# treats two concurrent inserts of one key as a conflict (it retries the later one).
PRIMARY_KEY_MARK = {"lance-schema:unenforced-primary-key": "true"}
# LanceDB's rule of thumb: optimize after more than 20 modifications.
COMPACT_ABOVE_SMALL_FRAGMENTS = 20
_MATCH_CHANGED = f"target.{FINGERPRINT} != source.{FINGERPRINT}"
_TABLE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_URI_HINT = "write it as lancedb://PATH/TABLE, e.g. lancedb://./vectors/docs"
_EXTRA_HINT = "pip install 'rowpilot[vectors]'"


@dataclass(frozen=True)
class VectorTarget:
    """A LanceDB table: the database folder and the table's name in it."""

    path: Path
    table: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.path}/{self.table}"


@dataclass(frozen=True)
class VectorRow:
    """One key's vector, its fingerprint (input + task) and scalar columns to keep beside it."""

    key: str
    fingerprint: str
    vector: npt.NDArray[np.float32]
    fields: Mapping[str, Any]


@dataclass
class SinkReport:
    """What a write did: rows by outcome, merge commits made, and its wall time."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    batches: int = 0
    seconds: float = 0.0


# The slice of LanceDB's API used here, so the rest of the module is checked against it.
class _MergeResult(Protocol):
    num_inserted_rows: int
    num_updated_rows: int


class _MergeBuilder(Protocol):
    def when_matched_update_all(self, *, where: str | None = None) -> _MergeBuilder: ...
    def when_not_matched_insert_all(self) -> _MergeBuilder: ...
    def execute(self, new_data: pa.Table) -> _MergeResult: ...


class _Query(Protocol):
    def limit(self, limit: int) -> _Query: ...
    def select(self, columns: list[str]) -> _Query: ...
    def to_arrow(self) -> pa.Table: ...


class _Table(Protocol):
    @property
    def schema(self) -> pa.Schema: ...
    def merge_insert(self, on: str) -> _MergeBuilder: ...
    def search(self, query: Any, vector_column_name: str | None = None) -> _Query: ...
    def stats(self) -> Mapping[str, Any]: ...
    def optimize(self) -> None: ...


class _Connection(Protocol):
    def open_table(self, name: str) -> _Table: ...
    def create_table(self, name: str, *, schema: pa.Schema, exist_ok: bool) -> _Table: ...


# --- the target -----------------------------------------------------------------------


def parse_vector_target(uri: str) -> VectorTarget:
    """``lancedb://PATH/TABLE`` → the target; anything else is a ``ConfigError``."""
    if not uri.lower().startswith(SCHEME):
        raise ConfigError(f"{uri!r} is not a LanceDB target", hint=_URI_HINT)
    rest = uri[len(SCHEME) :]
    folder, slash, table = rest.rpartition("/")
    if not slash or not folder:
        raise ConfigError(f"{uri!r} names no database folder", hint=_URI_HINT)
    if not _TABLE_NAME.fullmatch(table):
        raise ConfigError(
            f"{table!r} in {uri!r} is not a usable table name",
            hint="use up to 128 letters, digits, '_', '-' and '.', not starting with '.' or '-'",
        )
    if "://" in folder or any(ord(char) < 32 for char in folder):
        raise ConfigError(
            f"{folder!r} in {uri!r} is not a local folder",
            hint="LanceDB targets here are local folders: " + _URI_HINT,
        )
    try:
        path = Path(folder).expanduser()
    except RuntimeError as error:  # "~user" for a user that does not exist
        raise ConfigError(f"{folder!r} in {uri!r}: {error}", hint=_URI_HINT) from None
    return VectorTarget(path=path, table=table)


def check_vector_target(uri: str) -> VectorTarget:
    """Check before a run that ``uri`` can be written; create nothing.

    ``ConfigError`` for a bad URI, a missing ``lancedb`` or an existing table that is not a
    rowpilot vector table; ``OutputPathError`` for a folder that cannot be made or written.
    """
    target = parse_vector_target(uri)
    lancedb = _import_lancedb()
    _check_folder(target.path)
    if target.path.is_dir():
        try:
            table = _connect(lancedb, target, create=False).open_table(target.table)
        except ValueError:  # not there yet: write_vectors creates it
            return target
        _dimension(table.schema, target)
    return target


def _check_folder(path: Path) -> None:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(
            f"the LanceDB folder {path} runs through {existing}, which is not a folder",
            hint="choose a folder path for lancedb://PATH/TABLE",
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"no permission to write in {existing} for the LanceDB folder {path}",
            hint=f"make {existing} writable or choose another folder",
        )


# --- writing --------------------------------------------------------------------------


def write_vectors(
    target: VectorTarget, rows: Iterable[VectorRow], *, insert_batch: int = 1000
) -> SinkReport:
    """Insert new keys, replace keys whose fingerprint changed, leave the rest (see module)."""
    if insert_batch < 1:
        raise ConfigError(f"insert_batch must be at least 1, not {insert_batch}")
    lancedb = _import_lancedb()
    started = time.perf_counter()
    report = SinkReport()
    batches = _batches(rows, insert_batch)
    first = next(batches, None)
    if first is not None:
        schema = _infer_schema(first, target)
        database = _connect(lancedb, target, create=True)
        with _CommitLock(target) as lock:
            with lock.held():
                table = _open_or_create(database, target, schema)
            layout = _check_layout(table.schema, schema, target)
            for batch in chain([first], batches):
                data = _to_arrow(batch, layout, target)
                with lock.held():
                    inserted, updated = _merge(table, data)
                _count(report, len(batch), inserted, updated)
            with lock.held():
                _compact_if_fragmented(table)
    report.seconds = time.perf_counter() - started
    return report


def _batches(rows: Iterable[VectorRow], size: int) -> Iterator[list[VectorRow]]:
    """Chunks of ``size`` rows, each key once (its last row)."""
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        yield list({row.key: row for row in chunk}.values())


def _count(report: SinkReport, rows: int, inserted: int, updated: int) -> None:
    report.inserted += inserted
    report.updated += updated
    report.unchanged += rows - inserted - updated
    report.batches += 1


def _merge(table: _Table, data: pa.Table) -> tuple[int, int]:
    result = (
        table.merge_insert(KEY)
        .when_matched_update_all(where=_MATCH_CHANGED)
        .when_not_matched_insert_all()
        .execute(data)
    )
    return int(result.num_inserted_rows), int(result.num_updated_rows)


def _compact_if_fragmented(table: _Table) -> None:
    fragments = table.stats()["fragment_stats"]
    if int(fragments["num_small_fragments"]) > COMPACT_ABOVE_SMALL_FRAGMENTS:
        table.optimize()


# --- schema and conversion ------------------------------------------------------------


def _infer_schema(rows: Sequence[VectorRow], target: VectorTarget) -> pa.Schema:
    """The table's schema for rows like these: core columns, then the first row's fields."""
    import pyarrow as pa

    first = rows[0]
    dim = len(_vector(first, None))
    columns = [
        pa.field(KEY, pa.string(), nullable=False, metadata=PRIMARY_KEY_MARK),
        pa.field(FINGERPRINT, pa.string(), nullable=False),
        pa.field(VECTOR, pa.list_(pa.float32(), dim), nullable=False),
    ]
    for name in first.fields:
        _check_field_name(name, target)
        values = [row.fields.get(name) for row in rows]
        columns.append(pa.field(name, _infer_type(name, values)))
    return pa.schema(columns)


def _check_field_name(name: object, target: VectorTarget) -> None:
    if not isinstance(name, str) or not name or name.startswith("_") or name in CORE_COLUMNS:
        raise ConfigError(
            f"{name!r} cannot be a field of {target}",
            hint=f"rename it: {', '.join(CORE_COLUMNS)} and names beginning with '_' are reserved",
        )


def _infer_type(name: str, values: list[Any]) -> pa.DataType:
    import pyarrow as pa

    try:
        kind: pa.DataType = pa.array(values).type
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as error:
        raise ConfigError(
            f"field {name!r} does not make a column of one scalar type: {error}",
            hint="give the field one scalar type (str, int, float, bool, bytes, date or time)",
        ) from None
    if pa.types.is_null(kind):
        return pa.string()
    if not _is_scalar(kind):
        raise ConfigError(
            f"field {name!r} holds {kind} values; fields are scalar columns",
            hint="store lists and objects as JSON text, or leave them out of the fields",
        )
    return kind


def _is_scalar(kind: pa.DataType) -> bool:
    import pyarrow as pa

    checks = (
        pa.types.is_boolean,
        pa.types.is_integer,
        pa.types.is_floating,
        pa.types.is_decimal,
        pa.types.is_string,
        pa.types.is_large_string,
        pa.types.is_binary,
        pa.types.is_large_binary,
        pa.types.is_temporal,
    )
    return any(check(kind) for check in checks)


def _check_layout(existing: pa.Schema, wanted: pa.Schema, target: VectorTarget) -> pa.Schema:
    """The table's own schema, once the rows are known to fit it."""
    table_dim = _dimension(existing, target)
    _check_dimension(table_dim, wanted.field(VECTOR).type.list_size, target)
    _check_fields(_fields_of(existing), _fields_of(wanted), target)
    return existing


def _dimension(schema: pa.Schema, target: VectorTarget) -> int:
    """The table's vector length, once it is known to be a rowpilot vector table."""
    import pyarrow as pa

    names = schema.names
    vector_type = schema.field(VECTOR).type if VECTOR in names else None
    if (
        KEY not in names
        or FINGERPRINT not in names
        or not isinstance(vector_type, pa.FixedSizeListType)
    ):
        raise ConfigError(
            f"{target} is not a rowpilot vector table (its columns: {', '.join(names)})",
            hint="name another table; rowpilot's have key, fingerprint and vector columns",
        )
    return int(vector_type.list_size)


def _check_dimension(table_dim: int, row_dim: int, target: VectorTarget) -> None:
    if table_dim != row_dim:
        raise ConfigError(
            f"the vectors have {row_dim} dimensions but {target} holds {table_dim}",
            hint=f"write to another table, or delete {target.path / target.table}.lance "
            "to rebuild this one with the new model",
        )


def _check_fields(table_fields: list[str], row_fields: list[str], target: VectorTarget) -> None:
    if sorted(table_fields) != sorted(row_fields):
        raise ConfigError(
            f"the rows have fields {row_fields} but {target} has {table_fields}",
            hint="keep the fields of the first write, or write to another table",
        )


def _fields_of(schema: pa.Schema) -> list[str]:
    return [name for name in schema.names if name not in CORE_COLUMNS]


def _to_arrow(rows: Sequence[VectorRow], schema: pa.Schema, target: VectorTarget) -> pa.Table:
    """One batch as an Arrow table of ``schema``, or a ``ConfigError`` naming the bad row."""
    import pyarrow as pa

    dim = schema.field(VECTOR).type.list_size
    fields = _fields_of(schema)
    arrays: dict[str, pa.Array[Any]] = {
        KEY: pa.array([_text(row.key, KEY, row) for row in rows], pa.string()),
        FINGERPRINT: pa.array([_text(row.fingerprint, FINGERPRINT, row) for row in rows]),
        VECTOR: _vector_array(rows, dim, target),
    }
    for name in fields:
        arrays[name] = _field_array(rows, name, schema.field(name).type, fields)
    return pa.Table.from_arrays([arrays[name] for name in schema.names], schema=schema)


def _text(value: object, column: str, row: VectorRow) -> str:
    if not isinstance(value, str) or (column == KEY and not value):
        kind = "a non-empty string" if column == KEY else "a string"
        raise ConfigError(
            f"the {column} of a vector row must be {kind}, not {value!r}",
            key=row.key if isinstance(row.key, str) else None,
        )
    return value


def _vector(row: VectorRow, dim: int | None) -> npt.NDArray[np.float32]:
    import numpy as np

    try:
        vector = np.asarray(row.vector, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"the vector is not an array of numbers: {error}", key=row.key) from None
    if vector.ndim != 1 or len(vector) == 0:
        raise ConfigError(
            f"the vector must be one-dimensional and non-empty, not of shape {vector.shape}",
            key=row.key,
        )
    if dim is not None and len(vector) != dim:
        raise ConfigError(
            f"the vector has {len(vector)} dimensions where the table's have {dim}",
            key=row.key,
            hint="every vector of a table comes from the same model",
        )
    return vector


def _vector_array(rows: Sequence[VectorRow], dim: int, target: VectorTarget) -> pa.Array[Any]:
    import numpy as np
    import pyarrow as pa

    matrix = np.stack([_vector(row, dim) for row in rows])
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        bad = rows[int(np.argmin(finite))]
        raise ConfigError(f"the vector for {target} has NaN or infinite values", key=bad.key)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dim)


def _field_array(
    rows: Sequence[VectorRow], name: str, kind: pa.DataType, fields: list[str]
) -> pa.Array[Any]:
    import pyarrow as pa

    values = []
    for row in rows:
        if len(row.fields) != len(fields) or name not in row.fields:
            raise ConfigError(
                f"the row has fields {sorted(row.fields)} where the table has {sorted(fields)}",
                key=row.key,
                hint="give every row the same fields",
            )
        values.append(row.fields[name])
    try:
        return pa.array(values, type=kind)
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as error:
        raise ConfigError(
            f"field {name!r} is a {kind} column, and a value does not fit: {error}",
            hint="give the field the same type on every row (or write to a new table)",
        ) from None


# --- LanceDB ---------------------------------------------------------------------------


def _import_lancedb() -> ModuleType:
    try:
        return importlib.import_module("lancedb")
    except ImportError as error:
        raise ConfigError(
            f"writing and searching vectors needs the vectors extra ({error})", hint=_EXTRA_HINT
        ) from None


def _connect(lancedb: ModuleType, target: VectorTarget, *, create: bool) -> _Connection:
    if create:
        try:
            target.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputPathError(
                f"cannot create the LanceDB folder {target.path}: {error}"
            ) from None
    # Consistency 0: every operation first reads the latest version, so a commit made under
    # the lock sees the commits another process made before it.
    connection: _Connection = lancedb.connect(
        str(target.path), read_consistency_interval=timedelta(0)
    )
    return connection


def _open_or_create(database: _Connection, target: VectorTarget, schema: pa.Schema) -> _Table:
    try:
        return database.open_table(target.table)
    except ValueError:  # not found; also a folder left by a crash before its first version
        return database.create_table(target.table, schema=schema, exist_ok=True)


class _CommitLock:
    """An exclusive flock on ``PATH/.TABLE.rowpilot-lock``, taken around each commit."""

    def __init__(self, target: VectorTarget) -> None:
        self.path = target.path / f".{target.table}.rowpilot-lock"
        self._fd = -1

    def __enter__(self) -> _CommitLock:
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise OutputPathError(f"cannot open the lock file {self.path}: {error}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)

    @contextmanager
    def held(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


# --- reading --------------------------------------------------------------------------


def nearest(
    target: VectorTarget, vector: npt.NDArray[np.float32], k: int = 5
) -> list[tuple[str, float]]:
    """The ``k`` keys nearest to ``vector``, closest first, with their squared L2 distance.

    An exhaustive search unless the table has a vector index (rowpilot makes none).
    """
    import numpy as np

    if k < 1:
        raise ConfigError(f"k must be at least 1, not {k}")
    lancedb = _import_lancedb()
    table = _open_existing(lancedb, target)
    dim = _dimension(table.schema, target)
    query = _vector(VectorRow("<query>", "", vector, {}), dim)
    if not np.isfinite(query).all():
        raise ConfigError("the query vector has NaN or infinite values")
    # Selecting _distance explicitly: without it lance logs a deprecation warning.
    found = (
        table.search(query, vector_column_name=VECTOR)
        .limit(k)
        .select([KEY, "_distance"])
        .to_arrow()
    )
    keys = found.column(KEY).to_pylist()
    distances = found.column("_distance").to_numpy()
    return [(str(key), float(distance)) for key, distance in zip(keys, distances, strict=True)]


def _open_existing(lancedb: ModuleType, target: VectorTarget) -> _Table:
    missing = ConfigError(
        f"there is no vector table {target}", hint="write_vectors creates it on first write"
    )
    if not target.path.is_dir():
        raise missing
    try:
        return _connect(lancedb, target, create=False).open_table(target.table)
    except ValueError:
        raise missing from None
