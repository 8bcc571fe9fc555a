"""Tests for rowpilot.sinks.atomic: atomic replacement and the up-front writability check."""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rowpilot.errors import OutputPathError
from rowpilot.sinks.atomic import (
    atomic_write,
    check_writable,
    remove_stale_temps,
    write_bytes_atomic,
    write_text_atomic,
)

RUNNING_AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


class Boom(Exception):
    """Raised inside a with block to interrupt a write."""


@pytest.fixture
def umask_027() -> Iterator[None]:
    previous = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(previous)


def test_text_write_creates_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with atomic_write(target) as handle:
        handle.write("héllo\n")
    assert target.read_text(encoding="utf-8") == "héllo\n"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_binary_write_and_helpers(tmp_path: Path) -> None:
    with atomic_write(tmp_path / "a.bin", "wb") as handle:
        handle.write(b"\x00\x01")
    write_bytes_atomic(tmp_path / "b.bin", b"\xff")
    write_text_atomic(tmp_path / "c.txt", "ç")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.bin").read_bytes() == b"\xff"
    assert (tmp_path / "c.txt").read_bytes() == "ç".encode()


def test_newline_is_passed_to_text_mode(tmp_path: Path) -> None:
    target = tmp_path / "crlf.txt"
    with atomic_write(target, newline="\r\n") as handle:
        handle.write("a\nb\n")
    assert target.read_bytes() == b"a\r\nb\r\n"


def test_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old", encoding="utf-8")
    write_text_atomic(target, "new")
    assert target.read_text(encoding="utf-8") == "new"


@pytest.mark.usefixtures("umask_027")
def test_final_permissions_follow_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    write_text_atomic(target, "x")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_fsync_can_be_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    write_text_atomic(tmp_path / "a.txt", "x", fsync=False)
    assert calls == []
    write_text_atomic(tmp_path / "b.txt", "x")
    assert len(calls) == 1


def _write_then_raise(target: Path, text: str, error: BaseException) -> None:
    with atomic_write(target) as handle:
        handle.write(text)
        handle.flush()
        raise error


def test_exception_mid_write_leaves_no_target_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    error = Boom("stop")
    with pytest.raises(Boom) as caught:
        _write_then_raise(target, "partial," * 10_000, error)
    assert caught.value is error
    assert os.listdir(tmp_path) == []


def test_exception_mid_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(KeyboardInterrupt):
        _write_then_raise(target, "new", KeyboardInterrupt())
    assert target.read_text(encoding="utf-8") == "old"
    assert os.listdir(tmp_path) == ["out.csv"]


