"""Tests for rowpilot.engine.items: --rows/--shard, keys, hashing, selection, duplicates."""

from __future__ import annotations

import datetime as dt
import decimal
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rowpilot.engine.items import (
    KEPT_ROW_BYTES,
    KEPT_VALUE_BYTES,
    FirstOccurrence,
    Item,
    Keyer,
    Selection,
    decode_output,
    duplicate_key_error,
    encode_items,
    encode_json,
    encode_output,
    encode_output_parts,
    fingerprint,
    key_hash,
    parse_rows,
    parse_shard,
    repeat_hash,
    scan,
    selected_items,
)
from rowpilot.errors import ConfigError, KeyColumnError, SourceFormatError, StateError
from rowpilot.sources import Source, open_source

# -- helpers -------------------------------------------------------------------------------


def source_of(keys: list[Any], column: str = "id") -> Source:
    return open_source([{column: key, "text": f"text {i}"} for i, key in enumerate(keys)])


def selected(
    source: Source, selection: Selection, key: str | None = "id", chunk_size: int = 1024
) -> list[Item]:
    chunks = list(selected_items(source, Keyer(source, key), selection, chunk_size))
    assert all(chunks), "no empty chunks"
    assert all(len(chunk) <= chunk_size for chunk in chunks)
    return [item for chunk in chunks for item in chunk]


def keys_of(items: list[Item]) -> list[str]:
    return [item.key for item in items]


def in_shard(key: str, k: int, n: int) -> bool:
    return key_hash(key) % n == k - 1


KEYS = [f"id-{i:03d}" for i in range(40)]


# -- parse_rows / parse_shard --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0:10", (0, 10)),
        (":5", (None, 5)),
        ("3:", (3, None)),
        (":", (None, None)),
        ("7:7", (7, 7)),
        (" 2 : 4 ", (2, 4)),
        ("0:1516", (0, 1516)),
    ],
)
def test_parse_rows(text: str, expected: tuple[int | None, int | None]) -> None:
    assert parse_rows(text) == expected


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("5", "A:B"),
        ("", "A:B"),
        ("a:b", "A:B"),
        ("1.5:3", "A:B"),
        ("1:2:3", "A:B"),
        ("-1:3", "0 <= A <= B"),
        ("5:3", "0 <= A <= B"),
    ],
)
def test_parse_rows_rejects_bad_ranges_with_a_hint(text: str, hint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_rows(text)
    assert repr(text) in caught.value.message
    assert caught.value.hint is not None
    assert hint in caught.value.hint


@pytest.mark.parametrize(
    ("text", "expected"), [("1/3", (1, 3)), ("3/3", (3, 3)), ("1/1", (1, 1)), ("10/12", (10, 12))]
)
def test_parse_shard(text: str, expected: tuple[int, int]) -> None:
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["0/3", "4/3", "a/b", "-1/3", "1/0", "3", "/3", "1/", "", "1-3"])
def test_parse_shard_rejects_bad_shards_with_a_hint(text: str) -> None:
    with pytest.raises(ConfigError, match="is not a shard") as caught:
        parse_shard(text)
    assert caught.value.hint is not None
    assert "K/N" in caught.value.hint


# -- key_hash and fingerprint --------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("k1", 1162140698545385420),
        ("", 6510301506637419378),
        ("hello", 4511043874410912595),
        ("id-000042", 7818930968146519394),
        ("ключ-é", 7810614237863502526),
        ("\ud800", 3748893510854247457),  # a lone surrogate from a JSON file still hashes
    ],
)
def test_key_hash_is_pinned(key: str, expected: int) -> None:
    # Shards are assigned by this hash: a new hash function would silently move keys
    # between the shards of a user's job that is already half done.
    assert key_hash(key) == expected
    assert 0 <= key_hash(key) < 2**63


def test_fingerprint_is_pinned() -> None:
    # A new fingerprint would mark every done item stale and pay for all of it again.
    input_json = encode_json({"text": "hello", "id": "k1"})
    assert input_json == '{"id":"k1","text":"hello"}'
    assert fingerprint("v1", input_json) == "d33e6ce49fdc6225256d75ac96740a5a"


def test_fingerprint_changes_with_the_task_version_or_any_cell() -> None:
    row = {"id": "k1", "text": "hello", "n": 3}
    base = fingerprint("v1", encode_json(row))
    assert fingerprint("v1", encode_json(dict(reversed(row.items())))) == base
    assert fingerprint("v2", encode_json(row)) != base
    changed = {
        fingerprint("v1", encode_json({**row, name: value}))
        for name, value in [("id", "k2"), ("text", "hello "), ("n", 4), ("n", "3"), ("new", None)]
    }
    assert base not in changed
    assert len(changed) == 5
    # The separator keeps the version and the input apart.
    assert fingerprint("v1", "x") != fingerprint("v", "1x")


