"""The Google Sheets source (sources/gsheet.py) against the fake Sheets API on 127.0.0.1:
real gspread and google-auth (the service account's JWT signed and exchanged at the fake's
token endpoint), no patching of rowpilot."""

from __future__ import annotations

import datetime as dt
import os
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import rowpilot
from fake_sheets import FakeDate, FakeSheets, service_account_file
from rowpilot._gsheet import (
    FoundCredentials,
    SheetTarget,
    column_letters,
    find_credentials,
    parse_target,
)
from rowpilot.errors import (
    ConfigError,
    EmptySourceError,
    ProviderSetupError,
    SourceNotFoundError,
)
from rowpilot.sources import gsheet as gsheet_module
from rowpilot.sources import open_source

BOOK = "book1"


def _rows(source: object) -> list[tuple[int, int | None, dict[str, object]]]:
    return [row for chunk in source.chunks(1024) for row in chunk]  # type: ignore[attr-defined]


def test_reads_typed_values_by_header(fake_sheets: FakeSheets) -> None:
    fake_sheets.add_sheet(
        BOOK,
        "Brands",
        [
            ["id", "name", "score", "active", "since", "note"],
            [7, "Acme", 4.5, True, FakeDate(dt.date(2024, 3, 1)), ""],
            ["x9", "Bolt", 3, False, FakeDate(dt.date(2023, 1, 2)), "hi"],
        ],
    )
    source = open_source(f"gsheet://{BOOK}/Brands")
    assert source.columns() == ["id", "name", "score", "active", "since", "note"]
    rows = _rows(source)
    assert rows[0] == (
        0,
        2,
        {
            "id": 7,
            "name": "Acme",
            "score": 4.5,
            "active": True,
            "since": "2024-03-01",
            "note": None,
        },
    )
    assert rows[1][2]["score"] == 3 and rows[1][2]["active"] is False
    asked = [r for r in fake_sheets.requests if r.kind == "values.get"]
    assert all(r.query["valueRenderOption"] == ["UNFORMATTED_VALUE"] for r in asked)


def test_the_browser_address_picks_the_worksheet_by_gid(fake_sheets: FakeSheets) -> None:
    fake_sheets.add_sheet(BOOK, "First", [["id"], ["a"]])
    fake_sheets.add_sheet(BOOK, "Second", [["id"], ["b"]])
    url = f"https://docs.google.com/spreadsheets/d/{BOOK}/edit#gid=1"
    assert _rows(open_source(url))[0][2] == {"id": "b"}
    assert _rows(open_source(f"gsheet://{BOOK}"))[0][2] == {"id": "a"}


def test_reads_in_pages_and_skips_blank_rows(
    fake_sheets: FakeSheets, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gsheet_module, "PAGE_ROWS", 4)
    data = [[f"k{i}", i] if i % 5 else [] for i in range(1, 12)]
    sheet = fake_sheets.add_sheet(BOOK, "S", [["key", "n"], *data])
    sheet.row_count = 13
    rows = _rows(open_source(f"gsheet://{BOOK}/S"))
    assert [fields["key"] for _, _, fields in rows] == [f"k{i}" for i in range(1, 12) if i % 5]
    assert [line for _, line, _ in rows][:5] == [2, 3, 4, 5, 7]  # sheet rows, blank 6 skipped
    pages = [r for r in fake_sheets.requests if r.kind == "values.get" and "A" in r.path]
    assert len(pages) == 3  # rows 2-5, 6-9, 10-13


def test_a_run_over_a_sheet_keys_rows_by_the_key_column(
    fake_sheets: FakeSheets, tmp_path: Path
) -> None:
    fake_sheets.add_sheet(BOOK, "S", [["id", "text"], ["a", "x"], ["b", "y"]])
    seen: list[str] = []

    def upper(row: dict[str, object]) -> dict[str, object]:
        seen.append(str(row["id"]))
        return {"upper": str(row["text"]).upper()}

    state = tmp_path / "state"
    first = rowpilot.run(upper, f"gsheet://{BOOK}/S", key="id", state=state)
    assert first.summary.done == 2
    sheet = fake_sheets.sheet(BOOK, "S")
    sheet.rows[1:] = [["c", "z"], *reversed(sheet.rows[1:])]  # re-sorted, a row inserted
    second = rowpilot.run(upper, f"gsheet://{BOOK}/S", key="id", state=state)
    assert (second.summary.done, second.summary.skipped) == (1, 2)
    assert sorted(seen) == ["a", "b", "c"]


def test_an_unknown_worksheet_names_the_ones_there(fake_sheets: FakeSheets) -> None:
    fake_sheets.add_sheet(BOOK, "Real", [["id"], ["a"]])
    with pytest.raises(SourceNotFoundError, match="'Real'"):
        open_source(f"gsheet://{BOOK}/Missing")
    with pytest.raises(SourceNotFoundError, match="no such spreadsheet"):
        open_source("gsheet://nobook/Real")


def test_a_key_the_token_endpoint_refuses_is_a_setup_error(
    fake_sheets: FakeSheets, tmp_path: Path
) -> None:
    fake_sheets.add_sheet(BOOK, "S", [["id"], ["a"]])
    stranger = service_account_file(fake_sheets, tmp_path / "other.json", known=False)
    with pytest.raises(ProviderSetupError, match="refused the credentials") as raised:
        open_source(f"gsheet://{BOOK}/S", credentials=stranger)
    assert str(stranger) in str(raised.value)
    assert "PRIVATE KEY" not in str(raised.value)
    assert fake_sheets.count("get") == 0  # no API call without a token


