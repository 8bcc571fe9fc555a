"""Tests for rowpilot._atomic: atomic replacement and the up-front writability check."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from rowpilot._atomic import atomic_write, check_writable, write_bytes_atomic, write_text_atomic
from rowpilot.errors import OutputPathError

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


def test_missing_folder_is_an_output_path_error(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "out.csv"
    with pytest.raises(OutputPathError) as caught:
        write_text_atomic(target, "x")
    assert caught.value.file == str(target)


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


def test_check_writable_missing_parent(tmp_path: Path) -> None:
    target = tmp_path / "nope" / "out.csv"
    with pytest.raises(OutputPathError) as caught:
        check_writable(target, what="failures")
    error = caught.value
    assert error.file == str(target)
    assert error.hint is not None
    assert "create it" in error.hint
    assert "failures" in str(error)
    assert not (tmp_path / "nope").exists()


def test_check_writable_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x", encoding="utf-8")
    with pytest.raises(OutputPathError, match="not a folder"):
        check_writable(tmp_path / "plain" / "out.csv")


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


def test_check_writable_read_only_folder(tmp_path: Path) -> None:
    folder = _read_only_folder(tmp_path)
    try:
        with pytest.raises(OutputPathError, match="no permission") as caught:
            check_writable(folder / "out.csv")
        assert caught.value.file == str(folder / "out.csv")
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
