"""Tests for rowpilot.sources: every input format, its errors, and round trips."""

from __future__ import annotations

import csv
import gc
import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import rowpilot
from rowpilot.engine.items import Keyer
from rowpilot.errors import (
    ConfigError,
    EmptySourceError,
    SourceEncodingError,
    SourceError,
    SourceFormatError,
    SourceNotFoundError,
)
from rowpilot.sources import FolderSource, Row, Source, open_source

# ---------------------------------------------------------------------------- helpers


def write(path: Path, text: str, encoding: str = "utf-8") -> str:
    path.write_bytes(text.encode(encoding))
    return str(path)


def all_rows(source: Source, size: int = 1024) -> list[Row]:
    return [row for chunk in source.chunks(size) for row in chunk]


def fields(source: Source) -> list[dict[str, Any]]:
    return [row[2] for row in all_rows(source)]


def lines(source: Source) -> list[int | None]:
    return [row[1] for row in all_rows(source)]


def first_error(source: Source, size: int = 1024) -> Exception:
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the caller checks the class
        all_rows(source, size)
    return caught.value


# ------------------------------------------------------------------------- CSV basics


def test_csv_rows_lines_and_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", "id,name\n1,ann\n2,bob\n")
    source = open_source(path)
    assert source.name == path
    assert source.reiterable is True
    assert source.columns() == ["id", "name"]
    assert all_rows(source) == [
        (0, 2, {"id": "1", "name": "ann"}),
        (1, 3, {"id": "2", "name": "bob"}),
    ]


def test_csv_values_stay_exact_strings(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", 'a,b,c\n  x , 007,""\n,,\n')
    assert fields(open_source(path)) == [
        {"a": "  x ", "b": " 007", "c": ""},
        {"a": "", "b": "", "c": ""},
    ]


def test_csv_accepts_path_objects_and_keeps_the_given_name(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    write(path, "a\n1\n")
    source = open_source(path)
    assert source.name == os.fspath(path)
    assert fields(source) == [{"a": "1"}]


def test_csv_utf8_bom_is_stripped(tmp_path: Path) -> None:
    path = write(tmp_path / "bom.csv", "id,name\n1,é\n", encoding="utf-8-sig")
    source = open_source(path)
    assert source.columns() == ["id", "name"]
    assert fields(source) == [{"id": "1", "name": "é"}]


def test_csv_utf8_bom_is_stripped_even_with_plain_utf8(tmp_path: Path) -> None:
    path = write(tmp_path / "bom.csv", "id\n1\n", encoding="utf-8-sig")
    assert open_source(path, encoding="utf-8").columns() == ["id"]


def test_csv_utf16_with_bom(tmp_path: Path) -> None:
    path = write(tmp_path / "wide.csv", "id,text\n1,ü€\n2,日本\n", encoding="utf-16")
    source = open_source(path, encoding="utf-16")
    assert source.columns() == ["id", "text"]
    assert all_rows(source) == [
        (0, 2, {"id": "1", "text": "ü€"}),
        (1, 3, {"id": "2", "text": "日本"}),
    ]


def test_csv_latin1_encoding(tmp_path: Path) -> None:
    path = write(tmp_path / "old.csv", "name;city\nJosé;Zürich\n", encoding="latin-1")
    assert fields(open_source(path, encoding="latin-1")) == [{"name": "José", "city": "Zürich"}]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a;b\n1;2,5\n3;4,5\n", [{"a": "1", "b": "2,5"}, {"a": "3", "b": "4,5"}]),
        ("a\tb\n1\tx, y\n", [{"a": "1", "b": "x, y"}]),
        ("a|b\n1|x;y\n", [{"a": "1", "b": "x;y"}]),
        ('a,b\n1,"x;y"\n2,"p;q"\n', [{"a": "1", "b": "x;y"}, {"a": "2", "b": "p;q"}]),
        ("a,b\n1,x;y\n2,p;q\n", [{"a": "1", "b": "x;y"}, {"a": "2", "b": "p;q"}]),
        ("a,b\nit's,'q'\n", [{"a": "it's", "b": "'q'"}]),
    ],
    ids=["semicolon-decimal-comma", "tab", "pipe", "comma-quoted", "comma-bare-semicolons", "apos"],
)
def test_csv_dialect_is_sniffed(tmp_path: Path, text: str, expected: list[dict[str, str]]) -> None:
    assert fields(open_source(write(tmp_path / "data.csv", text))) == expected


def test_csv_one_column(tmp_path: Path) -> None:
    path = write(tmp_path / "one.csv", 'word\nhello\n""\n  \n"x, y"\n')
    source = open_source(path)
    assert source.columns() == ["word"]
    assert fields(source) == [{"word": "hello"}, {"word": ""}, {"word": "  "}, {"word": "x, y"}]


