"""A failure of the state folder (the registry, its vector files, crash records) as one
line that says what to do."""

from __future__ import annotations

import errno
from pathlib import Path

from rowpilot.errors import StateError

_DISK_FULL = ("database or disk is full", "no space left")
_DAMAGED = ("malformed", "not a database", "file is encrypted")
_READ_ONLY = ("readonly database", "read-only file system", "permission denied")


def state_error(exc: BaseException, path: Path, doing: str) -> StateError:
    """A registry or state-folder failure as one line that says what to do."""
    text = str(exc).lower()
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC or any(part in text for part in _DISK_FULL):
        return StateError(
            f"cannot {doing} {path}: the disk is full",
            hint="free some space, then run the same command again: everything committed "
            "so far is kept",
        )
    if any(part in text for part in _DAMAGED):
        return StateError(
            f"{path} is damaged or is not a rowpilot registry ({exc})",
            hint="restore it from a copy (sqlite3 registry.sqlite .recover saves what is "
            "readable), or point --state at another folder",
        )
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) or any(p in text for p in _READ_ONLY):
        return StateError(
            f"cannot {doing} {path}: its folder is read-only",
            hint="make the state folder writable, or pass --state with a writable folder",
        )
    return StateError(
        f"cannot {doing} {path}: {exc}",
        hint="check the disk and the state folder, then run the same command again",
    )