# -- selection -----------------------------------------------------------------------------


@given(
    keys=st.lists(st.text(min_size=1, max_size=10), unique=True, min_size=1, max_size=40),
    n=st.integers(1, 8),
)
def test_shards_partition_the_keys_exactly(keys: list[str], n: int) -> None:
    source = source_of(keys)
    shards = [
        keys_of(selected(source, Selection(shard=(k, n)), chunk_size=7)) for k in range(1, n + 1)
    ]
    assert sorted(key for shard in shards for key in shard) == sorted(keys)
    for k, shard in enumerate(shards, start=1):
        assert shard == [key for key in keys if in_shard(key, k, n)]  # source order


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_selection_applies_rows_then_shard_then_limit_in_source_order(chunk_size: int) -> None:
    source = source_of(KEYS)
    selection = Selection(rows=(5, 35), shard=(2, 3), limit=4)
    expected = [key for seq, key in enumerate(KEYS) if 5 <= seq < 35 and in_shard(key, 2, 3)][:4]
    assert len(expected) == 4

    items = selected(source, selection, chunk_size=chunk_size)

    assert keys_of(items) == expected
    assert [item.seq for item in items] == [KEYS.index(key) for key in expected]
    assert all(item.fields["id"] == item.key for item in items)


_KEY_VALUES = st.text(max_size=3) | st.integers() | st.none() | st.booleans() | st.floats()


@given(st.lists(st.dictionaries(st.sampled_from(["id", "text"]), _KEY_VALUES), max_size=8))
def test_a_chunk_of_items_is_what_each_row_alone_makes(rows: list[dict[str, Any]]) -> None:
    # Keyer.items (a chunk, the whole selection) against Keyer.item (row by row): the same
    # keys, or the same error at the same row.
    source = open_source([{"id": "k", "text": "first"}])
    keyer = Keyer(source, "id")
    chunk = [(seq, seq + 2, fields) for seq, fields in enumerate(rows)]
    assert outcome_of(lambda: keyer.items(chunk)) == outcome_of(
        lambda: [keyer.item(row) for row in chunk]
    )


def outcome_of(make: Callable[[], list[Item]]) -> object:
    """The items made, or the error's row and message."""
    try:
        return make()
    except KeyColumnError as error:
        return (error.row, str(error))


def test_selection_rows_limit_and_shard_alone() -> None:
    source = source_of(KEYS)
    assert keys_of(selected(source, Selection())) == KEYS
    assert keys_of(selected(source, Selection(rows=(None, 3)))) == KEYS[:3]
    assert keys_of(selected(source, Selection(rows=(38, None)))) == KEYS[38:]
    assert keys_of(selected(source, Selection(rows=(50, 60)))) == []
    assert keys_of(selected(source, Selection(rows=(4, 4)))) == []
    assert keys_of(selected(source, Selection(limit=5), chunk_size=2)) == KEYS[:5]
    assert keys_of(selected(source, Selection(limit=100))) == KEYS
    # The limit counts rows of the shard, not rows of the file.
    sharded = [key for key in KEYS if in_shard(key, 1, 2)]
    assert keys_of(selected(source, Selection(shard=(1, 2), limit=3))) == sharded[:3]


def test_limit_zero_selects_nothing() -> None:
    # `--limit 0` passes config validation (ge=0), so it must mean "no rows".
    assert keys_of(selected(source_of(KEYS), Selection(limit=0))) == []


def test_without_a_key_column_the_row_number_is_the_key() -> None:
    source = source_of(["x", "y", "z"])
    items = selected(source, Selection(rows=(1, None)), key=None)
    assert [(item.seq, item.key) for item in items] == [(1, "1"), (2, "2")]


def test_key_values_that_are_not_strings() -> None:
    source = source_of([7, True, 1.5, {"b": 1, "a": 2}, "7.0"])
    assert keys_of(selected(source, Selection())) == ["7", "True", "1.5", '{"a":2,"b":1}', "7.0"]


# -- Keyer errors --------------------------------------------------------------------------


def test_unknown_key_column_names_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("id,text,score\nk1,a,1\n", encoding="utf-8")
    source = open_source(path)
    with pytest.raises(KeyColumnError, match="no such key column") as caught:
        Keyer(source, "ID")
    error = caught.value
    assert error.column == "ID"
    assert error.file == str(path)
    assert error.hint == "the columns are 'id', 'text', 'score'"


