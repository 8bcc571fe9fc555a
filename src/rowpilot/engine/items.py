"""Items: a source row with its key, its canonical JSON and its fingerprint.

Also the selection of rows (``--rows``, ``--shard``, ``--limit``) and the validation
pass that finds bad rows and duplicate keys before any state is touched; the items it
read are handed to the run when they fit a memory budget, so a small file is read once.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import itertools
import json
import json.encoder
import math
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Any

from rowpilot.errors import (
    ConfigError,
    DuplicateKeyError,
    KeyColumnError,
    SourceFormatError,
    StateError,
)
from rowpilot.sources import Row, Source

_DUPLICATES_SHOWN = 5


@dataclass(slots=True)
class Item:
    """One unit of work: a row, its key and (once encoded) its fingerprint."""

    seq: int
    line: int | None
    key: str
    fields: dict[str, Any]
    input_json: str = ""
    fingerprint: str = ""


@dataclass(frozen=True, slots=True)
class Selection:
    """Which rows of the source a run covers. ``shard`` is (k, n), k counted from 1."""

    rows: tuple[int | None, int | None] | None = None
    shard: tuple[int, int] | None = None
    limit: int | None = None

    def row_range_admits(self, seq: int) -> bool:
        if self.rows is None:
            return True
        start, stop = self.rows
        return (start is None or seq >= start) and (stop is None or seq < stop)

    def past_row_range(self, seq: int) -> bool:
        return self.rows is not None and self.rows[1] is not None and seq >= self.rows[1]


def parse_rows(text: str) -> tuple[int | None, int | None]:
    """Parse ``A:B`` (0-based, B excluded; either side may be empty)."""
    start_text, sep, stop_text = text.partition(":")
    if not sep:
        raise ConfigError(f"--rows {text!r} is not a range", hint="write it as A:B, e.g. 0:1516")
    try:
        start = int(start_text) if start_text.strip() else None
        stop = int(stop_text) if stop_text.strip() else None
    except ValueError:
        raise ConfigError(
            f"--rows {text!r} is not a range of whole numbers", hint="write it as A:B, e.g. 0:1516"
        ) from None
    if (start is not None and start < 0) or (
        start is not None and stop is not None and stop < start
    ):
        raise ConfigError(f"--rows {text!r} is empty or negative", hint="use 0 <= A <= B")
    return start, stop


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``K/N`` with shards numbered 1..N."""
    k_text, sep, n_text = text.partition("/")
    try:
        k, n = int(k_text), int(n_text)
    except ValueError:
        k = n = 0
    if not sep or n < 1 or not 1 <= k <= n:
        raise ConfigError(
            f"--shard {text!r} is not a shard", hint="write K/N with 1 <= K <= N, e.g. 3/10"
        )
    return k, n


def _json_default(value: Any) -> Any:
    # Values that JSON has no type for: keep them readable and stable.
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if hasattr(value, "tolist"):  # numpy arrays and scalars (a scalar's tolist is its value)
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "isoformat"):  # pandas Timestamp
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_encoder = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=_json_default
)
encode_json: Callable[[Any], str] = _encoder.encode
"""Canonical JSON (sorted keys): the stored input row, hashed into the fingerprint."""

VECTOR_TAG = "$vector"


def is_vector(value: Any) -> bool:
    """A 1-d numpy array of floats: an embedding (numpy is not imported to ask)."""
    dtype = getattr(value, "dtype", None)
    return getattr(value, "ndim", None) == 1 and getattr(dtype, "kind", None) == "f"


def _output_default(value: Any) -> Any:
    # A self-contained form (logs, journaled answers): little-endian float32 bytes in
    # base64, exact. The registry keeps its items' vectors as raw bytes instead
    # (encode_output_parts).
    if is_vector(value):
        raw = value.astype("<f4", copy=False).tobytes()
        return {VECTOR_TAG: base64.b64encode(raw).decode("ascii")}
    return _json_default(value)


encode_output: Callable[[Any], str] = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), default=_output_default
).encode
"""Task output as JSON, in the task's own field order (it becomes the column order)."""


Encoded = tuple[str, bytes | None]
"""A task's output as the registry stores it: the JSON, and its vectors' raw float32 bytes."""


