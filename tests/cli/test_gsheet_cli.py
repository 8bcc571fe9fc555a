"""``rowpilot run gsheet://...`` as a real process: bad credentials and a missing extra are
one line and exit 2, with nothing written anywhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import Cli, run_cli
from fake_sheets import FakeSheets, service_account_file

BOOK = "book1"


def test_bad_credentials_are_one_line_exit_2_and_nothing_written(
    fake_sheets: FakeSheets, tmp_path: Path, tasks_file: Path
) -> None:
    fake_sheets.add_sheet(BOOK, "S", [["id", "text"], ["a", "x"]])
    stranger = service_account_file(fake_sheets, tmp_path / "stranger.json", known=False)
    done = run_cli(
        "run",
        f"gsheet://{BOOK}/S",
        "--task",
        f"{tasks_file}:upper",
        "--key",
        "id",
        "--write-back",
        "--credentials",
        stranger,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused the credentials" in lines[0]
    assert str(stranger) in lines[0] and "PRIVATE KEY" not in done.stderr
    assert fake_sheets.writes() == [] and fake_sheets.count("get") == 0
    assert not (tmp_path / ".rowpilot").exists()


def test_without_the_sheets_extra_the_error_names_the_install(
    tmp_path: Path, tasks_file: Path, cli_process: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "blocked" / "gspread"  # gspread as a machine without it has it
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('not installed')\n", "utf-8")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(blocker.parent), os.environ["PYTHONPATH"]])
    )
    done = cli_process("run", "gsheet://book1/S", "--task", f"{tasks_file}:upper", "--key", "id")
    assert done.returncode == 2
    assert "pip install 'rowpilot[sheets]'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