def test_unknown_key_column_of_an_iterable_names_the_first_rows_columns() -> None:
    source = open_source([{"name": "a", "text": "x"}, {"name": "b", "text": "y"}])
    keyer = Keyer(source, "id")  # the columns of an iterable are not known up front
    with pytest.raises(KeyColumnError, match="no such key column") as caught:
        list(selected_items(source, keyer, Selection()))
    assert caught.value.hint == "the columns are 'name', 'text'"


def test_a_later_row_without_the_key_column_names_the_row() -> None:
    source = open_source([{"id": "a"}, {"id": "b"}, {"text": "no id"}])
    with pytest.raises(KeyColumnError, match="this row has no key column") as caught:
        selected(source, Selection())
    assert (caught.value.row, caught.value.column) == (2, "id")
    assert "row 2" in str(caught.value)


@pytest.mark.parametrize("empty", ["", None, float("nan")], ids=["blank", "none", "nan"])
def test_an_empty_key_names_the_row(empty: Any) -> None:
    source = source_of(["a", "b", "c", empty])
    with pytest.raises(KeyColumnError, match="the key is empty") as caught:
        selected(source, Selection())
    assert (caught.value.row, caught.value.column) == (3, "id")
    assert caught.value.hint is not None
    assert "drop --key" in caught.value.hint


def test_an_empty_key_in_a_csv_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("id,text\nk1,a\nk2,b\n,c\n", encoding="utf-8")
    source = open_source(path)
    with pytest.raises(KeyColumnError, match="the key is empty") as caught:
        selected(source, Selection())
    assert (caught.value.row, caught.value.line) == (2, 4)
    assert str(caught.value).startswith(f"{path} line 4, column 'id': the key is empty")


def test_an_empty_key_outside_the_selection_is_not_an_error() -> None:
    source = source_of(["a", "b", "", "d"])
    assert keys_of(selected(source, Selection(rows=(0, 2)))) == ["a", "b"]


# -- scan, duplicates, dedupe --------------------------------------------------------------


def test_scan_counts_rows_and_collects_columns_of_an_iterable() -> None:
    source = open_source([{"id": "a", "x": 1}, {"id": "b", "y": 2}, {"z": 3, "id": "c"}])
    report = scan(source, Keyer(source, "id"), Selection())
    assert report.total == 3
    assert report.columns == ["id", "x", "y", "z"]
    assert report.duplicate_hashes == frozenset()


@given(st.integers(1, 3000), st.integers(0, 2000), st.integers(0, 3_000_000))
def test_scan_keeps_the_items_only_while_they_fit_its_budget(
    rows: int, text_bytes: int, keep_bytes: int
) -> None:
    source = source_of([f"k{i}" for i in range(rows)])
    report = scan(source, Keyer(source, "id"), Selection(), keep_bytes, text_bytes)
    cost = text_bytes + rows * (KEPT_ROW_BYTES + 2 * KEPT_VALUE_BYTES)  # 2 columns
    if cost <= keep_bytes:
        assert report.kept is not None
        kept = [item for chunk in report.kept for item in chunk]
        assert [item.key for item in kept] == [f"k{i}" for i in range(rows)]
        assert kept[-1].fields == {"id": f"k{rows - 1}", "text": f"text {rows - 1}"}
    else:
        assert report.kept is None
    assert report.total == rows


def test_scan_finds_duplicate_keys_and_the_error_lists_them_with_rows() -> None:
    keys = ["a", "b", "a", "c", "b", "a"]
    source = source_of(keys)
    keyer = Keyer(source, "id")
    report = scan(source, keyer, Selection())
    assert report.total == 6
    assert report.duplicate_hashes == {repeat_hash("a"), repeat_hash("b")}

    error = duplicate_key_error(source, keyer, Selection(), report.duplicate_hashes)
    assert error is not None
    assert error.message == (
        "3 duplicate key(s): 'a' at rows 0 and 2; 'b' at rows 1 and 4; 'a' at rows 0 and 5"
    )
    assert error.column == "id"
    assert error.file == "<iterable>"
    assert error.hint is not None
    assert "--duplicates first" in error.hint


def test_duplicate_key_error_shows_five_and_counts_the_rest() -> None:
    keys = [f"k{i}" for i in range(8)] * 2
    source = source_of(keys)
    keyer = Keyer(source, "id")
    report = scan(source, keyer, Selection())
    error = duplicate_key_error(source, keyer, Selection(), report.duplicate_hashes)
    assert error is not None
    assert error.message.startswith("8 duplicate key(s): 'k0' at rows 0 and 8; ")
    assert "'k4' at rows 4 and 12" in error.message
    assert "'k5'" not in error.message
    assert error.message.endswith(" and 3 more")


