"""Exports that die or run out of room, in real subprocesses.

A SIGKILLed export leaves its temporary file; the next export removes it. A full disk or a
file-size limit is one OutputPathError naming the file, with nothing left behind. The
limits are real: RLIMIT_FSIZE (EFBIG) everywhere, a 64 KiB tmpfs (ENOSPC) where this
machine lets us mount one.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import unmeasured
from rowpilot.sinks.exports import ExportRecord, write_json_dir, write_table

pytestmark = pytest.mark.slow

CHILD = r"""
import hashlib, json, os, resource, signal, sys
from pathlib import Path
from rowpilot.sinks.atomic import atomic_write
from rowpilot.sinks.exports import ExportRecord, write_json_dir, write_table
from rowpilot.errors import OutputPathError

mode, target = sys.argv[1], Path(sys.argv[2])
ROWS = 100_000 if mode == "kill-table" else 20_000
passes = 0


def record(seq, text):
    return ExportRecord(
        key=f"k{seq}", seq=seq, status="done", input={"id": f"k{seq}"},
        output={"text": text}, error=None, error_type=None, attempts=1,
        fingerprint="f", finished_at=1.0,
    )


def noise(seq):
    # Hashes, so Parquet's compression cannot shrink the file under the limits.
    return hashlib.sha256(str(seq).encode()).hexdigest() * 2


def records():
    # The second pass is the writing one: block in its middle, until SIGKILL.
    global passes
    passes += 1
    for seq in range(ROWS):
        if mode == "kill-table" and passes == 2 and seq == ROWS // 2:
            print("writing", flush=True)
            sys.stdin.read()
        yield record(seq, noise(seq))


def big_items():
    yield record(0, "small")
    yield record(1, "x" * 300_000)


def report(exc, folder):
    cause = exc.__cause__
    print(json.dumps({
        "text": str(exc), "file": exc.file, "message": exc.message, "hint": exc.hint,
        "cause": type(cause).__name__, "errno": getattr(cause, "errno", None),
        "left": sorted(os.listdir(folder)),
    }), flush=True)


if mode == "kill-json":
    write_json_dir(target, lambda: iter([record(0, "a"), record(1, "b")]))
    with atomic_write(target / "k1.json") as item, atomic_write(target / "_index.jsonl") as index:
        item.write("{" * 10_000)
        index.write("partial")
        item.flush()
        index.flush()
        print("writing", flush=True)
        sys.stdin.read()
if mode == "kill-table":
    write_table(target, records, ["id"])
