"""The CSV formula guard: every cell and header cell, hostile strings, exact JSONL and Parquet.

The oracle here is written from the rule, not from the code: a spreadsheet skips leading
whitespace and control characters, then runs a cell starting with = + - @ as a formula
unless the whole cell is a plain number; a cell starting with a tab or a line break is
quoted whatever follows.
"""

from __future__ import annotations

import csv
import json
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rowpilot.sinks.exports import ExportRecord, neutralise_cell, write_table

SKIPPED_CATEGORIES = {"Cc", "Cf", "Co", "Cn", "Zs", "Zl", "Zp"}
FORMULA_STARTS = "=+-@"
NUMBER_CHARS = frozenset("0123456789+-.eE")

HOSTILE_PREFIXES = [
    " ",
    "\t",
    "\r",
    "\n",
    "\r\n",
    "\x00",
    "\x0b",
    "\x0c",
    "\x1f",
    "\x7f",
    "\x85",
    "\u00a0",
    "\u1680",
    "\u180e",
    "\u2000",
    "\u2007",
    "\u200b",
    "\u200e",
    "\u2028",
    "\u2029",
    "\u202f",
    "\u3000",
    "\ufeff",
    '"',
    "'",
]


def skipped(char: str) -> bool:
    return char.isspace() or unicodedata.category(char) in SKIPPED_CATEGORIES


def visible_start(text: str) -> str:
    return next((char for char in text if not skipped(char)), "")


def is_plain_number(text: str) -> bool:
    if not text or not set(text) <= NUMBER_CHARS:
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True


def starts_a_formula(cell: str) -> bool:
    """What a spreadsheet would run: the rule the guard must make false."""
    if cell[:1] in ("\t", "\r", "\n"):
        return True
    return visible_start(cell) in tuple(FORMULA_STARTS) and not is_plain_number(cell)


no_surrogates = st.characters(exclude_categories=["Cs"])
plain_numbers = st.from_regex(
    r"\A[+-]?(?:[0-9]{1,6}\.?[0-9]{0,3}|\.[0-9]{1,3})(?:[eE][+-]?[0-9]{1,3})?\Z"
)
hostile_text = st.one_of(
    st.builds(
        lambda prefix, start, rest: prefix + start + rest,
        st.lists(st.sampled_from(HOSTILE_PREFIXES), max_size=4).map("".join),
        st.sampled_from([*FORMULA_STARTS, "'", '"', "1", "a", ""]),
        st.text(no_surrogates, max_size=12),
    ),
    plain_numbers,
    st.builds(lambda pad, number: pad + number, st.sampled_from(HOSTILE_PREFIXES), plain_numbers),
    st.text(no_surrogates, max_size=20),
)


# --- neutralise_cell --------------------------------------------------------------------


@given(hostile_text)
def test_neutralised_text_never_starts_a_formula_and_gives_the_original_back(text: str) -> None:
    cell = neutralise_cell(text)
    assert not starts_a_formula(cell)
    assert cell in (text, "'" + text)


@given(hostile_text)
def test_only_what_would_start_a_formula_is_quoted(text: str) -> None:
    assert (neutralise_cell(text) != text) == starts_a_formula(text)


@pytest.mark.parametrize("text", ["-5", "+3.2e4", "-1E-7", ".5", "-.5", "5.", "+0", "1e5", "-0.0"])
def test_plain_numbers_stay_as_they_are(text: str) -> None:
    assert neutralise_cell(text) == text


@pytest.mark.parametrize("text", [" -5", "-5 ", "\u00a0+3", "-5\n", "-inf", "-nan", "+1_000"])
def test_numbers_with_company_are_quoted(text: str) -> None:
    assert neutralise_cell(text) == "'" + text


# --- through write_table ----------------------------------------------------------------


def record(seq: int, key: str, inputs: dict[str, Any], output: dict[str, Any]) -> ExportRecord:
    return ExportRecord(
        key=key,
        seq=seq,
        status="done",
        input=inputs,
        output=output,
        error=None,
        error_type=None,
        attempts=1,
        fingerprint=f"fp-{seq}",
        finished_at=1.0,
    )


def read_csv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(hostile_text, hostile_text), min_size=1, max_size=5, unique_by=lambda c: c[0]
    )
)
def test_every_written_cell_and_header_is_safe_and_exact(
    tmp_path: Path, cells: list[tuple[str, str]]
) -> None:
    # Each hostile pair is a column name and its value; the values double as keys.
    inputs = dict(cells)
    target = tmp_path / "hostile.csv"
    write_table(target, lambda: iter([record(0, "k", inputs, {})]), list(inputs))
    header, row = read_csv(target)
    for written, original in zip([*header, *row], [*inputs, *inputs.values()], strict=True):
        assert not starts_a_formula(written)
        assert written == original or written == "'" + original


HOSTILE_KEYS = ['=HYPERLINK("http://evil","x")', " @SUM(A1)", "\t=cmd", "-", "+1+1", "-5"]
HOSTILE_COLUMNS = ["id", "=cmd|' /C calc'!A0", "\r\n@name", "\u00a0-col", "plain"]
HOSTILE_OUTPUT = {"=out": "\u3000=1+1", "@field": -5, " +x": float("-inf"), "ok": "\n-2"}


def hostile_records() -> Iterator[ExportRecord]:
    return iter(
        [
            record(
                seq,
                key,
                {
                    "id": key,
                    HOSTILE_COLUMNS[1]: f"=A{seq}",
                    HOSTILE_COLUMNS[2]: "@me",
                    "plain": "a",
                },
                HOSTILE_OUTPUT,
            )
            for seq, key in enumerate(HOSTILE_KEYS)
        ]
    )


def test_hostile_keys_inputs_and_column_names_end_to_end(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    assert write_table(target, hostile_records, HOSTILE_COLUMNS) == len(HOSTILE_KEYS)
    rows = read_csv(target)
    assert rows[0] == [
        "id",
        "'=cmd|' /C calc'!A0",
        "'\r\n@name",
        "'\u00a0-col",
        "plain",
        "'=out",
        "'@field",
        "' +x",
        "ok",
    ]
    assert [row[0] for row in rows[1:]] == [
        '\'=HYPERLINK("http://evil","x")',
        "' @SUM(A1)",
        "'\t=cmd",
        "'-",
        "'+1+1",
        "-5",
    ]
    assert rows[1][1:] == ["'=A0", "'@me", "", "a", "'\u3000=1+1", "-5", "'-inf", "'\n-2"]
    assert not any(starts_a_formula(cell) for row in rows for cell in row)


def expected_rows(columns: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for item in hostile_records():
        values = {name: item.input.get(name) for name in columns}
        rows.append({**values, **(item.output or {})})
    return rows


def test_jsonl_keeps_hostile_values_exactly(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    write_table(target, hostile_records, HOSTILE_COLUMNS)
    lines = target.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert rows == expected_rows(HOSTILE_COLUMNS)
    assert list(rows[0]) == [*HOSTILE_COLUMNS, *HOSTILE_OUTPUT]


def test_parquet_keeps_hostile_values_exactly(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    write_table(target, hostile_records, HOSTILE_COLUMNS)
    table = pq.read_table(target)
    assert table.column_names == [*HOSTILE_COLUMNS, *HOSTILE_OUTPUT]
    assert table.to_pylist() == expected_rows(HOSTILE_COLUMNS)