def test_duplicates_outside_the_selection_do_not_count() -> None:
    source = source_of(["a", "b", "a"])
    keyer = Keyer(source, "id")
    assert scan(source, keyer, Selection(rows=(0, 2))).duplicate_hashes == frozenset()
    assert scan(source, keyer, Selection(limit=2)).duplicate_hashes == frozenset()


def test_hashes_that_only_collide_are_not_duplicates() -> None:
    source = source_of(["a", "b", "c"])
    keyer = Keyer(source, "id")
    suspects = frozenset({repeat_hash("a"), repeat_hash("c")})
    assert duplicate_key_error(source, keyer, Selection(), suspects) is None


def test_first_occurrence_keeps_only_the_first_row_of_each_key() -> None:
    keys = ["a", "b", "a", "c", "b", "a", "d"]
    source = source_of(keys)
    keyer = Keyer(source, "id")
    first = FirstOccurrence(scan(source, keyer, Selection()).duplicate_hashes)
    kept = [item for item in selected(source, Selection()) if first.admits(item)]
    assert [(item.seq, item.key) for item in kept] == [(0, "a"), (1, "b"), (3, "c"), (6, "d")]

    without_suspects = FirstOccurrence(frozenset())
    assert all(without_suspects.admits(item) for item in selected(source, Selection()))


# -- encode_json ---------------------------------------------------------------------------


def test_encode_json_is_canonical() -> None:
    one = {"b": 1, "a": {"d": [1, {"y": 2, "x": 1}], "c": "é"}}
    other = {"a": {"c": "é", "d": [1, {"x": 1, "y": 2}]}, "b": 1}
    assert encode_json(one) == encode_json(other) == '{"a":{"c":"é","d":[1,{"x":1,"y":2}]},"b":1}'


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=8))
def test_encode_json_ignores_key_order(row: dict[str, Any]) -> None:
    assert encode_json(dict(reversed(row.items()))) == encode_json(row)
    assert json.loads(encode_json(row)) == row


# Any text (lone surrogates too: a latin-1 or surrogateescape read can hold them), names
# with "%" and JSON's own specials, and values of other types that leave the fast path.
_ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=6) | st.sampled_from(
    ['"', "\\", "%s", "%", "\x00", "\ud800", "é", "\u2028"]
)
_VALUES = _ANY_TEXT | st.integers() | st.none() | st.booleans() | st.floats(allow_nan=False)


@given(
    st.lists(st.dictionaries(_ANY_TEXT, _VALUES, max_size=5), max_size=6),
    st.lists(_ANY_TEXT, min_size=1, max_size=4),
)
def test_encode_items_makes_the_json_and_fingerprint_of_encode_json(
    rows: list[dict[str, Any]], header: list[str]
) -> None:
    # Rows of one header of text values (a CSV) take the fast path; mixed ones must not
    # change what is stored nor the fingerprint (a changed one would redo finished rows).
    csv_like = [dict.fromkeys(header, text) for text in ["a", "%s", '"q"', "\ud800"]]
    items = [Item(seq, None, str(seq), row) for seq, row in enumerate(csv_like + rows)]
    encode_items(items, "v1")
    for item in items:
        assert item.input_json == encode_json(item.fields)
        assert item.fingerprint == fingerprint("v1", item.input_json)


@given(
    st.lists(_ANY_TEXT, min_size=1, max_size=4, unique=True),
    st.lists(_ANY_TEXT, min_size=1, max_size=8),
    st.integers(0, 8),
    _VALUES,
)
def test_a_chunk_filled_column_by_column_is_what_each_row_alone_makes(
    header: list[str], texts: list[str], at: int, odd: Any
) -> None:
    # A chunk whose rows all share one header of text values is filled a column at a time;
    # one odd value or one renamed column sends the chunk back to the row-by-row path.
    rows = [dict.fromkeys(header, text) for text in texts]
    renamed = {f"{name}!": value for name, value in rows[0].items()}
    chunks = [rows, [*rows[:at], {**rows[0], header[0]: odd}, *rows[at:]], [*rows, renamed]]
    for chunk in chunks:
        items = [Item(seq, None, str(seq), row) for seq, row in enumerate(chunk)]
        encode_items(items, "v1")
        for item in items:
            assert item.input_json == encode_json(item.fields)
            assert item.fingerprint == fingerprint("v1", item.input_json)


