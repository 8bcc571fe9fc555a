"""``rowpilot run book.xlsx`` in-process: --sheet and --header-row, and every bad workbook
a one-line error with exit 2 and no traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import xlsxwriter

from rowpilot.sources import open_source
from rowpilot.sources.excel import OLE_MAGIC

if TYPE_CHECKING:
    from conftest import Cli


def book(path: Path, **sheets: list[list[Any]]) -> Path:
    with xlsxwriter.Workbook(str(path)) as workbook:
        for name, rows in sheets.items():
            sheet = workbook.add_worksheet(name)
            for number, row in enumerate(rows):
                sheet.write_row(number, 0, row)
    return path


def run(cli: Cli, source: str, *extra: str) -> Any:
    return cli("run", source, "--task", "tasks.py:upper", "--key", "id", *extra)


def test_run_reads_the_named_sheet_from_its_header_row(
    tmp_path: Path, cli: Cli, tasks_file: Path
) -> None:
    book(
        tmp_path / "book.xlsx",
        Summary=[["nothing here"]],
        Orders=[["Orders, 2024"], [], ["id", "text"], ["o1", "first"], ["o2", "second"]],
    )
    result = run(cli, "book.xlsx", "--sheet", "Orders", "--header-row", "3", "-o", "out.csv")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.csv").read_text(encoding="utf-8").splitlines() == [
        "id,text,upper",
        "o1,first,FIRST",
        "o2,second,SECOND",
    ]
    assert (tmp_path / ".rowpilot" / "book-Orders-upper").is_dir()  # a sheet's own state


def _encrypted(path: Path) -> None:
    # No free writer encrypts a workbook: an OLE file with the stream an encrypted one has.
    path.write_bytes(OLE_MAGIC + bytes(504) + "EncryptedPackage".encode("utf-16-le"))


def _truncated(path: Path) -> None:
    whole = book(path, Data=[["id", "text"], *[[f"k{i}", "t"] for i in range(100)]])
    whole.write_bytes(whole.read_bytes()[:-200])


BAD: dict[str, tuple[Callable[[Path], Any], list[str], str]] = {
    "password": (_encrypted, [], "password-protected"),
    "truncated": (_truncated, [], "damaged"),
    "missing sheet": (
        lambda path: book(path, Data=[["id"], ["a"]], Other=[["id"], ["b"]]),
        ["--sheet", "Nope"],
        "no sheet named 'Nope' (hint: the sheets are 'Data', 'Other'",
    ),
    "duplicate names": (
        lambda path: book(path, Data=[["id", "text", "text"], ["a", "b", "c"]]),
        [],
        "appears more than once",
    ),
    "empty name": (
        lambda path: book(path, Data=[["id", None, "text"], ["a", "b", "c"]]),
        [],
        "column 2 of the header has no name",
    ),
    "header row": (
        lambda path: book(path, Data=[["id"], ["a"]]),
        ["--header-row", "0"],
        "header_row",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_workbook_is_one_line_and_exit_2(
    tmp_path: Path, cli: Cli, tasks_file: Path, case: str
) -> None:
    make, extra, expected = BAD[case]
    make(tmp_path / "book.xlsx")
    result = run(cli, "book.xlsx", *extra)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rowpilot: error:"), result.stderr
    assert expected in lines[0]
    assert not (tmp_path / ".rowpilot").exists() or not any((tmp_path / ".rowpilot").iterdir())


def test_verify_reads_the_sheet_the_job_ran_on(tmp_path: Path, cli: Cli, tasks_file: Path) -> None:
    book(
        tmp_path / "book.xlsx",
        Notes=[["id", "text"], ["n1", "not these rows"]],
        Orders=[["id", "text"], ["o1", "a"], ["o2", "b"]],
    )
    assert run(cli, "book.xlsx", "--sheet", "Orders").returncode == 0
    state = ".rowpilot/book-Orders-upper"
    checked = cli("verify", state, "--source", "book.xlsx", "--key", "id", "--sheet", "Orders")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    other = cli("verify", state, "--source", "book.xlsx", "--key", "id")  # the first sheet
    assert other.returncode == 1, other.stdout + other.stderr


def test_a_job_file_names_the_sheet_and_header_row(
    tmp_path: Path, cli: Cli, tasks_file: Path
) -> None:
    book(
        tmp_path / "book.xlsx",
        First=[["id", "text"], ["f1", "not this"]],
        Second=[["Title"], ["id", "text"], ["s1", "this one"]],
    )
    (tmp_path / "job.toml").write_text(
        '[source]\npath = "book.xlsx"\nkey = "id"\nsheet = "Second"\nheader_row = 2\n'
        '[task]\nfunction = "tasks.py:upper"\n[output]\npath = "out.xlsx"\n',
        encoding="utf-8",
    )
    result = cli("run", "job.toml")
    assert result.returncode == 0, result.stderr
    rows = [fields for chunk in open_source(tmp_path / "out.xlsx").chunks() for *_, fields in chunk]
    assert rows == [{"id": "s1", "text": "this one", "upper": "THIS ONE"}]