if mode.startswith("full-"):
    if os.environ.get("FSIZE_LIMIT"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = int(os.environ["FSIZE_LIMIT"])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        if mode == "full-json":
            write_json_dir(target, big_items)
        else:
            write_table(target, records, ["id"])
    except OutputPathError as exc:
        report(exc, target if mode == "full-json" else target.parent)
        sys.exit(3)
    sys.exit("the export fitted: the limit did not bite")
"""

TABLES = ["out.csv", "out.jsonl", "out.parquet"]
TARGETS = [*TABLES, "items"]


def child(mode: str, target: Path, **popen: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CHILD, mode, str(target)], text=True, **popen)


def temps(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


def small_records() -> Iterator[ExportRecord]:
    for seq in range(3):
        yield ExportRecord(
            key=f"k{seq}",
            seq=seq,
            status="done",
            input={"id": f"k{seq}"},
            output={"text": "ok"},
            error=None,
            error_type=None,
            attempts=1,
            fingerprint="g",
            finished_at=2.0,
        )


def kill_while_writing(mode: str, target: Path) -> int:
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
    with child(mode, target, env=unmeasured(), **pipes) as process:  # SIGKILLed: unmeasured
        assert process.stdout is not None
        # The child says when it is mid-write and then blocks: a pipe, not a sleep.
        assert process.stdout.readline() == "writing\n"
        process.kill()
        assert process.wait() == -signal.SIGKILL
    return process.pid


# --- SIGKILL ----------------------------------------------------------------------------


def test_a_table_export_killed_midway_is_cleaned_up_by_the_next(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    pid = kill_while_writing("kill-table", target)
    (left,) = temps(tmp_path)
    assert left.startswith(f".out.csv.{pid}.")
    assert (tmp_path / left).stat().st_size > 1_000_000
    assert not target.exists()

    assert write_table(target, small_records, ["id"]) == 3
    assert os.listdir(tmp_path) == ["out.csv"]


def test_a_json_folder_export_killed_midway_is_cleaned_up_by_the_next(tmp_path: Path) -> None:
    folder = tmp_path / "items"
    pid = kill_while_writing("kill-json", folder)
    assert [name.rsplit(".", 2)[0] for name in temps(folder)] == [
        f"._index.jsonl.{pid}",
        f".k1.json.{pid}",
    ]

    assert write_json_dir(folder, small_records).total == 3
    assert temps(folder) == []
    assert sorted(os.listdir(folder)) == ["_index.jsonl", "k0.json", "k1.json", "k2.json"]


# --- full disks and file-size limits ----------------------------------------------------


def assert_one_line_error(result: dict[str, Any], file: Path, code: int) -> None:
    assert result["errno"] == code
    assert result["cause"] == "OSError"
    assert os.strerror(code) in result["message"]
    assert result["hint"]
    assert "\n" not in result["text"]
    assert result["text"].startswith(result["file"] + ": cannot write the file")
    assert result["file"] == str(file)
    assert not [name for name in result["left"] if name.endswith(".tmp")]


def written_file(target: Path) -> Path:
    # The JSON folder fails on its one big item's file.
    return target / "k1.json" if target.name == "items" else target


@pytest.mark.parametrize("name", TARGETS)
def test_a_file_size_limit_is_a_one_line_output_path_error(tmp_path: Path, name: str) -> None:
    target = tmp_path / name
    limit = 256 * 1024
    process = child(
        "full-json" if name == "items" else "full-table",
        target,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "FSIZE_LIMIT": str(limit)},
    )
    stdout, stderr = process.communicate()
    assert process.returncode == 3, stderr
    result = json.loads(stdout)
    assert_one_line_error(result, written_file(target), errno.EFBIG)
    assert "ulimit" in result["hint"]
    if name == "items":
        assert result["left"] == ["_index.jsonl", "k0.json"]
        assert json.loads((target / "k0.json").read_text(encoding="utf-8"))["_key"] == "k0"
    else:
        assert result["left"] == []


def _tmpfs_refusal(folder: Path) -> str | None:
    """Why a 64 KiB tmpfs cannot be mounted here, or None if it can."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("unshare") is None:
        return "no unshare command"
    trial = subprocess.run(
        ["unshare", "-m", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if trial.returncode != 0:
        return f"unshare -m + mount -t tmpfs not allowed here: {trial.stderr.strip()}"
    return None


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Path:
    folder = tmp_path / "disk"
    folder.mkdir()
    reason = _tmpfs_refusal(folder)
    if reason is not None:
        pytest.skip(f"no real ENOSPC test: {reason}")
    return folder


@pytest.mark.parametrize("name", ["out.csv", "out.parquet", "items"])
def test_a_full_disk_is_a_one_line_output_path_error(tiny_disk: Path, name: str) -> None:
    # The mount lives in the child's own mount namespace and ends with it.
    target = tiny_disk / name
    mode = "full-json" if name == "items" else "full-table"
    script = 'mount -t tmpfs -o size=64k tmpfs "$1" && exec "$2" -c "$3" "$4" "$5"'
    arguments = [str(tiny_disk), sys.executable, CHILD, mode, str(target)]
    process = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", *arguments],
        capture_output=True,
        text=True,
    )
    assert process.returncode == 3, process.stderr
    result = json.loads(process.stdout)
    assert_one_line_error(result, written_file(target), errno.ENOSPC)
    assert "free some space" in result["hint"]
    assert os.listdir(tiny_disk) == []