def test_encode_items_names_the_row_of_a_value_that_cannot_be_stored() -> None:
    items = [Item(0, 2, "a", {"x": "1"}), Item(1, 3, "b", {"x": object()})]
    with pytest.raises(SourceFormatError, match="cannot be stored") as raised:
        encode_items(items, "v1")
    assert raised.value.row == 1


def test_encode_json_handles_datetime_decimal_bytes_and_numpy() -> None:
    row = {
        "when": dt.datetime(2024, 1, 2, 3, 4, 5, 600, tzinfo=dt.UTC),
        "naive": dt.datetime(2024, 1, 2, 3, 4, 5),
        "day": dt.date(2024, 2, 29),
        "time": dt.time(23, 59, 1),
        "price": decimal.Decimal("1.10"),
        "blob": b"\x00\xffrow",
        "n": np.int64(7),
        "x": np.float32(0.5),
        "v": np.array([1, 2]),
        "one": np.array(["z"]),
    }
    assert json.loads(encode_json(row)) == {
        "when": "2024-01-02T03:04:05.000600+00:00",
        "naive": "2024-01-02T03:04:05",
        "day": "2024-02-29",
        "time": "23:59:01",
        "price": "1.10",
        "blob": "AP9yb3c=",
        "n": 7,
        "x": 0.5,
        "v": [1, 2],
        "one": ["z"],  # an array of one is still a list, not a scalar
    }


def test_encode_json_refuses_unknown_types() -> None:
    with pytest.raises(TypeError, match="set is not JSON serialisable"):
        encode_json({"s": {1, 2}})


def test_a_folder_is_keyed_by_its_relative_paths_without_key(tmp_path: Path) -> None:
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "b.txt").write_text("bee")
    (tmp_path / "docs" / "sub" / "a.txt").write_text("ay")
    keyer = Keyer(open_source(tmp_path / "docs"), None)
    keys = [keyer.item(row).key for chunk in keyer.source.chunks() for row in chunk]
    assert sorted(keys) == ["b.txt", "sub/a.txt"]


# -- vectors in stored outputs --------------------------------------------------------------

_floats = st.floats(width=32, allow_nan=False)
_vectors = st.lists(_floats, min_size=0, max_size=40).map(lambda v: np.array(v, dtype="<f4"))


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=5),
        st.one_of(_vectors, st.integers(), st.text(max_size=5), st.lists(_vectors, max_size=3)),
        max_size=4,
    )
)
def test_vectors_come_back_from_their_raw_bytes_as_the_same_floats(value: dict[str, Any]) -> None:
    text, raw = encode_output_parts(value)
    decoded = decode_output(text, raw)
    assert decoded.keys() == value.keys()
    for name, field in value.items():
        fields = field if isinstance(field, list) else [field]
        back = decoded[name] if isinstance(field, list) else [decoded[name]]
        for given_value, read in zip(fields, back, strict=True):
            if isinstance(given_value, np.ndarray):
                assert read.dtype == np.dtype("<f4")
                assert read.tobytes() == given_value.tobytes()  # bit for bit
            else:
                assert read == given_value


def test_raw_vectors_are_the_little_endian_float32_bytes_end_to_end() -> None:
    first = np.array([1.5, -2.0], dtype=np.float64)  # stored as float32, like any vector
    second = np.array([0.25], dtype=">f4")  # big-endian in memory: stored little-endian
    text, raw = encode_output_parts({"a": first, "b": {"c": second}, "n": 3})
    assert text == '{"a":{"$vector":[0,2]},"b":{"c":{"$vector":[2,1]}},"n":3}'
    assert raw == np.array([1.5, -2.0, 0.25], dtype="<f4").tobytes()
    assert encode_output_parts({"n": 3}) == ('{"n":3}', None)  # no vector, no bytes


def test_base64_vectors_of_older_registries_still_decode() -> None:
    vector = np.array([0.5, 1.0, -3.25], dtype="<f4")
    old = encode_output({"embedding": vector})  # the registry's format before 0004
    assert '"$vector":"' in old
    assert decode_output(old)["embedding"].tobytes() == vector.tobytes()


def test_a_vector_place_without_its_bytes_is_a_state_error() -> None:
    text, raw = encode_output_parts({"e": np.ones(4)})
    assert raw is not None
    with pytest.raises(StateError, match="damaged"):
        decode_output(text, raw[:8])  # a row cut short
    with pytest.raises(StateError, match="damaged"):
        decode_output(text, None)
