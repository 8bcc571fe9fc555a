"""One run at a time per state directory: an advisory lock the kernel drops on exit.

flock is released when the process dies, even by SIGKILL, so a crashed run never leaves
a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from pathlib import Path
from types import TracebackType

from rowpilot.errors import StateError, StateLockedError

LOCK_FILE = "lock"


class StateLock:
    """Holds the state directory for one run; refuses a second with who holds it."""

    def __init__(self, directory: Path, command: str = "") -> None:
        self.directory = directory
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _unusable(self.directory, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StateLockedError(
                f"another run is using {self.directory}{holder}",
                hint="wait for it to finish or stop it; to run side by side, give each run "
                "its own --state (or use --shard K/N) and `rowpilot merge` them after",
            ) from None
        info = {"pid": os.getpid(), "started_at": time.time(), "command": self.command}
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
        except OSError as exc:
            os.close(fd)
            raise _unusable(self.directory, exc) from exc
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _unusable(directory: Path, exc: OSError) -> StateError:
    """The state folder cannot hold a lock: say why in one line."""
    if isinstance(exc, FileExistsError | NotADirectoryError):
        return StateError(
            f"the state path {directory} is (or runs through) a file, not a folder",
            hint="pass --state with a folder",
        )
    if isinstance(exc, IsADirectoryError):
        return StateError(
            f"{directory / LOCK_FILE} is a folder: it is where rowpilot keeps its lock",
            hint=f"move {directory / LOCK_FILE} away, or pass --state with another folder",
        )
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StateError(
            f"the state folder {directory} is read-only",
            hint="make it writable, or pass --state with a writable folder",
        )
    return StateError(
        f"cannot lock the state folder {directory}: {exc.strerror or exc}",
        hint="check the disk and the folder, or pass --state with another folder",
    )


def is_locked(directory: Path) -> bool:
    """True while a run holds the directory."""
    path = directory / LOCK_FILE
    if not path.is_file():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # unreadable: no run of ours could hold it either
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return ""
    if not info.get("pid"):
        return ""
    started = time.strftime("%H:%M:%S", time.localtime(info.get("started_at", 0)))
    return f" (pid {info['pid']}, started {started})"
