"""Atomic file writes, and the up-front check that an output path can be written.

A file written through :func:`atomic_write` is either the complete new file or the old one:
the data goes to a temporary file in the same directory, which replaces the target with
``os.replace`` only once everything has been written. An exception mid-write leaves the
old file (or no file) and no temporary file behind.

A process killed mid-write (SIGKILL, a power cut) cannot remove its temporary file, so
temporary names carry the writer's pid, ``.{name}.{pid}.{random}.tmp``, and the next
write to the same target removes those whose writer is no longer alive
(:func:`remove_stale_temps`). A temporary file of a live process is never touched.

Missing parent folders are created at write time, like ``mkdir -p``; :func:`check_writable`
refuses up front only what can never work.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any, Literal, overload

from rowpilot.errors import OutputPathError

__all__ = [
    "atomic_write",
    "check_writable",
    "remove_stale_temps",
    "write_bytes_atomic",
    "write_text_atomic",
]

_UMASK_LOCK = threading.Lock()
# tempfile's random part has no dot, so the name, pid and random part split unambiguously.
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>[1-9][0-9]{0,9})\.[A-Za-z0-9_]+\.tmp")
_SPACE_HINT = "free some space on that disk, or write the output to a folder on another disk"
_HINTS_BY_ERRNO = {
    errno.ENOSPC: _SPACE_HINT,
    errno.EDQUOT: "your disk quota is used up: " + _SPACE_HINT,
    errno.EFBIG: (
        "the file outgrew what this file system or a limit (ulimit -f) allows; "
        "write it to a folder on another file system"
    ),
    errno.EROFS: "that file system is read-only; write the output to another folder",
    errno.EACCES: "make the folder writable or write the output to another folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EEXIST: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "the path is an existing folder; give a file name inside it",
    errno.ENAMETOOLONG: "choose a shorter file name",
}
_DEFAULT_HINT = (
    "check that the disk has free space and works, or write the output to another folder"
)


@overload
def atomic_write(
    path: Path,
    mode: Literal["w"] = "w",
    *,
    encoding: str = "utf-8",
    newline: str | None = None,
    fsync: bool = True,
    sweep: bool = True,
) -> AbstractContextManager[IO[str]]: ...


@overload
def atomic_write(
    path: Path,
    mode: Literal["wb"],
    *,
    encoding: str = "utf-8",
    newline: str | None = None,
    fsync: bool = True,
    sweep: bool = True,
) -> AbstractContextManager[IO[bytes]]: ...


@contextlib.contextmanager
def atomic_write(
    path: Path,
    mode: Literal["w", "wb"] = "w",
    *,
    encoding: str = "utf-8",
    newline: str | None = None,
    fsync: bool = True,
    sweep: bool = True,
) -> Iterator[IO[Any]]:
    """Open a temporary file that replaces ``path`` when the ``with`` block succeeds.

    ``encoding`` and ``newline`` apply to text mode only. Missing parent folders are
    created. ``sweep`` first removes temporary files of ``path`` left by dead writers (one
    listing of the folder); pass False where the caller swept the whole folder already.

    An exception raised inside the block removes the temporary file; an :class:`OSError`
    (disk full, file too large, I/O error) is raised as :class:`OutputPathError` naming
    the file, with the original as ``__cause__``, any other exception propagates
    unchanged. A failure to create, finish or move the file is an OutputPathError too.
    """
    path = Path(path)
    handle = _open_temp(path, mode, encoding, newline, sweep)
    temp_path = Path(handle.name)
    try:
        yield handle
    except BaseException as exc:
        _discard(handle, temp_path)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from exc
        raise
    try:
        _commit(handle, temp_path, path, fsync)
    except BaseException as exc:
        _discard(handle, temp_path)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from exc
        raise


def write_text_atomic(
    path: Path, text: str, *, encoding: str = "utf-8", fsync: bool = True, sweep: bool = True
) -> None:
    """Replace ``path`` with ``text`` atomically."""
    with atomic_write(path, "w", encoding=encoding, fsync=fsync, sweep=sweep) as handle:
        handle.write(text)


def write_bytes_atomic(path: Path, data: bytes, *, fsync: bool = True, sweep: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_write(path, "wb", fsync=fsync, sweep=sweep) as handle:
        handle.write(data)


def remove_stale_temps(folder: Path, name: str | None = None) -> int:
    """Remove temporary files in ``folder`` whose writer is no longer alive; return how many.

    Only files named like :func:`atomic_write`'s temporary files count, and only those of
    target ``name`` when it is given. Never raises: a leftover that cannot be removed now
    is tried again on the next write.
    """
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    removed = 0
    for entry in entries:
        if _is_stale_temp(entry.name, name):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed += 1
    return removed


def _is_stale_temp(file_name: str, target_name: str | None) -> bool:
    match = _TEMP_NAME.fullmatch(file_name)
    if match is None or target_name not in (None, match["name"]):
        return False
    return not _is_alive(int(match["pid"]))


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        # PermissionError: another user's live process. OverflowError: no pid this
        # system can have, so not our file; keeping it is the safe answer either way.
        return True
    return True


# --- the up-front check -----------------------------------------------------------------


def check_writable(path: Path, *, what: str = "output", folder: bool = False) -> None:
    """Raise :class:`OutputPathError` if ``path`` can never be written; create nothing.

    Meant to run before a run starts, so a bad output path fails in a second rather
    than after hours of paid work. Missing folders on the way are fine (the write creates
    them); refused are a path through a regular file, an existing folder given as a file
    (with ``folder``, an existing file given as a folder), a read-only file, and a nearest
    existing folder that does not let us create anything in it.
    """
    path = Path(path)
    if folder and os.path.isdir(path):
        _check_permission(path, path, what)
        return
    ancestor = _nearest_existing_ancestor(path)
    if not os.path.isdir(ancestor):
        raise OutputPathError(
            f"the {what} path runs through {ancestor}, which is a file, not a folder",
            hint=f"choose a path inside a folder for the {what}",
            file=str(path),
        )
    if folder:
        _check_not_a_file(path, what)
    else:
        _check_existing_file(path, what)
    _check_permission(path, ancestor, what)


def _nearest_existing_ancestor(path: Path) -> Path:
    ancestor = path.parent
    # os.path.exists rather than Path.exists: a folder we may not search must end in the
    # permission error below, not in a raw PermissionError. The second condition stops
    # at the root (or ".") whatever happens to them.
    while not os.path.exists(ancestor) and ancestor.parent != ancestor:
        ancestor = ancestor.parent
    return ancestor


def _check_existing_file(path: Path, what: str) -> None:
    if os.path.isdir(path):
        raise OutputPathError(
            f"the {what} path is an existing folder",
            hint=f"give a file name inside it, e.g. {path / 'results.csv'}",
            file=str(path),
        )
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise OutputPathError(
            f"the {what} file exists and is read-only",
            hint=f"make it writable (chmod u+w {path}) or choose another {what} path",
            file=str(path),
        )


def _check_not_a_file(path: Path, what: str) -> None:
    if os.path.exists(path):
        raise OutputPathError(
            f"the {what} path is an existing file, not a folder",
            hint=f"choose a folder path that is not a file, or move {path} away",
            file=str(path),
        )


def _check_permission(path: Path, ancestor: Path, what: str) -> None:
    if os.access(ancestor, os.W_OK | os.X_OK):
        return
    missing = "" if ancestor in (path, path.parent) else f" (to create {path.parent})"
    raise OutputPathError(
        f"no permission to create files in {ancestor}{missing}, as the {what} needs",
        hint=f"make {ancestor} writable or choose another {what} path",
        file=str(path),
    )


# --- the temporary file -----------------------------------------------------------------


def _open_temp(
    path: Path, mode: Literal["w", "wb"], encoding: str, newline: str | None, sweep: bool
) -> IO[Any]:
    is_text = mode == "w"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if sweep:
            remove_stale_temps(path.parent, path.name)
        return tempfile.NamedTemporaryFile(
            mode,
            delete=False,
            dir=path.parent,
            prefix=f".{path.name}.{os.getpid()}.",
            suffix=".tmp",
            encoding=encoding if is_text else None,
            newline=newline if is_text else None,
        )
    except OSError as exc:
        raise _write_error(path, exc) from exc


def _commit(handle: IO[Any], temp_path: Path, path: Path, fsync: bool) -> None:
    handle.flush()
    if fsync:
        os.fsync(handle.fileno())
    handle.close()
    # tempfile creates files 0o600; a finished output should look like any other new file.
    os.chmod(temp_path, 0o666 & ~_current_umask())
    os.replace(temp_path, path)


def _discard(handle: IO[Any], temp_path: Path) -> None:
    # Cleanup must never mask the exception that brought us here.
    with contextlib.suppress(OSError):
        handle.close()
    with contextlib.suppress(OSError):
        temp_path.unlink(missing_ok=True)


def _current_umask() -> int:
    # os.umask can only be read by setting it, which briefly changes it for every thread;
    # Linux publishes it in /proc, so prefer that and swap only where it is missing.
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _write_error(path: Path, exc: OSError) -> OutputPathError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    return OutputPathError(
        f"cannot write the file: {reason}",
        hint=_HINTS_BY_ERRNO.get(exc.errno or 0, _DEFAULT_HINT),
        file=str(path),
    )
