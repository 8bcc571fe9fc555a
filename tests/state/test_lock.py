"""Tests for rowpilot.state.lock: one run per state directory, freed by the kernel on any exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rowpilot.errors import StateError, StateLockedError
from rowpilot.state.lock import LOCK_FILE, StateLock, is_locked

HOLD = """\
import sys, time
from pathlib import Path
from rowpilot.state.lock import StateLock

lock = StateLock(Path(sys.argv[1]), "rowpilot run data.csv")
lock.acquire()
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A real process that holds the lock on tmp_path/state until it is killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "state")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line == "locked\n", process.stderr.read() if process.stderr else ""
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=120)


def test_a_second_lock_on_the_same_dir_is_refused_naming_the_pid(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with StateLock(state, "rowpilot run a.csv"):
        second = StateLock(state)
        with pytest.raises(StateLockedError) as caught:
            second.acquire()
        error = caught.value
        assert isinstance(error, StateError)
        assert f"another run is using {state} (pid {os.getpid()}, started " in error.message
        assert error.hint is not None
        assert "--state" in error.hint
        assert "--shard" in error.hint
        info = json.loads((state / LOCK_FILE).read_text())
        assert info["pid"] == os.getpid()
        assert info["command"] == "rowpilot run a.csv"


def test_release_lets_another_acquire(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = StateLock(state)
    first.acquire()
    first.release()
    first.release()  # releasing twice is harmless

    with StateLock(state):
        assert is_locked(state)
        with pytest.raises(StateLockedError):
            StateLock(state).acquire()
    assert not is_locked(state)
    with StateLock(state):
        pass


def test_the_lock_is_released_when_the_body_raises(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with pytest.raises(KeyError), StateLock(state):
        raise KeyError("boom")
    assert not is_locked(state)


def test_is_locked(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert not is_locked(state)  # no directory at all
    state.mkdir()
    assert not is_locked(state)  # no lock file
    with StateLock(state):
        assert is_locked(state)
    assert (state / LOCK_FILE).exists()
    assert not is_locked(state)  # the file stays, the lock does not


def test_a_lock_held_by_another_process_names_its_pid(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    state = tmp_path / "state"
    assert is_locked(state)
    with pytest.raises(StateLockedError, match=rf"\(pid {holder.pid}, started "):
        StateLock(state).acquire()


def test_a_lock_held_by_a_sigkilled_process_is_free_afterwards(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    state = tmp_path / "state"
    assert is_locked(state)

    holder.send_signal(signal.SIGKILL)
    assert holder.wait(timeout=120) == -signal.SIGKILL

    assert not is_locked(state)
    with StateLock(state, "rowpilot run again"):
        assert is_locked(state)
        info = json.loads((state / LOCK_FILE).read_text())
        assert info["pid"] == os.getpid()  # the dead holder's record was replaced
