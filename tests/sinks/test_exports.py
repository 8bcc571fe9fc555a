"""Tests for rowpilot.sinks.exports: tables, the JSON folder and the failure list, on real files."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rowpilot.errors import ConfigError, OutputPathError
from rowpilot.sinks import exports as _exports
from rowpilot.sinks.exports import (
    ExportRecord,
    JsonDirReport,
    Records,
    iter_failure_lines,
    neutralise_cell,
    table_format,
    to_dataframe,
    write_failures,
    write_json_dir,
    write_table,
)
from rowpilot.sinks.filenames import INDEX_FILE_NAME, KeyFileNamer


def done(
    seq: int, inputs: dict[str, Any], output: dict[str, Any], *, key: str | None = None
) -> ExportRecord:
    return ExportRecord(
        key=key if key is not None else f"k{seq}",
        seq=seq,
        status="done",
        input=inputs,
        output=output,
        error=None,
        error_type=None,
        attempts=1,
        fingerprint=f"fp-{seq}",
        finished_at=1000.0 + seq,
    )


def failed(seq: int, inputs: dict[str, Any], *, key: str | None = None) -> ExportRecord:
    return ExportRecord(
        key=key if key is not None else f"k{seq}",
        seq=seq,
        status="failed",
        input=inputs,
        output=None,
        error=f"bad row {seq}",
        error_type="ValueError",
        attempts=3,
        fingerprint=f"fp-{seq}",
        finished_at=2000.0 + seq,
    )


def factory(records: Sequence[ExportRecord]) -> Records:
    return lambda: iter(records)


SAMPLE = [
    done(0, {"id": "007", "text": " a "}, {"label": "x", "score": 0.5}),
    failed(1, {"id": "008", "text": "b", "note": "extra"}),
    done(2, {"id": "009", "text": "c"}, {"label": "y", "text": "C!", "tags": ["t1", "t2"]}),
]
# Row 2's output "text" clashes with the input column (a registry an older rowpilot wrote):
# the input keeps its column, the output gets "output.text".
SAMPLE_COLUMNS = ["id", "text", "note", "label", "score", "output.text", "tags"]


def read_csv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


def read_jsonl(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --- table_format -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.csv", "csv"),
        ("a.CSV", "csv"),
        ("a.jsonl", "jsonl"),
        ("a.ndjson", "jsonl"),
        ("a.parquet", "parquet"),
        ("a.pq", "parquet"),
    ],
)
def test_table_format_from_suffix(name: str, expected: str) -> None:
    assert table_format(Path(name)) == expected


def test_explicit_format_wins_over_the_suffix() -> None:
    assert table_format(Path("out.txt"), "Parquet") == "parquet"


@pytest.mark.parametrize(("name", "format"), [("out.txt", None), ("out", None), ("a.csv", "xls")])
def test_unknown_format_is_a_config_error(name: str, format: str | None) -> None:
    with pytest.raises(ConfigError) as caught:
        table_format(Path(name), format)
    assert caught.value.file == name
    assert caught.value.hint is not None
    assert "csv" in caught.value.hint


# --- the enriched table -----------------------------------------------------------------


def test_csv_layout_failed_rows_and_a_clash_that_never_overwrites_an_input(
    tmp_path: Path,
) -> None:
    target = tmp_path / "out.csv"
    assert write_table(target, factory(SAMPLE), ["id", "text"]) == 3
    assert read_csv(target) == [
        SAMPLE_COLUMNS,
        ["007", " a ", "", "x", "0.5", "", ""],
        ["008", "b", "extra", "", "", "", ""],
        ["009", "c", "", "y", "", "C!", '["t1", "t2"]'],
    ]


def test_an_output_named_like_the_key_column_never_replaces_the_key(tmp_path: Path) -> None:
    records = [done(i, {"id": f"k{i}", "text": "t"}, {"id": "OUT-ID"}) for i in range(3)]
    target = tmp_path / "out.csv"
    write_table(target, factory(records), ["id", "text"])
    assert read_csv(target) == [
        ["id", "text", "output.id"],
        *[[f"k{i}", "t", "OUT-ID"] for i in range(3)],
    ]


def test_done_only_drops_failed_rows_and_their_columns(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    assert write_table(target, factory(SAMPLE), ["id", "text"], done_only=True) == 2
    rows = read_csv(target)
    assert rows[0] == ["id", "text", "label", "score", "output.text", "tags"]
    assert [row[0] for row in rows[1:]] == ["007", "009"]


def test_csv_cell_formatting(tmp_path: Path) -> None:
    record = done(0, {"flag": True, "n": None}, {"ok": False, "none": None, "obj": {"é": 1}})
    target = tmp_path / "out.csv"
    write_table(target, factory([record]), ["flag", "n"])
    assert read_csv(target)[1] == ["true", "", "false", "", '{"é": 1}']


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("=1+1", "'=1+1"),
        ("+A1", "'+A1"),
        ("-cmd", "'-cmd"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("\nx", "'\nx"),
        (" =1+1", "' =1+1"),
        ("\t=cmd", "'\t=cmd"),
        ("\r\n@SUM(A1)", "'\r\n@SUM(A1)"),
        ("\u00a0=1+1", "'\u00a0=1+1"),
        ("\u200b\u3000-x", "'\u200b\u3000-x"),
        (" -5", "' -5"),
        ("-5", "-5"),
        ("+3.2", "+3.2"),
        ("+3.2e4", "+3.2e4"),
        ("-1e5", "-1e5"),
        ("-\u0663", "'-\u0663"),
        ("-", "'-"),
        ("a=1", "a=1"),
        (" a", " a"),
        ("", ""),
    ],
)
def test_formula_guard_on_input_and_output_cells(tmp_path: Path, value: str, written: str) -> None:
    assert neutralise_cell(value) == written
    target = tmp_path / "out.csv"
    write_table(target, factory([done(0, {"in": value}, {"out": value})]), ["in"])
    assert read_csv(target)[1] == [written, written]


def test_formula_guard_leaves_numbers_alone_and_covers_input_overrides(tmp_path: Path) -> None:
    record = done(0, {"a": "=input"}, {"n": -5, "x": -2.5, "inf": float("-inf")})
    target = tmp_path / "out.csv"
    write_table(target, factory([record]), ["a"])
    assert read_csv(target)[1] == ["'=input", "-5", "-2.5", "'-inf"]


csv_text = st.text(
    st.characters(exclude_categories=["Cs"], include_characters=',"\n\r \t'), max_size=30
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(csv_text, csv_text), min_size=1, max_size=8))
def test_csv_round_trip(tmp_path: Path, cells: list[tuple[str, str]]) -> None:
    records = [done(seq, {"in": a}, {"out": b}) for seq, (a, b) in enumerate(cells)]
    target = tmp_path / "round.csv"
    write_table(target, factory(records), ["in"])
    rows = read_csv(target)
    assert rows[0] == ["in", "out"]
    assert len(rows) == len(cells) + 1
    for (input_cell, output_cell), row in zip(cells, rows[1:], strict=True):
        assert row == [neutralise_cell(input_cell), neutralise_cell(output_cell)]


def test_jsonl_keeps_native_values(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    assert write_table(target, factory(SAMPLE), ["id", "text"]) == 3
    nothing = {"output.text": None, "tags": None}
    assert read_jsonl(target) == [
        {"id": "007", "text": " a ", "note": None, "label": "x", "score": 0.5, **nothing},
        {"id": "008", "text": "b", "note": "extra", "label": None, "score": None, **nothing},
        {
            "id": "009",
            "text": "c",
            "note": None,
            "label": "y",
            "score": None,
            "output.text": "C!",
            "tags": ["t1", "t2"],
        },
    ]


def test_parquet_reads_back_as_the_expected_rows(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    assert write_table(target, factory(SAMPLE), ["id", "text"]) == 3
    table = pq.read_table(target)
    assert table.column_names == SAMPLE_COLUMNS
    nothing = {"output.text": None, "tags": None}
    assert table.to_pylist() == [
        {"id": "007", "text": " a ", "note": None, "label": "x", "score": 0.5, **nothing},
        {"id": "008", "text": "b", "note": "extra", "label": None, "score": None, **nothing},
        {
            "id": "009",
            "text": "c",
            "note": None,
            "label": "y",
            "score": None,
            "output.text": "C!",
            "tags": '["t1", "t2"]',
        },
    ]


def test_parquet_types_span_all_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_exports, "PARQUET_BATCH_ROWS", 2)
    values: list[tuple[Any, Any, Any]] = [(1, 1, True), (2, "two", False), (3.5, 3, None)]
    records = [
        done(seq, {}, {"num": num, "mixed": mixed, "flag": flag})
        for seq, (num, mixed, flag) in enumerate(values * 3)
    ]
    target = tmp_path / "out.parquet"
    assert write_table(target, factory(records), []) == 9
    table = pq.read_table(target)
    assert [str(field.type) for field in table.schema] == ["double", "string", "bool"]
    assert table.column("num").to_pylist() == [1.0, 2.0, 3.5] * 3
    assert table.column("mixed").to_pylist() == ["1", "two", "3"] * 3
    assert table.column("flag").to_pylist() == [True, False, None] * 3


def test_empty_parquet_still_has_the_columns(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    assert write_table(target, factory([]), ["id", "text"]) == 0
    table = pq.read_table(target)
    assert table.column_names == ["id", "text"]
    assert table.num_rows == 0


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl", "out.parquet"])
def test_exception_mid_write_leaves_nothing(tmp_path: Path, name: str) -> None:
    error = RuntimeError("registry went away")
    calls = 0

    def flaky() -> Iterator[ExportRecord]:
        nonlocal calls
        calls += 1
        yield SAMPLE[0]
        if calls == 2:
            raise error
        yield SAMPLE[1]

    with pytest.raises(RuntimeError) as caught:
        write_table(tmp_path / name, flaky, ["id"])
    assert caught.value is error
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl", "out.parquet"])
def test_table_into_missing_folders_creates_them(tmp_path: Path, name: str) -> None:
    target = tmp_path / "a" / "b" / name
    assert write_table(target, factory(SAMPLE), ["id"]) == 3
    assert os.listdir(target.parent) == [name]


def test_table_through_a_file_is_an_output_path_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x", encoding="utf-8")
    with pytest.raises(OutputPathError) as caught:
        write_table(tmp_path / "plain" / "sub" / "out.csv", factory(SAMPLE), ["id"])
    assert caught.value.hint is not None
    assert "not a folder" in caught.value.hint


# --- to_dataframe -----------------------------------------------------------------------


def test_dataframe_keeps_python_objects() -> None:
    frame = to_dataframe(factory(SAMPLE), ["id", "text"])
    assert list(frame.columns) == SAMPLE_COLUMNS
    assert all(dtype.kind == "O" for dtype in frame.dtypes)
    assert frame["id"].tolist() == ["007", "008", "009"]
    assert frame.loc[0, "text"] == " a "
    assert frame.loc[1, "label"] is None
    assert frame.loc[2, "tags"] == ["t1", "t2"]
    assert len(to_dataframe(factory(SAMPLE), ["id"], done_only=True)) == 2


# --- one JSON file per item -------------------------------------------------------------


def _json_files(folder: Path) -> dict[str, Any]:
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in folder.iterdir()
        if path.name != INDEX_FILE_NAME
    }


def test_json_dir_writes_done_items_only(tmp_path: Path) -> None:
    folder = tmp_path / "items"
    report = write_json_dir(folder, factory(SAMPLE))
    assert report == JsonDirReport(written=2, unchanged=0, total=2)
    assert _json_files(folder) == {
        "k0.json": {"_key": "k0", "label": "x", "score": 0.5},
        "k2.json": {"_key": "k2", "label": "y", "text": "C!", "tags": ["t1", "t2"]},
    }
    text = (folder / "k0.json").read_text(encoding="utf-8")
    assert text.startswith('{\n  "_key": "k0",')
    assert text.endswith("}\n")


def test_json_dir_second_export_is_stable_and_skips_unchanged(tmp_path: Path) -> None:
    folder = tmp_path / "items"
    records = [done(seq, {}, {"n": seq}, key=key) for seq, key in enumerate(["abc", "b/c"])]
    write_json_dir(folder, factory(records))
    before = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}

    rerun = replace(records[1], output={"n": 99}, fingerprint="new")
    # "Abc" arrives first now, but "abc" keeps the name it was given before.
    newcomer = done(9, {}, {"n": 9}, key="Abc")
    report = write_json_dir(folder, factory([newcomer, records[0], rerun]))

    assert report == JsonDirReport(written=2, unchanged=1, total=3)
    assert (folder / "abc.json").stat().st_mtime_ns == before["abc.json"]
    names = {path.name for path in folder.iterdir()}
    assert set(before) <= names
    assert len(names) == 4
    assert {"_key": "b/c", "n": 99} in _json_files(folder).values()


def test_json_dir_rewrites_a_deleted_file(tmp_path: Path) -> None:
    folder = tmp_path / "items"
    write_json_dir(folder, factory(SAMPLE))
    (folder / "k0.json").unlink()
    assert write_json_dir(folder, factory(SAMPLE)) == JsonDirReport(1, 1, 2)
    assert (folder / "k0.json").exists()


def test_json_dir_case_collisions_and_traversal(tmp_path: Path) -> None:
    folder = tmp_path / "items"
    keys = ["Abc", "abc", "../etc/passwd", "..", "CON"]
    records = [done(seq, {}, {"key": key}, key=key) for seq, key in enumerate(keys)]
    assert write_json_dir(folder, factory(records)).written == len(keys)
    files = _json_files(folder)
    assert sorted(content["key"] for content in files.values()) == sorted(keys)
    assert len({name.casefold() for name in files}) == len(keys)
    assert sorted(os.listdir(tmp_path)) == ["items"]


def test_json_dir_creates_missing_parents(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    assert write_json_dir(folder, factory(SAMPLE)).written == 2
    assert sorted(os.listdir(folder)) == [INDEX_FILE_NAME, "k0.json", "k2.json"]


HOSTILE_KEYS = [
    "Abc",
    "abc",
    "ABC",
    "../etc/passwd",
    "..",
    "/abs/path",
    "a\\b",
    "CON",
    "aux.txt",
    "_index.jsonl",
    "x" * 5000,
    "é" * 300,
    "nul\x00byte",
    "line\nbreak",
    "\u2028",
    "\udcff undecodable byte",
    "",
    " ",
]


def test_json_dir_files_carry_their_key_first(tmp_path: Path) -> None:
    folder = tmp_path / "items"
    records = [done(seq, {}, {"n": seq}, key=key) for seq, key in enumerate(HOSTILE_KEYS)]
    assert write_json_dir(folder, factory(records)).written == len(HOSTILE_KEYS)
    namer = KeyFileNamer.load(folder)
    for record in records:
        content = json.loads((folder / namer.file_name(record.key)).read_text(encoding="utf-8"))
        assert content == {"_key": record.key, "n": record.seq}
        assert next(iter(content)) == "_key"
    assert len(_json_files(folder)) == len(HOSTILE_KEYS)
    assert sorted(os.listdir(tmp_path)) == ["items"]


def test_an_output_field_named_key_is_refused_and_renaming_it_works(tmp_path: Path) -> None:
    folder = tmp_path / "items"
    with pytest.raises(ConfigError) as caught:
        write_json_dir(folder, factory([done(0, {}, {"_key": "mine", "n": 1})]))
    error = caught.value
    assert (error.column, error.key) == ("_key", "k0")
    assert error.hint is not None
    assert "rename" in error.hint
    assert not (folder / "k0.json").exists()

    write_json_dir(folder, factory([done(0, {}, {"key_": "mine", "n": 1})]))
    content = json.loads((folder / "k0.json").read_text(encoding="utf-8"))
    assert content == {"_key": "k0", "key_": "mine", "n": 1}


def test_json_dir_rewrites_files_of_the_layout_without_key(tmp_path: Path) -> None:
    # What an export before the "_key" field left: an unchanged item must not keep it.
    folder = tmp_path / "items"
    folder.mkdir()
    (folder / "k0.json").write_text('{"label": "x", "score": 0.5}\n', encoding="utf-8")
    entry = {"key": "k0", "file": "k0.json", "fingerprint": "fp-0@1000.0"}
    (folder / INDEX_FILE_NAME).write_text(json.dumps(entry) + "\n", encoding="utf-8")
    assert write_json_dir(folder, factory(SAMPLE)) == JsonDirReport(2, 0, 2)
    assert _json_files(folder)["k0.json"] == {"_key": "k0", "label": "x", "score": 0.5}
    assert write_json_dir(folder, factory(SAMPLE)) == JsonDirReport(0, 2, 2)


def test_json_dir_removes_temps_of_dead_writers_only(tmp_path: Path) -> None:
    folder = tmp_path / "items"
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    with subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    ) as alive:
        leftovers = {
            f".k0.json.{dead.pid}.abc123_x.tmp": False,
            f".{INDEX_FILE_NAME}.{dead.pid}.q1w2e3r4.tmp": False,
            f".k2.json.{alive.pid}.abc123_x.tmp": True,
            f".k2.json.{os.getpid()}.zzzzzzzz.tmp": True,
        }
        for name in leftovers:
            (folder / name).write_text("partial", encoding="utf-8")
        write_json_dir(folder, factory(SAMPLE))
        assert alive.stdin is not None
        alive.stdin.close()
    kept = {name for name, live in leftovers.items() if live}
    assert set(os.listdir(folder)) == {INDEX_FILE_NAME, "k0.json", "k2.json", *kept}


def test_json_dir_over_a_file_is_an_output_path_error(tmp_path: Path) -> None:
    (tmp_path / "items").write_text("x", encoding="utf-8")
    with pytest.raises(OutputPathError):
        write_json_dir(tmp_path / "items", factory(SAMPLE))


# --- failures ---------------------------------------------------------------------------


def test_failure_lines_and_file(tmp_path: Path) -> None:
    expected = {
        "key": "k1",
        "row": 1,
        "cause": None,
        "error_type": "ValueError",
        "error": "bad row 1",
        "attempts": 3,
        "finished_at": 2001.0,
    }
    assert [json.loads(line) for line in iter_failure_lines(factory(SAMPLE))] == [expected]
    target = tmp_path / "failures.jsonl"
    assert write_failures(target, factory(SAMPLE)) == 1
    assert read_jsonl(target) == [expected]