def test_no_credentials_anywhere_says_where_to_put_them(
    fake_sheets: FakeSheets, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    with pytest.raises(ProviderSetupError, match="no Google credentials found"):
        open_source(f"gsheet://{BOOK}/S")
    client_file = tmp_path / "home" / ".config" / "gspread" / "credentials.json"
    client_file.parent.mkdir(parents=True)
    client_file.write_text("{}", encoding="utf-8")
    with pytest.raises(ProviderSetupError, match="does not open a browser"):
        open_source(f"gsheet://{BOOK}/S")


def test_gspreads_own_files_are_found_after_the_variable(
    fake_sheets: FakeSheets, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # google-auth always sends an authorized user's refresh to Google's own token endpoint,
    # so that exchange cannot run here: the order of the places looked in can.
    folder = tmp_path / "home" / ".config" / "gspread"
    folder.mkdir(parents=True)
    (folder / "authorized_user.json").write_text("{}", encoding="utf-8")
    found = find_credentials(None)
    assert found is not None and found.how == "GOOGLE_APPLICATION_CREDENTIALS"
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    found = find_credentials(None)
    assert found == FoundCredentials("gspread", folder / "authorized_user.json")
    (folder / "service_account.json").write_text("{}", encoding="utf-8")
    assert find_credentials(None) == FoundCredentials("gspread", folder / "service_account.json")
    given = find_credentials(tmp_path / "mine.json")
    assert given == FoundCredentials("--credentials", tmp_path / "mine.json")


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("gsheet://abc_1-2/Sheet%201", SheetTarget("abc_1-2", "Sheet 1")),
        ("gsheet://abc", SheetTarget("abc")),
        ("https://docs.google.com/spreadsheets/d/XY_z/edit#gid=42", SheetTarget("XY_z", gid=42)),
        ("https://docs.google.com/spreadsheets/d/XY_z/edit", SheetTarget("XY_z")),
    ],
)
def test_targets(text: str, target: SheetTarget) -> None:
    parsed = parse_target(text)
    assert (parsed.spreadsheet, parsed.title, parsed.gid) == (
        target.spreadsheet,
        target.title,
        target.gid,
    )


def test_a_bad_address_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a Google Sheets address"):
        parse_target("gsheet://bad id/x")
    with pytest.raises(ConfigError, match="only Google Sheets"):
        open_source("https://example.com/data.csv")


@given(st.integers(min_value=0, max_value=20_000))
def test_property_column_letters_count_like_a_spreadsheet(index: int) -> None:
    letters = column_letters(index)
    number = 0
    for letter in letters:
        number = number * 26 + ord(letter) - ord("A") + 1
    assert number - 1 == index
    assert letters.isalpha() and letters.isupper()


def test_a_job_file_keeps_the_address_and_finds_its_credentials_beside_it(
    fake_sheets: FakeSheets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Any
) -> None:
    fake_sheets.add_sheet(BOOK, "S", [["id", "text"], ["a", "x"]])
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    key = Path(os.environ["GOOGLE_APPLICATION_CREDENTIALS"])
    (jobs / "sa.json").write_text(key.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")  # only the job file names it
    (jobs / "tasks.py").write_text("def f(row):\n    return {'up': row['text'].upper()}\n")
    (jobs / "job.toml").write_text(
        f'[source]\npath = "gsheet://{BOOK}/S"\nkey = "id"\ncredentials = "sa.json"\n'
        '[task]\nfunction = "tasks.py:f"\n[run]\nstate = "state"\n',
        encoding="utf-8",
    )
    done = cli("run", jobs / "job.toml", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "1 done" in done.stdout


def test_an_expired_token_is_renewed_and_a_sheet_not_shared_is_a_setup_error(
    fake_sheets: FakeSheets,
) -> None:
    fake_sheets.add_sheet(BOOK, "S", [["id"], ["a"]])
    source = open_source(f"gsheet://{BOOK}/S")
    fake_sheets.tokens.clear()  # expired: a 401, then google-auth asks for a new token
    assert _rows(source)[0][2] == {"id": "a"}
    assert fake_sheets.count("token") == 2
    fake_sheets.forbidden.add(BOOK)
    with pytest.raises(ProviderSetupError, match="refused the request: The caller does not"):
        _rows(source)


@given(
    spreadsheet=st.text("abcXYZ019_-", min_size=1, max_size=44),
    title=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30),
)
def test_property_a_quoted_title_reads_back_whole(spreadsheet: str, title: str) -> None:
    parsed = parse_target(f"gsheet://{spreadsheet}/{urllib.parse.quote(title, safe='')}")
    assert (parsed.spreadsheet, parsed.title, parsed.gid) == (spreadsheet, title, None)


def test_header_row_and_sheet_name_the_table(fake_sheets: FakeSheets) -> None:
    fake_sheets.add_sheet(BOOK, "First", [["id"], ["x"]])
    fake_sheets.add_sheet(
        BOOK, "Orders", [["Orders 2024"], [], ["id", "total"], ["a", 1], ["b", 2]]
    )
    source = open_source(f"gsheet://{BOOK}", sheet="Orders", header_row=3)
    assert source.columns() == ["id", "total"]
    assert [(line, fields) for _, line, fields in _rows(source)] == [
        (4, {"id": "a", "total": 1}),
        (5, {"id": "b", "total": 2}),
    ]
    with pytest.raises(ConfigError, match="named twice"):
        open_source(f"gsheet://{BOOK}/First", sheet="Orders")
    with pytest.raises(EmptySourceError, match="no header in row 2"):
        open_source(f"gsheet://{BOOK}/Orders", header_row=2)