def test_csv_multiline_quoted_fields_keep_later_line_numbers(tmp_path: Path) -> None:
    text = 'id,text\n1,"first\nsecond\nthird"\n2,plain\n3,"a\r\nb"\n4,end\n'
    rows = all_rows(open_source(write(tmp_path / "multi.csv", text)))
    assert [(index, line) for index, line, _ in rows] == [(0, 2), (1, 5), (2, 6), (3, 8)]
    assert rows[0][2]["text"] == "first\nsecond\nthird"
    assert rows[2][2]["text"] == "a\r\nb"


def test_csv_ragged_row_after_multiline_field_names_its_line(tmp_path: Path) -> None:
    text = 'id,text\n1,"one\ntwo"\n2,ok\n3,too,many\n'
    error = first_error(open_source(write(tmp_path / "ragged.csv", text)))
    assert isinstance(error, SourceFormatError)
    assert (error.line, error.row) == (5, 2)
    assert "ragged.csv line 5" in str(error)
    assert "data row 2 has 3 fields but the header has 2" in str(error)
    assert error.hint


def test_csv_blank_lines_are_skipped(tmp_path: Path) -> None:
    text = "\n\na,b\n\n1,2\n   \n\r\n3,4\n\n"
    source = open_source(write(tmp_path / "blank.csv", text))
    assert source.columns() == ["a", "b"]
    assert [(row[1], row[2]) for row in all_rows(source)] == [
        (5, {"a": "1", "b": "2"}),
        (8, {"a": "3", "b": "4"}),
    ]


def test_csv_crlf_line_numbers(tmp_path: Path) -> None:
    path = write(tmp_path / "crlf.csv", "a,b\r\n1,2\r\n\r\n3,4\r\n")
    assert lines(open_source(path)) == [2, 4]


@pytest.mark.parametrize("suffix", [".txt", ".CSV"])
def test_csv_suffixes(tmp_path: Path, suffix: str) -> None:
    path = write(tmp_path / f"data{suffix}", "a,b\n1,2\n")
    assert fields(open_source(path)) == [{"a": "1", "b": "2"}]


def test_tsv_suffix_and_format_force_tabs(tmp_path: Path) -> None:
    text = "a\tb\n1,2\t3\n"
    tsv = write(tmp_path / "data.tsv", text)
    dat = write(tmp_path / "data.dat", text)
    assert fields(open_source(tsv)) == [{"a": "1,2", "b": "3"}]
    assert fields(open_source(dat, format="tsv")) == [{"a": "1,2", "b": "3"}]


def test_format_overrides_the_suffix(tmp_path: Path) -> None:
    path = write(tmp_path / "data.json", '{"a": 1}\n')
    assert fields(open_source(path, format="JSONL")) == [{"a": 1}]
    csv_path = write(tmp_path / "export", "a\n1\n")
    assert fields(open_source(csv_path, format="csv")) == [{"a": "1"}]


# ------------------------------------------------------------------- chunks and passes


