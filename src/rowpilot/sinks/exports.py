"""Exports: views of the registry as a table (CSV, JSONL, Parquet, Excel), a folder of JSON
files or a failure list.

Every writer takes a *factory* of records (:data:`Records`), so it can read the items twice:
once to learn the columns (and, for Parquet, their types), once to write. Memory stays
bounded by one row (one batch for Parquet) whatever the size of the dataset, and every
file is written through :func:`~rowpilot.sinks.atomic.atomic_write`, so an interrupted export
never leaves a half-written file.

The enriched table has the input columns in the given order (plus input fields not named
there, in first-seen order), then the output fields in first-seen order. An input column
always holds the input, the key above all: a run refuses an output field named like an
input column, and should a registry hold one (written by an older rowpilot), it goes to
its own column ``output.<name>`` rather than over the input.

A CSV file is a spreadsheet waiting to be opened, and a spreadsheet runs a cell that starts
with ``=``, ``+``, ``-`` or ``@`` as a formula (CSV injection). Input cells, keys, output
cells and every header cell (a task chooses its output field names) may come from anyone,
so every cell and header cell written to CSV goes through :func:`neutralise_cell`, and every
text cell and header cell written to Excel (:mod:`rowpilot.sinks.excel`). JSONL and Parquet
are read by programs, not spreadsheets, and keep every value exactly.

The JSON folder holds one file per done item: its key as the leading field ``"_key"``,
then the output fields, so the key survives even where the file name is a hash.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rowpilot.engine.items import is_vector
from rowpilot.errors import ConfigError, OutputPathError
from rowpilot.sinks.atomic import atomic_write, remove_stale_temps, write_text_atomic
from rowpilot.sinks.cells import cell_text, neutralise_cell
from rowpilot.sinks.filenames import KeyFileNamer

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

__all__ = [
    "KEY_FIELD",
    "PARQUET_BATCH_ROWS",
    "ExportRecord",
    "JsonDirReport",
    "Records",
    "cell_text",
    "iter_failure_lines",
    "neutralise_cell",
    "table_format",
    "table_layout",
    "to_dataframe",
    "write_failures",
    "write_json_dir",
    "write_table",
]

PARQUET_BATCH_ROWS = 10_000

_FORMATS_BY_SUFFIX = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".xlsx": "xlsx",
}
_FORMAT_ALIASES = {
    "csv": "csv",
    "jsonl": "jsonl",
    "ndjson": "jsonl",
    "parquet": "parquet",
    "xlsx": "xlsx",
    "excel": "xlsx",
}
# The JSON folder's own field; bump the tag when the file layout changes, so the next
# export rewrites files that an older layout left unchanged.
KEY_FIELD = "_key"
_JSON_LAYOUT = "k1"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True, slots=True)
class ExportRecord:
    """One item as the exports see it."""

    key: str
    seq: int  # source row index; records arrive in seq order
    status: str  # "done" or "failed"
    input: dict[str, Any]  # the source row's fields
    output: dict[str, Any] | None  # the task's output fields (None if failed)
    error: str | None  # one-line error for failed items
    error_type: str | None  # e.g. "ValueError"
    attempts: int
    fingerprint: str
    finished_at: float | None
    cause: str | None = None  # failed items: rate_limit, auth, timeout, ..., task_error
    cost_usd: float = 0.0


Records = Callable[[], Iterator[ExportRecord]]
"""Each call gives a fresh iterator over the items in seq order."""


@dataclass(frozen=True, slots=True)
class JsonDirReport:
    """What :func:`write_json_dir` did: files written, files left as they were, done items."""

    written: int
    unchanged: int
    total: int


# --- the table's columns ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Layout:
    columns: list[str]
    kinds: dict[str, str]  # column -> parquet value kind; filled only when asked for


def _included(records: Records, done_only: bool) -> Iterator[ExportRecord]:
    for record in records():
        if record.status == "done" or not done_only:
            yield record


def _output_of(record: ExportRecord) -> dict[str, Any]:
    return record.output if record.status == "done" and record.output is not None else {}


CLASHED = "output."
"""The column of an output field named like an input column (older registries only)."""


def _discover_layout(
    records: Records, input_columns: Sequence[str], done_only: bool, with_kinds: bool = False
) -> _Layout:
    # dicts as ordered sets: first-seen order, O(1) membership.
    inputs = dict.fromkeys(input_columns)
    outputs: dict[str, None] = {}
    input_kinds: dict[str, str] = {}
    output_kinds: dict[str, str] = {}
    for record in _included(records, done_only):
        output = _output_of(record)
        inputs.update(dict.fromkeys(record.input))
        outputs.update(dict.fromkeys(output))
        if with_kinds:
            _merge_kinds(input_kinds, record.input)
            _merge_kinds(output_kinds, output)
    renamed = {name: CLASHED + name if name in inputs else name for name in outputs}
    kinds = {**input_kinds, **{renamed[name]: kind for name, kind in output_kinds.items()}}
    return _Layout([*inputs, *renamed.values()], kinds)


def _row_values(columns: Sequence[str], record: ExportRecord) -> list[Any]:
    output = _output_of(record)
    return [_cell(name, record.input, output) for name in columns]


def _cell(name: str, inputs: dict[str, Any], output: dict[str, Any]) -> Any:
    if name in inputs:
        return inputs[name]
    if name in output:
        return output[name]
    if name.startswith(CLASHED):
        return output.get(name[len(CLASHED) :])
    return None


def table_layout(
    records: Records, input_columns: Sequence[str], *, done_only: bool = False
) -> tuple[list[str], Iterator[list[Any]]]:
    """The enriched table's columns and its rows' values, for a writer of its own (a
    spreadsheet): the same columns as :func:`write_table`, values as stored."""
    layout = _discover_layout(records, input_columns, done_only)
    rows = (_row_values(layout.columns, record) for record in _included(records, done_only))
    return layout.columns, rows


def table_format(path: Path, format: str | None = None) -> str:
    """``"csv"``, ``"jsonl"``, ``"parquet"`` or ``"xlsx"``: ``format`` if given, else from
    the suffix."""
    if format is not None:
        known = _FORMAT_ALIASES.get(format.strip().lower())
        if known is None:
            raise ConfigError(
                f"unknown table format {format!r}",
                hint="use one of: csv, jsonl, parquet, xlsx",
                file=str(path),
            )
        return known
    known = _FORMATS_BY_SUFFIX.get(Path(path).suffix.lower())
    if known is None:
        raise ConfigError(
            "cannot tell the table format from the file name",
            hint="end the name with .csv, .jsonl, .parquet or .xlsx, or pass the format explicitly",
            file=str(path),
        )
    return known


def write_table(
    path: Path,
    records: Records,
    input_columns: Sequence[str],
    *,
    format: str | None = None,
    done_only: bool = False,
) -> int:
    """Write the enriched table to ``path`` atomically; return the number of rows written.

    Failed items are rows with empty output cells unless ``done_only``. CSV and Excel pass
    every text cell and header cell through :func:`neutralise_cell`; JSONL keeps nested
    values native; CSV, Parquet and Excel store dict and list values as JSON strings.
    Excel's own rules are in :mod:`rowpilot.sinks.excel`.
    """
    path = Path(path)
    kind = table_format(path, format)
    layout = _discover_layout(records, input_columns, done_only, with_kinds=kind == "parquet")
    rows = _included(records, done_only)
    if kind == "csv":
        return _write_csv(path, layout.columns, rows)
    if kind == "jsonl":
        return _write_jsonl(path, layout.columns, rows)
    if kind == "xlsx":
        from rowpilot.sinks.excel import write_workbook

        keyed = ((record.key, _row_values(layout.columns, record)) for record in rows)
        return write_workbook(path, layout.columns, keyed)
    return _write_parquet(path, layout, rows)


def to_dataframe(
    records: Records, input_columns: Sequence[str], *, done_only: bool = False
) -> pd.DataFrame:
    """The enriched table of :func:`write_table` as a DataFrame of Python objects.

    Every column has dtype ``object`` and every cell is the value as the item holds it:
    ``"007"`` stays a string, ``" a "`` keeps its spaces, missing cells are ``None``.
    """
    import pandas as pd

    columns = _discover_layout(records, input_columns, done_only).columns
    rows = [_row_values(columns, record) for record in _included(records, done_only)]
    return pd.DataFrame(rows, columns=pd.Index(columns, dtype=object), dtype=object)


# --- CSV --------------------------------------------------------------------------------


def _write_csv(path: Path, columns: list[str], rows: Iterable[ExportRecord]) -> int:
    written = 0
    with atomic_write(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([neutralise_cell(name) for name in columns])
        for record in rows:
            writer.writerow(
                [neutralise_cell(cell_text(value)) for value in _row_values(columns, record)]
            )
            written += 1
    return written


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=_plain)


def _plain(value: Any) -> Any:
    # Vectors become lists; anything else str: a stray datetime should not sink an export.
    return value.tolist() if is_vector(value) else str(value)


# --- JSONL ------------------------------------------------------------------------------


def _write_jsonl(path: Path, columns: list[str], rows: Iterable[ExportRecord]) -> int:
    written = 0
    with atomic_write(path, "w", newline="\n") as handle:
        for record in rows:
            row = dict(zip(columns, _row_values(columns, record), strict=True))
            handle.write(_json_text(row) + "\n")
            written += 1
    return written


# --- Parquet ----------------------------------------------------------------------------
#
# Arrow's own inference looks at one batch and converts silently (1.5 into an int64
# column becomes 1), so the types come from the first pass over *all* rows instead:
# a column holding only ints is int64, ints and floats float64, only bools bool, and
# anything mixed (or nested, or an int beyond int64, or only empty cells) is a string
# column whose values are cast with str() ("true"/"false" for bools). The schema is
# therefore known before the first batch and every batch fits it.


def _parquet_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | float | str) or is_vector(value):
        return value
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= _INT64_MAX else str(value)
    if isinstance(value, dict | list):
        return _json_text(value)
    return str(value)


def _merge_kind(current: str | None, value: Any) -> str | None:
    if value is None:
        return current
    kind = "vector" if is_vector(value) else type(_parquet_value(value)).__name__
    if current is None or current == kind:
        return kind
    return "float" if {current, kind} == {"int", "float"} else "str"


def _merge_kinds(kinds: dict[str, str], fields: dict[str, Any]) -> None:
    for name, value in fields.items():
        _merge_column_kind(kinds, name, value)


def _merge_column_kind(kinds: dict[str, str], name: str, value: Any) -> None:
    merged = _merge_kind(kinds.get(name), value)
    if merged is not None:
        kinds[name] = merged


def _arrow_schema(layout: _Layout) -> pa.Schema:
    import pyarrow as pa

    types = {
        "bool": pa.bool_(),
        "int": pa.int64(),
        "float": pa.float64(),
        "vector": pa.list_(pa.float32()),
    }
    return pa.schema(
        [
            pa.field(name, types.get(layout.kinds.get(name, "str"), pa.string()))
            for name in layout.columns
        ]
    )


def _string_cell(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if is_vector(value):
        return _json_text(value)
    return str(_parquet_value(value))


def _row_batches(columns: list[str], rows: Iterable[ExportRecord]) -> Iterator[list[list[Any]]]:
    batch: list[list[Any]] = []
    for record in rows:
        batch.append(_row_values(columns, record))
        if len(batch) >= PARQUET_BATCH_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


def _columnar(
    columns: list[str], string_columns: set[str], batch: list[list[Any]]
) -> dict[str, list[Any]]:
    by_column: dict[str, list[Any]] = {}
    for index, name in enumerate(columns):
        convert = _string_cell if name in string_columns else _parquet_value
        by_column[name] = [convert(row[index]) for row in batch]
    return by_column


def _write_parquet(path: Path, layout: _Layout, rows: Iterable[ExportRecord]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _arrow_schema(layout)
    string_columns = {name for name in layout.columns if layout.kinds.get(name, "str") == "str"}
    written = 0
    with atomic_write(path, "wb") as handle, pq.ParquetWriter(handle, schema) as writer:
        for batch in _row_batches(layout.columns, rows):
            by_column = _columnar(layout.columns, string_columns, batch)
            writer.write_table(pa.Table.from_pydict(by_column, schema=schema))
            written += len(batch)
    return written


# --- one JSON file per item -------------------------------------------------------------


def write_json_dir(directory: Path, records: Records) -> JsonDirReport:
    """Write each done item to its own JSON file in ``directory``, created if missing.

    Each file holds an object: the item's key as ``"_key"``, then its output fields; an
    output field named ``_key`` is a :class:`ConfigError`. File names come from
    :class:`KeyFileNamer` and stay the same across exports. A file whose item fingerprint
    is unchanged since the last export is not rewritten. Temporary files that a killed
    export left in the folder are removed first.
    """
    directory = Path(directory)
    _prepare_directory(directory)
    remove_stale_temps(directory)
    namer = KeyFileNamer.load(directory)
    written = unchanged = 0
    try:
        for record in _included(records, done_only=True):
            if _write_item_file(directory, namer, record):
                written += 1
            else:
                unchanged += 1
    except BaseException:
        # Record the files written so far, so a retry skips them; but never let a
        # failing save hide the error that stopped the export.
        with contextlib.suppress(OutputPathError):
            namer.save()
        raise
    namer.save()
    return JsonDirReport(written=written, unchanged=unchanged, total=written + unchanged)


def _prepare_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(
            f"cannot create the export folder: {exc.strerror or exc}",
            hint="choose a folder path that is not an existing file, in a writable folder",
            file=str(directory),
        ) from exc


def _write_item_file(directory: Path, namer: KeyFileNamer, record: ExportRecord) -> bool:
    document = _item_document(directory, record)
    target = directory / namer.file_name(record.key)
    if namer.fingerprint(record.key) == _version(record) and _holds_data(target):
        return False
    # No fsync per file: thousands of fsyncs take seconds, and this folder is a view that
    # can be rebuilt from the registry. The rename still keeps every file whole while the
    # machine runs; after a power cut a file may come back empty, which _holds_data
    # catches so the next export rewrites it. No sweep per file either: the folder was
    # swept once, and a listing per file would make an export quadratic.
    write_text_atomic(target, _json_document(document), fsync=False, sweep=False)
    namer.set_fingerprint(record.key, _version(record))
    return True


def _item_document(directory: Path, record: ExportRecord) -> dict[str, Any]:
    output = _output_of(record)
    if KEY_FIELD in output:
        raise ConfigError(
            f"the task's output has a field named {KEY_FIELD!r}, which the JSON folder "
            "keeps for the item's key",
            hint=f"rename the task's {KEY_FIELD!r} field (e.g. to 'key_'), then export again",
            file=str(directory),
            column=KEY_FIELD,
            key=record.key,
        )
    return {KEY_FIELD: record.key, **output}


def _json_document(value: dict[str, Any]) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=_plain)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A key read with surrogateescape holds lone surrogates, which UTF-8 cannot
        # encode; JSON's \u escapes can, and read back to the same string.
        text = json.dumps(value, indent=2, ensure_ascii=True, default=_plain)
    return text + "\n"


def _holds_data(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


# --- failures ---------------------------------------------------------------------------


def iter_failure_lines(records: Records) -> Iterator[str]:
    """One JSON object per failed item, without a trailing newline."""
    for record in records():
        if record.status == "failed":
            yield _json_text(failure_entry(record))


def failure_entry(record: ExportRecord) -> dict[str, Any]:
    """What the failures report says of one failed item."""
    return {
        "key": record.key,
        "row": record.seq,
        "cause": record.cause,
        "error_type": record.error_type,
        "error": record.error,
        "attempts": record.attempts,
        "finished_at": record.finished_at,
    }


def write_failures(path: Path, records: Records) -> int:
    """Write the failed items as JSON lines to ``path`` atomically; return how many."""
    written = 0
    with atomic_write(Path(path), "w", newline="\n") as handle:
        for line in iter_failure_lines(records):
            handle.write(line + "\n")
            written += 1
    return written


def _version(record: ExportRecord) -> str:
    # The input fingerprint alone misses a forced redo that changed the output; the
    # layout tag makes files written in an older layout count as changed.
    return f"{_JSON_LAYOUT}:{record.fingerprint}@{record.finished_at!r}"