class _HasVectors(Exception):
    """Raised by the shared encoder at the first vector: the output needs its own."""


def _no_vectors(value: Any) -> Any:
    if is_vector(value):
        raise _HasVectors
    return _json_default(value)


_encode_plain: Callable[[Any], str] = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), default=_no_vectors
).encode


def encode_output_parts(value: Any) -> Encoded:
    """Task output as JSON whose vectors are left out as raw little-endian float32 bytes
    (one blob, the vectors end to end); each vector's place in the JSON says where its
    numbers are, ``{"$vector": [first, count]}`` in float32s. No base64, no copy of the
    numbers into text: what the registry's ``vectors`` column holds."""
    try:
        return _encode_plain(value), None  # most outputs have no vector: a shared encoder
    except _HasVectors:
        pass
    pieces: list[bytes] = []
    stored = 0

    def default(value: Any) -> Any:
        nonlocal stored
        if is_vector(value):
            raw = value.astype("<f4", copy=False).tobytes()
            pieces.append(raw)
            place = [stored, len(raw) // 4]
            stored += place[1]
            return {VECTOR_TAG: place}
        return _json_default(value)

    text = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=default).encode(
        value
    )
    return text, b"".join(pieces) if pieces else None


def decode_output(text: str, vectors: bytes | None = None) -> Any:
    """Stored task output back as values: vectors become float32 numpy arrays, whether
    written in base64 inside the JSON (registries before migration 0004, logs) or as a
    place in the raw ``vectors`` bytes (encode_output_parts)."""
    if VECTOR_TAG not in text:
        return json.loads(text)

    def hook(entry: dict[str, Any]) -> Any:
        if len(entry) != 1 or VECTOR_TAG not in entry:
            return entry
        import numpy as np

        place = entry[VECTOR_TAG]
        if isinstance(place, str):
            return np.frombuffer(base64.b64decode(place), dtype="<f4").copy()
        first, count = place
        if vectors is None or (first + count) * 4 > len(vectors):
            raise StateError(
                "a stored output names vector bytes its row does not hold",
                hint="the registry is damaged: restore it from a copy, or --force the rows",
            )
        return np.frombuffer(vectors, dtype="<f4", count=count, offset=first * 4).copy()

    return json.loads(text, object_hook=hook)


# Repeated keys are found by Python's own string hash: C speed and cached on the string,
# where a blake2b a key took a third of the validation pass. Only ever compared within this
# process (a scan's report is never stored); a collision is told apart by the keys.
repeat_hash: Callable[[str], int] = hash
_KEY = attrgetter("key")