def test_missing_folders_are_created(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "deeper" / "out.csv"
    write_text_atomic(target, "x")
    assert target.read_text(encoding="utf-8") == "x"
    assert os.listdir(target.parent) == ["out.csv"]


def test_a_path_through_a_file_is_an_output_path_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x", encoding="utf-8")
    target = tmp_path / "plain" / "sub" / "out.csv"
    with pytest.raises(OutputPathError) as caught:
        write_text_atomic(target, "x")
    assert caught.value.file == str(target)
    assert isinstance(caught.value.__cause__, OSError)
    assert os.listdir(tmp_path) == ["plain"]


def test_directory_target_is_an_output_path_error_and_cleans_up(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(OutputPathError):
        write_text_atomic(tmp_path / "taken", "x")
    assert os.listdir(tmp_path) == ["taken"]


# --- check_writable ---------------------------------------------------------------------


def test_check_writable_accepts_new_and_existing_files_and_creates_nothing(
    tmp_path: Path,
) -> None:
    check_writable(tmp_path / "new.csv")
    (tmp_path / "old.csv").write_text("x", encoding="utf-8")
    check_writable(tmp_path / "old.csv")
    assert os.listdir(tmp_path) == ["old.csv"]


def test_check_writable_accepts_missing_folders_and_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "nope" / "deeper" / "out.csv"
    check_writable(target, what="failures")
    assert os.listdir(tmp_path) == []
    # The write that follows the check creates the folders.
    write_text_atomic(target, "x")
    assert target.read_text(encoding="utf-8") == "x"


@pytest.mark.parametrize("under", [(), ("missing",), ("missing", "deeper")])
def test_check_writable_path_through_a_file(tmp_path: Path, under: tuple[str, ...]) -> None:
    (tmp_path / "plain").write_text("x", encoding="utf-8")
    target = tmp_path.joinpath("plain", *under, "out.csv")
    with pytest.raises(OutputPathError, match="not a folder") as caught:
        check_writable(target)
    assert str(tmp_path / "plain") in str(caught.value)


def test_check_writable_existing_directory(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    with pytest.raises(OutputPathError, match="existing folder") as caught:
        check_writable(tmp_path / "results")
    assert caught.value.hint is not None
    assert "results.csv" in caught.value.hint


def _read_only_folder(tmp_path: Path) -> Path:
    if not RUNNING_AS_ROOT:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    # Root ignores permission bits; procfs still refuses new files, even to root.
    folder = Path("/proc/self")
    if not folder.is_dir() or os.access(folder, os.W_OK):
        pytest.skip("running as root without a procfs folder root cannot write to")
    return folder


@pytest.mark.parametrize("under", [(), ("missing",), ("missing", "deeper")])
def test_check_writable_read_only_folder(tmp_path: Path, under: tuple[str, ...]) -> None:
    folder = _read_only_folder(tmp_path)
    target = folder.joinpath(*under, "out.csv")
    try:
        with pytest.raises(OutputPathError, match="no permission") as caught:
            check_writable(target)
        assert caught.value.file == str(target)
        assert caught.value.hint is not None
        assert str(folder) in caught.value.hint
    finally:
        if folder.is_relative_to(tmp_path):
            folder.chmod(0o755)


def test_check_writable_folder_mode(tmp_path: Path) -> None:
    check_writable(tmp_path / "new" / "items", what="JSON folder", folder=True)
    (tmp_path / "items").mkdir()
    check_writable(tmp_path / "items", what="JSON folder", folder=True)
    (tmp_path / "taken").write_text("x", encoding="utf-8")
    with pytest.raises(OutputPathError, match="existing file, not a folder"):
        check_writable(tmp_path / "taken", what="JSON folder", folder=True)
    with pytest.raises(OutputPathError, match="not a folder"):
        check_writable(tmp_path / "taken" / "items", what="JSON folder", folder=True)
    assert sorted(os.listdir(tmp_path)) == ["items", "taken"]


def test_check_writable_folder_mode_read_only_folder(tmp_path: Path) -> None:
    folder = _read_only_folder(tmp_path)
    try:
        with pytest.raises(OutputPathError, match="no permission"):
            check_writable(folder, what="JSON folder", folder=True)
    finally:
        if folder.is_relative_to(tmp_path):
            folder.chmod(0o755)


@pytest.mark.skipif(RUNNING_AS_ROOT, reason="root may write any file whatever its mode")
def test_check_writable_read_only_file(tmp_path: Path) -> None:
    target = tmp_path / "frozen.csv"
    target.write_text("x", encoding="utf-8")
    target.chmod(0o444)
    with pytest.raises(OutputPathError, match="read-only"):
        check_writable(target)


# --- errors inside the block ------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "hint_part"),
    [(errno.ENOSPC, "free some space"), (errno.EFBIG, "ulimit"), (errno.EIO, "free space")],
)
def test_an_os_error_in_the_block_is_an_output_path_error(
    tmp_path: Path, code: int, hint_part: str
) -> None:
    target = tmp_path / "out.csv"
    error = OSError(code, os.strerror(code))
    with pytest.raises(OutputPathError) as caught:
        _write_then_raise(target, "partial", error)
    assert caught.value.__cause__ is error
    assert caught.value.file == str(target)
    assert os.strerror(code) in caught.value.message
    assert caught.value.hint is not None
    assert hint_part in caught.value.hint
    assert "\n" not in str(caught.value)
    assert os.listdir(tmp_path) == []


# --- temporary files of killed writers --------------------------------------------------


def _dead_pid() -> int:
    # A child that has been waited for is gone; Linux hands out pids in order, so its
    # pid is not reused within a test.
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


@pytest.fixture
def live_pid() -> Iterator[int]:
    with subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    ) as child:
        yield child.pid
        assert child.stdin is not None
        child.stdin.close()


def test_temporary_name_carries_the_pid(tmp_path: Path) -> None:
    with atomic_write(tmp_path / "out.csv") as handle:
        (temp,) = os.listdir(tmp_path)
        assert Path(handle.name).name == temp
    assert re.fullmatch(rf"\.out\.csv\.{os.getpid()}\.[a-z0-9_]+\.tmp", temp)


def test_next_write_removes_temps_of_dead_writers_only(tmp_path: Path, live_pid: int) -> None:
    dead = _dead_pid()
    names = {
        f".out.csv.{dead}.abcd1234.tmp": False,
        f".out.csv.{live_pid}.abcd1234.tmp": True,
        f".out.csv.{os.getpid()}.abcd1234.tmp": True,
        f".other.csv.{dead}.abcd1234.tmp": True,  # another target's: its own write cleans it
        ".out.csv.abcd1234.tmp": True,  # no pid: cannot tell whether its writer lives
        f"out.csv.{dead}.abcd1234.tmp": True,  # not hidden: not a name we ever write
    }
    for name in names:
        (tmp_path / name).write_text("partial", encoding="utf-8")
    write_text_atomic(tmp_path / "out.csv", "x")
    kept = {name for name, keep in names.items() if keep}
    assert set(os.listdir(tmp_path)) == {"out.csv", *kept}


def test_remove_stale_temps_of_every_target(tmp_path: Path, live_pid: int) -> None:
    dead = _dead_pid()
    for name in ["a.json", "b.c.json", "_index.jsonl"]:
        (tmp_path / f".{name}.{dead}.x1y2z3w4.tmp").write_text("", encoding="utf-8")
    (tmp_path / f".a.json.{live_pid}.x1y2z3w4.tmp").write_text("", encoding="utf-8")
    assert remove_stale_temps(tmp_path) == 3
    assert os.listdir(tmp_path) == [f".a.json.{live_pid}.x1y2z3w4.tmp"]
    assert remove_stale_temps(tmp_path / "missing") == 0


def test_write_without_sweep_leaves_leftovers(tmp_path: Path) -> None:
    leftover = tmp_path / f".out.csv.{_dead_pid()}.abcd1234.tmp"
    leftover.write_text("partial", encoding="utf-8")
    write_text_atomic(tmp_path / "out.csv", "x", sweep=False)
    assert leftover.exists()