def test_chunks_have_a_fixed_size(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", "n\n" + "".join(f"{i}\n" for i in range(10)))
    chunks = list(open_source(path).chunks(3))
    assert [len(chunk) for chunk in chunks] == [3, 3, 3, 1]
    assert [row[0] for chunk in chunks for row in chunk] == list(range(10))


def test_chunk_size_must_be_positive(tmp_path: Path) -> None:
    source = open_source(write(tmp_path / "data.csv", "a\n1\n"))
    with pytest.raises(ConfigError, match="at least 1"):
        source.chunks(0)


def test_files_can_be_read_again_and_rows_are_fresh_dicts(tmp_path: Path) -> None:
    source = open_source(write(tmp_path / "data.csv", "a\n1\n2\n"))
    first = all_rows(source)
    first[0][2]["a"] = "changed"
    assert all_rows(source) == [(0, 2, {"a": "1"}), (1, 3, {"a": "2"})]


def test_stopping_early_closes_the_file(tmp_path: Path) -> None:
    source = open_source(write(tmp_path / "data.csv", "a\n1\n2\n3\n"))
    chunks = source.chunks(1)
    assert next(chunks) == [(0, 2, {"a": "1"})]
    del chunks
    gc.collect()  # an unclosed file would raise ResourceWarning, an error under pytest here


def test_errors_are_raised_lazily_from_the_chunk_where_they_occur(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", "a,b\n1,2\n3,4\n5\n")
    chunks = open_source(path).chunks(2)
    assert len(next(chunks)) == 2
    with pytest.raises(SourceFormatError, match="line 4"):
        next(chunks)


# -------------------------------------------------------------------------- CSV errors


def test_csv_undecodable_bytes_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(b"id,name\n1,ok\n2,caf\xe9\n3,ok\n")
    source = open_source(str(path))
    error = first_error(source)
    assert isinstance(error, SourceEncodingError)
    assert error.line == 3
    assert f"{path} line 3" in str(error)
    assert "--encoding latin-1" in str(error)


def test_csv_undecodable_bytes_far_into_the_file(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    good = "".join(f"{i},value {i}\n" for i in range(20_000)).encode()
    path.write_bytes(b"id,text\n" + good + b"x,\xff\n")
    error = first_error(open_source(str(path)))
    assert isinstance(error, SourceEncodingError)
    assert error.line == 20_002


def test_csv_undecodable_header_raises_on_open(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(b"id,n\xe4me\n1,2\n")
    with pytest.raises(SourceEncodingError) as caught:
        open_source(str(path))
    assert f"{path} line 1" in str(caught.value)


def test_csv_duplicate_column_name(tmp_path: Path) -> None:
    path = write(tmp_path / "dup.csv", "id,name,id\n1,2,3\n")
    with pytest.raises(SourceFormatError) as caught:
        open_source(path)
    assert caught.value.column == "id"
    assert "dup.csv line 1, column 'id'" in str(caught.value)


def test_csv_empty_column_name(tmp_path: Path) -> None:
    path = write(tmp_path / "trailing.csv", "\nid,name,\n1,2,3\n")
    with pytest.raises(SourceFormatError) as caught:
        open_source(path)
    assert "trailing.csv line 2" in str(caught.value)
    assert "column 3 of the header has no name" in str(caught.value)


@pytest.mark.parametrize("text", ["", "\n\n  \n"], ids=["empty", "blank-lines"])
def test_csv_without_header_is_empty(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "empty.csv", text)
    with pytest.raises(EmptySourceError, match=r"empty\.csv: is empty"):
        open_source(path)


def test_csv_header_without_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "header.csv", "id,name\n\n")
    with pytest.raises(EmptySourceError, match=r"header\.csv: has a header but no rows"):
        open_source(path)


def test_csv_header_then_only_blank_lines_past_the_head(tmp_path: Path) -> None:
    path = write(tmp_path / "long.csv", "id,name\n" + "\n" * 70_000)
    source = open_source(path)
    error = first_error(source)
    assert isinstance(error, EmptySourceError)
    assert "long.csv: has a header but no rows" in str(error)


def test_csv_field_over_the_csv_module_limit(tmp_path: Path) -> None:
    path = write(tmp_path / "huge.csv", "a,b\n1,2\n3," + "x" * (csv.field_size_limit() + 1) + "\n")
    error = first_error(open_source(path))
    assert isinstance(error, SourceFormatError)
    assert "huge.csv line 3" in str(error)


# ------------------------------------------------------------------- opening errors


def test_missing_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.csv")
    with pytest.raises(SourceNotFoundError) as caught:
        open_source(missing)
    assert missing in str(caught.value)
    assert "working directory" in str(caught.value)


def test_empty_directory_is_an_empty_folder_source(tmp_path: Path) -> None:
    # A directory is a folder source (one row per file); with no file it is empty.
    with pytest.raises(EmptySourceError) as caught:
        open_source(tmp_path)
    assert str(tmp_path) in str(caught.value)
    assert "no files to read" in str(caught.value)


@pytest.mark.parametrize("name", ["data.ods", "data"])
def test_unknown_suffix_points_to_the_format_flag(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, "a\n1\n")
    with pytest.raises(ConfigError) as caught:
        open_source(path)
    assert name in str(caught.value)
    assert "--format" in str(caught.value)


def test_unknown_format_value(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", "a\n1\n")
    with pytest.raises(ConfigError, match="unknown format 'ods'"):
        open_source(path, format="ods")


@pytest.mark.parametrize("encoding", ["no-such-codec", "base64"])
def test_unknown_encoding(tmp_path: Path, encoding: str) -> None:
    path = write(tmp_path / "data.csv", "a\n1\n")
    with pytest.raises(ConfigError, match=f"unknown encoding '{encoding}'"):
        open_source(path, encoding=encoding)


@pytest.mark.parametrize("bad", [{"a": 1}, b"a,b", 42])
def test_sources_that_are_not_rows(bad: Any) -> None:
    with pytest.raises(ConfigError, match="cannot read rows"):
        open_source(bad)


# ------------------------------------------------------------------------------ JSONL


def test_jsonl_rows_lines_and_nested_values(tmp_path: Path) -> None:
    text = '{"id": 1, "tags": ["a"], "meta": {"x": null}}\n\n  \r\n{"id": 2}\r\n'
    source = open_source(write(tmp_path / "data.jsonl", text))
    assert source.columns() is None
    assert source.reiterable is True
    assert all_rows(source) == [
        (0, 1, {"id": 1, "tags": ["a"], "meta": {"x": None}}),
        (1, 4, {"id": 2}),
    ]


def test_jsonl_bare_carriage_return_does_not_split_a_line(tmp_path: Path) -> None:
    path = write(tmp_path / "data.ndjson", '{"a":\r1}\n{"a": "\u2028"}\n')
    assert fields(open_source(path)) == [{"a": 1}, {"a": "\u2028"}]


def test_jsonl_bom_and_latin1(tmp_path: Path) -> None:
    bom = write(tmp_path / "bom.jsonl", '{"a": "é"}\n', encoding="utf-8-sig")
    old = write(tmp_path / "old.jsonl", '{"a": "é"}\n', encoding="latin-1")
    assert fields(open_source(bom)) == [{"a": "é"}]
    assert fields(open_source(old, encoding="latin-1")) == [{"a": "é"}]


def test_jsonl_invalid_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.jsonl", '{"a": 1}\n\n{"a": }\n')
    error = first_error(open_source(path))
    assert isinstance(error, SourceFormatError)
    assert (error.line, error.row) == (3, 1)
    assert "bad.jsonl line 3: not valid JSON: Expecting value" in str(error)


@pytest.mark.parametrize(("line", "kind"), [("[1, 2]", "an array"), ('"x"', "a string")])
def test_jsonl_line_that_is_not_an_object(tmp_path: Path, line: str, kind: str) -> None:
    path = write(tmp_path / "list.jsonl", f'{{"a": 1}}\n{line}\n')
    error = first_error(open_source(path))
    assert isinstance(error, SourceFormatError)
    assert f"list.jsonl line 2: the line is {kind}, not a JSON object" in str(error)


def test_jsonl_undecodable_bytes(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "\xe9"}\n')
    error = first_error(open_source(str(path)))
    assert isinstance(error, SourceEncodingError)
    assert f"{path} line 2" in str(error)


def test_jsonl_empty_file_raises_on_open(tmp_path: Path) -> None:
    with pytest.raises(EmptySourceError, match=r"empty\.jsonl: is empty"):
        open_source(write(tmp_path / "empty.jsonl", ""))


def test_jsonl_long_run_of_blank_lines_is_empty_on_reading(tmp_path: Path) -> None:
    source = open_source(write(tmp_path / "blank.jsonl", "\n" * 70_000))
    assert isinstance(first_error(source), EmptySourceError)


# ---------------------------------------------------------------------------- Parquet


def test_parquet_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    table = pa.table({"id": [1, 2, 3], "score": [0.5, None, 2.0], "name": ["a", "b", None]})
    pq.write_table(table, path, row_group_size=2)
    source = open_source(str(path))
    assert source.columns() == ["id", "score", "name"]
    assert [len(chunk) for chunk in source.chunks(2)] == [2, 1]
    assert all_rows(source) == [
        (0, None, {"id": 1, "score": 0.5, "name": "a"}),
        (1, None, {"id": 2, "score": None, "name": "b"}),
        (2, None, {"id": 3, "score": 2.0, "name": None}),
    ]


def test_parquet_pq_suffix(tmp_path: Path) -> None:
    path = tmp_path / "data.pq"
    pq.write_table(pa.table({"a": ["x"]}), path)
    assert fields(open_source(str(path))) == [{"a": "x"}]


def test_parquet_corrupt_file(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.parquet", "this is not parquet at all")
    with pytest.raises(SourceFormatError, match=r"bad\.parquet: cannot be read as Parquet"):
        open_source(path)


def test_parquet_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.parquet"
    pq.write_table(pa.table({"a": list(range(1000))}), path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(SourceFormatError, match=r"cut\.parquet"):
        open_source(str(path))


def test_parquet_without_rows(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"a": pa.array([], pa.int64())}), path)
    with pytest.raises(EmptySourceError, match=r"empty\.parquet: has no rows"):
        open_source(str(path))


# -------------------------------------------------------------------------- DataFrame


def test_dataframe_values_become_plain_python() -> None:
    frame = pd.DataFrame(
        {
            "n": np.array([1, 2], dtype=np.int64),
            "when": pd.to_datetime(["2024-01-01", "NaT"]),
            7: [np.float32(1.5), None],
        },
        index=[10, 20],
    )
    source = open_source(frame)
    assert source.name == "<DataFrame>"
    assert source.reiterable is True
    assert source.columns() == ["n", "when", "7"]
    rows = all_rows(source)
    assert [(index, line) for index, line, _ in rows] == [(0, None), (1, None)]
    first, second = rows[0][2], rows[1][2]
    assert type(first["n"]) is int
    assert type(first["7"]) is float
    assert first["when"] == pd.Timestamp("2024-01-01")
    assert second["when"] is pd.NaT
    assert all(type(key) is str for key in first)


def test_dataframe_object_column_of_numpy_scalars() -> None:
    frame = pd.DataFrame({"o": pd.Series([np.int64(3), "x"], dtype=object)})
    assert [type(row["o"]) for row in fields(open_source(frame))] == [int, str]


def test_dataframe_chunks_and_passes() -> None:
    source = open_source(pd.DataFrame({"a": range(5)}))
    assert [len(chunk) for chunk in source.chunks(2)] == [2, 2, 1]
    assert fields(source) == fields(source) == [{"a": i} for i in range(5)]


def test_dataframe_without_rows() -> None:
    with pytest.raises(EmptySourceError, match="<DataFrame>: has no rows"):
        open_source(pd.DataFrame({"a": []}))


def test_dataframe_columns_that_collide_as_strings() -> None:
    frame = pd.DataFrame([[1, 2]], columns=pd.Index([1, "1"], dtype=object))
    with pytest.raises(SourceFormatError, match="<DataFrame>, column '1'"):
        open_source(frame)


# -------------------------------------------------------------------------- iterables


def test_list_is_reiterable_and_rows_are_fresh_dicts() -> None:
    items: list[dict[Any, Any]] = [{"a": 1}, {2: "b"}]
    source = open_source(items)
    assert (source.name, source.reiterable, source.columns()) == ("<iterable>", True, None)
    rows = all_rows(source)
    assert rows == [(0, None, {"a": 1}), (1, None, {"2": "b"})]
    rows[0][2]["a"] = 99
    assert items[0] == {"a": 1}
    assert all_rows(source) == [(0, None, {"a": 1}), (1, None, {"2": "b"})]


def test_tuple_is_reiterable() -> None:
    source = open_source(({"a": 1},))
    assert source.reiterable is True
    assert fields(source) == fields(source) == [{"a": 1}]


def test_generator_is_read_once() -> None:
    def generate() -> Iterator[dict[str, int]]:
        yield from ({"i": i} for i in range(3))

    source = open_source(generate())
    assert source.reiterable is False
    assert [len(chunk) for chunk in source.chunks(2)] == [2, 1]
    with pytest.raises(ConfigError, match="a one-shot iterator can be read once"):
        source.chunks()


def test_item_that_is_not_a_mapping() -> None:
    items: list[Any] = [{"a": 1}, ["a", 1]]
    error = first_error(open_source(items))
    assert isinstance(error, SourceFormatError)
    assert error.row == 1
    assert "<iterable> row 1: item is a list, not a mapping" in str(error)


def test_empty_list_and_empty_generator() -> None:
    with pytest.raises(EmptySourceError, match="<iterable>: has no rows"):
        open_source([])
    source = open_source(iter([]))
    assert isinstance(first_error(source), EmptySourceError)


# ----------------------------------------------------------------- round-trip properties

CELL = st.text(
    alphabet=st.one_of(
        st.sampled_from(list(",;|\t\"'\n\r \\\ufeff\u2028")),
        st.characters(codec="utf-8"),
    ),
    max_size=12,
)
DELIMITER = st.sampled_from([",", ";", "\t", "|"])


@st.composite
def tables(draw: st.DrawFn) -> list[list[str]]:
    width = draw(st.integers(1, 4))
    row = st.lists(CELL, min_size=width, max_size=width)
    return draw(st.lists(row, min_size=1, max_size=8))


ROUND_TRIP = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@ROUND_TRIP
@given(table=tables(), delimiter=DELIMITER)
def test_csv_round_trip(tmp_path: Path, table: list[list[str]], delimiter: str) -> None:
    header = [f"c{i}" for i in range(len(table[0]))]
    buffer = io.StringIO(newline="")
    csv.writer(buffer, delimiter=delimiter).writerows([header, *table])
    path = write(tmp_path / "table.csv", buffer.getvalue())
    # Trusted: a cell whose lines read as rows is refused by default (rule 3a, tested with
    # the other quote rules in test_sources_csv_quotes.py), and written files are right.
    source = open_source(path, trust_quotes=True)
    assert source.columns() == header
    assert [list(row.values()) for row in fields(source)] == table


@ROUND_TRIP
@given(
    records=st.lists(st.dictionaries(CELL, CELL, min_size=1, max_size=4), min_size=1, max_size=8),
    ascii_only=st.booleans(),
)
def test_jsonl_round_trip(tmp_path: Path, records: list[dict[str, str]], ascii_only: bool) -> None:
    text = "".join(json.dumps(record, ensure_ascii=ascii_only) + "\n" for record in records)
    path = write(tmp_path / "table.jsonl", text)
    assert fields(open_source(path)) == records


# ----------------------------------------------------------------------------- folder


def tree(root: Path, files: Mapping[str, str | bytes]) -> Path:
    """Write ``files`` ('/'-separated relative path -> text or bytes) under ``root``."""
    for relative, content in files.items():
        path = root.joinpath(*relative.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode("utf-8") if isinstance(content, str) else content
        path.write_bytes(data)
    return root


def test_folder_rows_columns_and_recursive_sorted_order(tmp_path: Path) -> None:
    root = tree(
        tmp_path / "questions",
        {"b.json": '{"q": 2}\n', "a.txt": "first", "sub/c.md": "é\r\nx", "B.txt": ""},
    )
    source = open_source(root)
    assert source.name == str(root)
    assert source.reiterable is True
    assert source.columns() == ["path", "name", "suffix", "size", "text"]
    assert all_rows(source) == [
        (0, None, {"path": "B.txt", "name": "B.txt", "suffix": ".txt", "size": 0, "text": ""}),
        (1, None, {"path": "a.txt", "name": "a.txt", "suffix": ".txt", "size": 5, "text": "first"}),
        (
            2,
            None,
            {
                "path": "b.json",
                "name": "b.json",
                "suffix": ".json",
                "size": 9,
                "text": '{"q": 2}\n',
            },
        ),
        (
            3,
            None,
            {"path": "sub/c.md", "name": "c.md", "suffix": ".md", "size": 5, "text": "é\r\nx"},
        ),
    ]
    assert all_rows(source) == all_rows(source)  # a second pass reads the same rows


def test_folder_order_is_directory_by_directory(tmp_path: Path) -> None:
    # "a/z" sorts before "a-b" although "-" < "/": components are compared, not strings.
    root = tree(tmp_path / "in", {"a-b": "1", "a/z": "2", "a/b/c": "3", "0": "4", "ab": "5"})
    assert [row["path"] for row in fields(open_source(root))] == ["0", "a/b/c", "a/z", "a-b", "ab"]


def test_folder_skips_hidden_files_and_folders(tmp_path: Path) -> None:
    root = tree(
        tmp_path / "in",
        {"keep.txt": "k", ".env": "SECRET=1", ".rowpilot/registry.sqlite": b"\x00\xff", "s/.x": ""},
    )
    assert [row["path"] for row in fields(open_source(root))] == ["keep.txt"]


def test_folder_of_only_hidden_files_is_empty(tmp_path: Path) -> None:
    root = tree(tmp_path / "in", {".a": "x", ".git/config": "y", "sub/.b": "z"})
    with pytest.raises(EmptySourceError, match="no files to read"):
        open_source(root)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*.json", ["a.json", "sub/c.json"]),
        ("json", ["a.json", "d.JSON", "sub/c.json"]),
        (".JSON", ["a.json", "d.JSON", "sub/c.json"]),
        ("sub/*", ["sub/c.json"]),
        ("[ab].*", ["a.json", "b.txt"]),
        ("?.txt", ["b.txt"]),
    ],
)
def test_folder_format_selects_files(tmp_path: Path, pattern: str, expected: list[str]) -> None:
    root = tree(tmp_path / "in", {"a.json": "1", "b.txt": "2", "sub/c.json": "3", "d.JSON": "4"})
    source = open_source(root, format=pattern)
    assert [row["path"] for row in fields(source)] == expected


def test_folder_format_matching_nothing_names_the_pattern(tmp_path: Path) -> None:
    root = tree(tmp_path / "in", {"a.txt": "x"})
    with pytest.raises(EmptySourceError) as caught:
        open_source(root, format="*.json")
    assert "no file matching '*.json'" in str(caught.value)
    assert "--format" in str(caught.value)
    assert [row["path"] for row in fields(open_source(root, format="*.txt"))] == ["a.txt"]


def test_folder_undecodable_file_names_the_file_and_line(tmp_path: Path) -> None:
    root = tree(tmp_path / "in", {"a.txt": "fine", "b.txt": b"ok\nstill ok\nbad \xff here\n"})
    source = open_source(root)  # opening lists, it does not read
    chunks = source.chunks(1)
    assert next(chunks)[0][2]["text"] == "fine"  # errors come from the chunk of the file
    with pytest.raises(SourceEncodingError) as caught:
        next(chunks)
    error = caught.value
    assert error.file == str(root / "b.txt")
    assert error.line == 3
    assert error.row == 1
    assert "--encoding" in str(error)
    assert "--format" in str(error)
    # The fix the hint names: the files' real encoding.
    assert fields(open_source(root, encoding="latin-1"))[1]["text"] == "ok\nstill ok\nbad ÿ here\n"


def test_folder_binary_file_that_decodes_is_still_refused(tmp_path: Path) -> None:
    root = tree(tmp_path / "in", {"img.bin": b"GIF\n\x00\x01\x02", "q.txt": "x"})
    error = first_error(open_source(root))
    assert isinstance(error, SourceEncodingError)
    assert error.file == str(root / "img.bin")
    assert error.line == 2
    assert "NUL" in str(error)
    assert [row["path"] for row in fields(open_source(root, format="*.txt"))] == ["q.txt"]


def test_folder_encodings_and_bom(tmp_path: Path) -> None:
    root = tree(tmp_path / "in", {"bom.txt": "\ufeffhi".encode(), "wide.txt": b""})
    assert fields(open_source(root))[0]["text"] == "hi"  # utf-8-sig, as for CSV
    (root / "bom.txt").unlink()
    (root / "wide.txt").write_bytes("ü€ 日本".encode("utf-16"))
    assert fields(open_source(root, encoding="utf-16"))[0]["text"] == "ü€ 日本"
    error = first_error(open_source(root))
    assert isinstance(error, SourceEncodingError)


def test_folder_symlinks(tmp_path: Path) -> None:
    outside = tree(tmp_path / "outside", {"o.txt": "out"})
    root = tree(tmp_path / "in", {"a.txt": "a"})
    (root / "link.txt").symlink_to(outside / "o.txt")
    (root / "loop").symlink_to(root, target_is_directory=True)  # not followed: no cycle
    (root / "dangling.txt").symlink_to(tmp_path / "missing.txt")  # not a file: skipped
    (root / "out-dir").symlink_to(outside, target_is_directory=True)  # a folder: not followed
    source = open_source(root, follow_symlinks=True)
    rows = fields(source)
    assert [(row["path"], row["text"], row["size"]) for row in rows] == [
        ("a.txt", "a", 1),
        ("link.txt", "out", 3),
    ]
    assert getattr(source, "notices")() == []  # noqa: B009 - not on the Source protocol


def test_folder_skips_symlinks_to_files_outside_and_names_them(tmp_path: Path) -> None:
    outside = tree(tmp_path / "outside", {"secret.txt": "s", "x": "x"})
    root = tree(tmp_path / "data", {"a.txt": "a", "b/keep.txt": "k"})
    (root / "a-link.txt").symlink_to(outside / "secret.txt")  # absolute
    (root / "b" / "c.txt").symlink_to(Path("..", "..", "outside", "x"))  # relative, deeper
    source = open_source(root)
    assert isinstance(source, FolderSource)
    assert [row["path"] for row in fields(source)] == ["a.txt", "b/keep.txt"]
    assert [row["path"] for row in fields(source)] == ["a.txt", "b/keep.txt"]
    expected = (
        f"skipped 2 symlinks that point outside {root}/: a-link.txt -> {outside / 'secret.txt'}, "
        "b/c.txt -> ../../outside/x (pass --follow-symlinks to read them)"
    )
    assert source.notices() == [expected]  # once, though the folder was walked twice
    # The fix the notice names: follow them.
    followed = fields(open_source(root, follow_symlinks=True))
    assert [row["path"] for row in followed] == ["a-link.txt", "a.txt", "b/c.txt", "b/keep.txt"]


def test_folder_reads_symlinks_that_stay_inside(tmp_path: Path) -> None:
    root = tree(tmp_path / "data", {"a.txt": "a", "sub/b.txt": "b"})
    (root / "sub" / "up.txt").symlink_to(Path("..", "a.txt"))
    (root / "roundabout.txt").symlink_to(Path("..", "data", "sub", "b.txt"))  # out and back in
    (root / "chain.txt").symlink_to(root / "roundabout.txt")
    (tmp_path / "via").symlink_to(root, target_is_directory=True)
    for folder in (root, tmp_path / "via"):  # the folder itself may be a symlink
        source = open_source(folder)
        assert [(row["path"], row["text"]) for row in fields(source)] == [
            ("a.txt", "a"),
            ("chain.txt", "b"),
            ("roundabout.txt", "b"),
            ("sub/b.txt", "b"),
            ("sub/up.txt", "a"),
        ]
        assert getattr(source, "notices")() == []  # noqa: B009 - not on the Source protocol


def test_folder_of_only_symlinks_outside_is_empty_and_says_why(tmp_path: Path) -> None:
    outside = tree(tmp_path / "outside", {"o.txt": "o"})
    root = tmp_path / "data"
    root.mkdir()
    (root / "link.txt").symlink_to(outside / "o.txt")
    with pytest.raises(EmptySourceError) as caught:
        open_source(root)
    assert "only files to read are symlinks that point outside it" in str(caught.value)
    assert "link.txt -> " in str(caught.value)
    assert "--follow-symlinks" in str(caught.value)
    assert fields(open_source(root, follow_symlinks=True))[0]["text"] == "o"


def test_folder_notice_names_at_most_ten_symlinks(tmp_path: Path) -> None:
    outside = tree(tmp_path / "outside", {"o.txt": "o"})
    root = tree(tmp_path / "data", {"a.txt": "a"})
    for number in range(12):
        (root / f"l{number:02d}.txt").symlink_to(outside / "o.txt")
    source = FolderSource(str(root), "utf-8")
    assert len(fields(source)) == 1
    [notice] = source.notices()
    assert notice.startswith("skipped 12 symlinks that point outside")
    assert "l09.txt" in notice
    assert "l10.txt" not in notice
    assert " and 2 more (pass --follow-symlinks to read them)" in notice


def test_folder_file_name_that_is_not_utf8(tmp_path: Path) -> None:
    root = tree(tmp_path / "in", {"a.txt": "a"})
    bad = os.path.join(os.fsencode(root), b"caf\xe9.txt")
    with open(bad, "wb") as handle:
        handle.write(b"x")
    error = first_error(open_source(root))
    assert isinstance(error, SourceFormatError)
    assert "not valid UTF-8" in str(error)
    assert "rename" in str(error)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_folder_unreadable_file_and_subfolder(tmp_path: Path) -> None:
    root = tree(tmp_path / "in", {"a.txt": "a", "locked/b.txt": "b"})
    (root / "locked").chmod(0)
    try:
        error = first_error(open_source(root))
        assert type(error) is SourceError
        assert error.file == str(root / "locked")
    finally:
        (root / "locked").chmod(0o755)
    (root / "a.txt").chmod(0)
    assert type(first_error(open_source(root))) is SourceError


def test_folder_is_streamed_file_by_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tree(tmp_path / "in", {f"f{i:03d}.txt": str(i) for i in range(50)})
    opened: list[str] = []
    real_open = open

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    source = open_source(root)
    assert opened == []  # opening lists the folder and stats; it reads no file
    first = next(source.chunks(4))
    assert [row[2]["text"] for row in first] == ["0", "1", "2", "3"]
    assert len(opened) == 4


def test_folder_through_the_engine_keys_selection_and_resume(tmp_path: Path) -> None:
    root = tree(tmp_path / "in", {f"{name}.txt": name for name in "abcdef"} | {"s/g.txt": "g"})

    def upper(row: dict[str, Any]) -> dict[str, Any]:
        return {"upper": row["text"].upper()}

    state = tmp_path / "state"
    first = rowpilot.run(upper, root, key="path", rows="1:3", state=state)
    assert sorted(item.key for item in first) == ["b.txt", "c.txt"]
    limited = rowpilot.run(upper, root, key="path", limit=5, state=state)
    assert limited.summary.done == 3
    assert limited.summary.skipped == 2
    shards = [rowpilot.run(upper, root, key="path", shard=(k, 2), state=state) for k in (1, 2)]
    assert sum(shard.summary.done + shard.summary.skipped for shard in shards) == 7
    assert sum(shard.summary.done for shard in shards) == 2  # f.txt and s/g.txt were left
    everything = rowpilot.run(upper, root, key="path", state=state, format="txt")
    table = everything.to_pandas().set_index("path")
    assert table.loc["s/g.txt", "upper"] == "G"
    assert table.loc["a.txt", "name"] == "a.txt"
    assert everything.summary.done == 0  # every file was done by the runs before


@pytest.mark.slow
def test_folder_from_the_cli(tmp_path: Path, cli: Any, tasks_file: Path) -> None:
    tree(tmp_path / "questions", {"q1.txt": "one", "deep/q2.txt": "two", "notes.md": "no"})
    done = cli("run", "questions/", "--task", "tasks.py:upper", "--key", "path",
               "--format", "*.txt", "-o", "out.jsonl", "--no-progress")  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(row["path"], row["upper"]) for row in rows] == [
        ("deep/q2.txt", "TWO"),
        ("q1.txt", "ONE"),
    ]
    (tmp_path / "empty").mkdir()
    empty = cli("run", "empty", "--task", "tasks.py:upper")
    assert empty.returncode == 2
    assert "empty: is a folder with no files to read" in empty.stderr


FILE_NAME = st.text(
    alphabet=st.one_of(
        st.sampled_from(list(" '\"\\%:;,*?[]{}#&=+~\n\t\r.-_äé日本\u2028\ufeff")),
        st.characters(codec="utf-8", exclude_characters="/\x00"),
    ),
    min_size=1,
    max_size=20,
).filter(lambda name: not name.startswith(".") and len(name.encode()) <= 200)


@ROUND_TRIP
@given(
    names=st.lists(st.tuples(st.one_of(st.none(), FILE_NAME), FILE_NAME), min_size=1, max_size=6)
)
def test_folder_file_names_map_to_keys_and_back(
    tmp_path: Path, names: list[tuple[str | None, str]]
) -> None:
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    folders = {folder for folder, _ in names if folder is not None}
    written: dict[str, str] = {}
    for folder, name in names:
        if name in folders or (folder is None and name in written) or folder in written:
            continue  # a file and a folder of one name cannot both exist
        relative = name if folder is None else f"{folder}/{name}"
        written[relative] = f"content of {relative!r}"
    assume(written)
    source = open_source(tree(root, written))
    assert getattr(source, "default_key", None) == "path"
    keyer = Keyer(source, "path")
    items = [keyer.item(row) for chunk in source.chunks(3) for row in chunk]
    assert sorted(item.key for item in items) == sorted(written)
    assert [item.key.split("/") for item in items] == sorted(k.split("/") for k in written)
    for item in items:
        assert (root / item.key).read_text(encoding="utf-8") == written[item.key]
        assert item.fields["text"] == written[item.key]
        assert item.fields["name"] == item.key.rpartition("/")[2]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sheet": "Orders"}, "--sheet would do nothing here"),
        ({"sheet": "Orders", "header_row": 2}, "--sheet and --header-row would do nothing"),
        ({"credentials": "key.json"}, "only a Google Sheet uses it"),
    ],
)
def test_options_only_spreadsheets_read_are_refused_elsewhere(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    """A --sheet on a CSV file would be dropped without a word: it is an error instead."""
    path = tmp_path / "data.csv"
    path.write_text("id,text\n1,a\n", encoding="utf-8")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.txt").write_text("a", encoding="utf-8")
    for source in (path, tmp_path / "folder"):
        with pytest.raises(ConfigError, match=message):
            open_source(source, **options)
    assert open_source(path).columns() == ["id", "text"]  # and nothing else changed