def key_hash(key: str) -> int:
    """A stable 63-bit hash of a key: shard assignment and duplicate detection."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def fingerprint(task_version: str, input_json: str) -> str:
    data = f"{task_version}\x00{input_json}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def encode_items(items: list[Item], task_version: str) -> None:
    """Set each item's canonical JSON and fingerprint, exactly as ``encode_json`` and
    ``fingerprint`` make them, a chunk at a time.

    Rows of text values under one set of text column names (every CSV row) take a fast
    path: the JSON is one ``%`` template of the sorted names filled with each value
    escaped by the very function ``encode_json`` escapes strings with, and the hash starts
    from the version's prefix once. Any other row is encoded by ``encode_json`` itself, so
    the two paths can only agree (tests/engine/test_items.py checks it on any text).
    """
    seed = hashlib.blake2b(f"{task_version}\x00".encode("utf-8", "surrogatepass"), digest_size=16)
    texts = _Layout.fill_chunk(items)
    if texts is not None:  # every row of the chunk fits one layout: filled column by column
        for item, filled in zip(items, texts, strict=True):
            item.input_json = filled
            digest = seed.copy()
            digest.update(filled.encode("utf-8", "surrogatepass"))
            item.fingerprint = digest.hexdigest()
        return
    layout: _Layout | None = None
    for item in items:
        fields = item.fields
        if layout is None or len(fields) != len(layout.names):
            layout = _Layout.of(fields)
        text = layout.fill(fields) if layout is not None else None
        item.input_json = text if text is not None else _canonical_row(item)
        digest = seed.copy()
        digest.update(item.input_json.encode("utf-8", "surrogatepass"))
        item.fingerprint = digest.hexdigest()


_escape: Callable[[str], str] = json.encoder.encode_basestring  # what encode_json uses


@dataclass(frozen=True, slots=True)
class _Layout:
    """A row's sorted column names and the JSON template they make."""

    names: tuple[str, ...]
    template: str

    @classmethod
    def of(cls, fields: Any) -> _Layout | None:
        if type(fields) is not dict or not all(type(name) is str for name in fields):
            return None
        names = tuple(sorted(fields))
        # A name's own "%" is doubled: only the values' places are %s.
        places = [_escape(name).replace("%", "%%") + ":%s" for name in names]
        return cls(names, "{" + ",".join(places) + "}")

    @classmethod
    def fill_chunk(cls, items: list[Item]) -> list[str] | None:
        """Each item's canonical JSON when all share the first one's columns and every value
        is text (a CSV chunk): each column escaped at once, then each row's template filled,
        with no Python call a row. None when any row does not fit."""
        if not items:
            return None
        rows = [item.fields for item in items]
        layout = cls.of(rows[0])
        if layout is None or set(map(len, rows)) != {len(layout.names)}:
            return None
        try:
            columns = [list(map(_escape, map(itemgetter(name), rows))) for name in layout.names]
        except (KeyError, TypeError):  # another column, or a value that is not text
            return None
        return list(map(layout.template.__mod__, zip(*columns, strict=True)))

    def fill(self, fields: dict[str, Any]) -> str | None:
        """The row's canonical JSON, or None when it does not fit (another column, a
        value that is not text: ``_escape`` takes only str)."""
        try:
            return self.template % tuple([_escape(fields[name]) for name in self.names])
        except (KeyError, TypeError):
            return None


def _canonical_row(item: Item) -> str:
    try:
        return encode_json(item.fields)
    except (TypeError, ValueError) as exc:
        raise SourceFormatError(
            f"a value cannot be stored: {exc}",
            row=item.seq,
            line=item.line,
            hint="convert the column to text, numbers or dates first",
        ) from exc


def key_text(value: Any) -> str | None:
    """A key cell's value as the registry's key text (None: no key)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int):
        return str(value)
    return encode_json(value)


class Keyer:
    """Turns rows into items: the key column's value, else the source's own key (a
    folder's relative path), else the row number."""

    def __init__(self, source: Source, key_column: str | None) -> None:
        self.source = source
        if key_column is None:
            key_column = getattr(source, "default_key", None)
        self.key_column = key_column
        columns = source.columns()
        if key_column is not None and columns is not None and key_column not in columns:
            raise _unknown_key_column(source, key_column, columns)

    def item(self, row: Row) -> Item:
        seq, line, fields = row
        if self.key_column is None:
            return Item(seq, line, str(seq), fields)
        if self.key_column not in fields:
            if self.source.columns() is None and seq == 0:
                raise _unknown_key_column(self.source, self.key_column, list(fields))
            raise self._no_key("this row has no key column", seq, line)
        key = key_text(fields[self.key_column])
        if key is None or key == "":
            raise self._no_key("the key is empty", seq, line)
        return Item(seq, line, key, fields)

    def items(self, rows: list[Row]) -> list[Item]:
        """``item`` of each row of a chunk, a text key taken as it is without a call a row
        (any other row goes through ``item``, with its conversions and errors)."""
        column = self.key_column
        if column is None:
            return [Item(seq, line, str(seq), fields) for seq, line, fields in rows]
        items: list[Item] = []
        for seq, line, fields in rows:
            key = fields.get(column)
            if type(key) is str and key:
                items.append(Item(seq, line, key, fields))
            else:
                items.append(self.item((seq, line, fields)))
        return items

    def _no_key(self, message: str, seq: int, line: int | None) -> KeyColumnError:
        return KeyColumnError(
            message,
            file=self.source.name,
            row=seq,
            line=line,
            column=self.key_column,
            hint="give every row a key, or drop --key to key by row number",
        )


def _unknown_key_column(source: Source, column: str, columns: list[str]) -> KeyColumnError:
    shown = ", ".join(repr(name) for name in columns[:12])
    return KeyColumnError(
        "no such key column",
        file=source.name,
        column=column,
        hint=f"the columns are {shown}" if shown else "the input has no columns",
    )


def selected_items(
    source: Source, keyer: Keyer, selection: Selection, chunk_size: int = 1024
) -> Iterator[list[Item]]:
    """Stream the selected items in chunks, in source order."""
    remaining = selection.limit
    if remaining is not None and remaining <= 0:
        return
    if selection == Selection():  # every row: nothing to decide a row
        yield from (keyer.items(chunk) for chunk in source.chunks(chunk_size) if chunk)
        return
    for chunk in source.chunks(chunk_size):
        items: list[Item] = []
        for row in chunk:
            seq = row[0]
            if selection.past_row_range(seq):
                if items:
                    yield items
                return
            if not selection.row_range_admits(seq):
                continue
            item = keyer.item(row)
            if selection.shard is not None:
                k, n = selection.shard
                if key_hash(item.key) % n != k - 1:
                    continue
            items.append(item)
            if remaining is not None:
                remaining -= 1
                if remaining <= 0:
                    yield items
                    return
        if items:
            yield items


@dataclass
class ScanReport:
    """What the validation pass learned: the count, the columns, repeated keys, and (with
    ``--duplicates first``) how many rows repeat an earlier row's key and are left out."""

    total: int
    columns: list[str]
    duplicate_hashes: frozenset[int] = field(default_factory=frozenset)
    dropped: int = 0
    reused: bool = False  # the last complete run's report on the unchanged file, not a pass
    kept: list[list[Item]] | None = None  # the items the pass read, for the run (keep_bytes)

    @property
    def to_run(self) -> int:
        """The items a run covers: the selection less the repeated keys left out."""
        return self.total - self.dropped


KEPT_ROW_BYTES = 250
KEPT_VALUE_BYTES = 100
"""What a kept item costs beyond its text: the Item and its dict, and each value's string
header and dict entry (measured: 555 bytes an item of 3 short columns)."""


def scan(
    source: Source, keyer: Keyer, selection: Selection, keep_bytes: int = 0, text_bytes: int = 0
) -> ScanReport:
    """Read the whole selection once: every read error surfaces before state is touched.

    The items read are kept for the run (``ScanReport.kept``: the source is then read
    once) while ``text_bytes`` (a bound on their text, e.g. the file's size) and what the
    items cost beyond it (``KEPT_ROW_BYTES``, ``KEPT_VALUE_BYTES``) stay within
    ``keep_bytes``; past that none is kept."""
    hashes = array("q")
    columns: dict[str, None] = dict.fromkeys(source.columns() or [])
    total = 0
    kept: list[list[Item]] | None = [] if text_bytes <= keep_bytes else None
    held = text_bytes
    for items in selected_items(source, keyer, selection):
        total += len(items)
        hashes.extend(map(repeat_hash, map(_KEY, items)))
        if len(columns) == 0 or source.columns() is None:
            for item in items:
                columns.update(dict.fromkeys(item.fields))
        if kept is not None:
            held += len(items) * (KEPT_ROW_BYTES + KEPT_VALUE_BYTES * len(items[0].fields))
            kept = kept if held <= keep_bytes else None
            if kept is not None:
                kept.append(items)
    if total == 0 and selection.rows is not None:
        _check_row_range(source, selection.rows)
    return ScanReport(total, list(columns), _repeated(hashes), kept=kept)


def _check_row_range(source: Source, rows: tuple[int | None, int | None]) -> None:
    """``--rows`` that starts at or past the end is a mistake, not "nothing to do"."""
    count = sum(len(chunk) for chunk in source.chunks())
    start, stop = rows
    if start is not None and start >= count:
        shown = f"{start}:{'' if stop is None else stop}"
        raise ConfigError(
            f"--rows {shown} starts past the end: the input has {count:,} rows "
            f"(0:{count} selects them all)",
            file=source.name,
            hint=f"give a range within 0:{count}",
        )


def count_repeats(
    source: Source, keyer: Keyer, selection: Selection, suspects: frozenset[int]
) -> int:
    """Rows whose key an earlier row already had (the rows ``--duplicates first`` leaves out)."""
    if not suspects:
        return 0
    admits = FirstOccurrence(suspects).admits
    return sum(
        not admits(item) for items in selected_items(source, keyer, selection) for item in items
    )


def source_identity(source: Source, keyer: Keyer, columns: list[str]) -> str:
    """A short hash of an in-memory source's columns and keys: its state's name, so that
    two different frames never share a state and the same frame always finds its own.

    A one-shot iterator is known by its first chunk only (it cannot be read twice)."""
    digest = hashlib.blake2b(encode_json(sorted(columns)).encode("utf-8"), digest_size=5)
    first = source.first_chunk if isinstance(source, PeekedSource) else None
    chunks = [first] if first is not None else source.chunks()
    for chunk in chunks:
        for row in chunk:
            key = keyer.item(row).key
            digest.update(key.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


class PeekedSource:
    """A one-shot source whose first chunk is read ahead (to name its state), then given
    back as the first chunk of the one pass it allows."""

    reiterable = False

    def __init__(self, source: Source, size: int = 1024) -> None:
        self.name = source.name
        self._source = source
        self._chunks = source.chunks(size)
        self.first_chunk: list[Row] = next(self._chunks, [])
        self._size = size

    def columns(self) -> list[str] | None:
        return self._source.columns()

    def chunks(self, size: int = 1024) -> Iterator[list[Row]]:
        if size != self._size:
            raise ValueError(f"a peeked source is read in chunks of {self._size}, not {size}")
        return itertools.chain([self.first_chunk], self._chunks)


def _repeated(hashes: array[int]) -> frozenset[int]:
    if len(hashes) < 2:
        return frozenset()
    import numpy as np

    ordered = np.sort(np.frombuffer(hashes, dtype=np.int64))
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    return frozenset(int(value) for value in np.unique(repeated))


def duplicate_key_error(
    source: Source, keyer: Keyer, selection: Selection, suspects: frozenset[int]
) -> DuplicateKeyError | None:
    """Name the first repeated keys and their rows, or None if the hashes only collided."""
    first_row: dict[str, int] = {}
    repeats: list[tuple[str, int, int]] = []
    for items in selected_items(source, keyer, selection):
        for item in items:
            if repeat_hash(item.key) not in suspects:
                continue
            if item.key in first_row:
                repeats.append((item.key, first_row[item.key], item.seq))
            else:
                first_row[item.key] = item.seq
    if not repeats:
        return None
    shown = "; ".join(f"{key!r} at rows {a} and {b}" for key, a, b in repeats[:_DUPLICATES_SHOWN])
    more = (
        f" and {len(repeats) - _DUPLICATES_SHOWN} more" if len(repeats) > _DUPLICATES_SHOWN else ""
    )
    return DuplicateKeyError(
        f"{len(repeats)} duplicate key(s): {shown}{more}",
        file=source.name,
        column=keyer.key_column,
        hint="make the keys unique, or pass --duplicates first to keep each key's first row",
    )


class FirstOccurrence:
    """With ``--duplicates first``: lets through only the first row of each repeated key."""

    def __init__(self, suspects: frozenset[int]) -> None:
        self._suspects = suspects
        self._seen: set[str] = set()

    def admits(self, item: Item) -> bool:
        if not self._suspects or repeat_hash(item.key) not in self._suspects:
            return True
        if item.key in self._seen:
            return False
        self._seen.add(item.key)
        return True


class OnlineDuplicateCheck:
    """Duplicate detection for one-shot iterables, which cannot be scanned first."""

    def __init__(self, source: Source, keyer: Keyer, dedupe: bool) -> None:
        self._source = source
        self._keyer = keyer
        self._dedupe = dedupe
        self._first_row: dict[str, int] = {}

    def admits(self, item: Item) -> bool:
        first = self._first_row.setdefault(item.key, item.seq)
        if first == item.seq:
            return True
        if self._dedupe:
            return False
        raise DuplicateKeyError(
            f"duplicate key {item.key!r} at rows {first} and {item.seq}",
            file=self._source.name,
            column=self._keyer.key_column,
            hint="make the keys unique, or pass duplicates='first' to keep each key's first row",
        )
