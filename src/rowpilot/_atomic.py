"""Atomic file writes, and the up-front check that an output path can be written.

A file written through :func:`atomic_write` is either the complete new file or the old one:
the data goes to a temporary file in the same directory, which replaces the target with
``os.replace`` only once everything has been written. A crash or an exception mid-write
leaves the old file (or no file) and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any, Literal, overload

from rowpilot.errors import OutputPathError

__all__ = ["atomic_write", "check_writable", "write_bytes_atomic", "write_text_atomic"]

_UMASK_LOCK = threading.Lock()


@overload
def atomic_write(
    path: Path,
    mode: Literal["w"] = "w",
    *,
    encoding: str = "utf-8",
    newline: str | None = None,
    fsync: bool = True,
) -> AbstractContextManager[IO[str]]: ...


@overload
def atomic_write(
    path: Path,
    mode: Literal["wb"],
    *,
    encoding: str = "utf-8",
    newline: str | None = None,
    fsync: bool = True,
) -> AbstractContextManager[IO[bytes]]: ...


@contextlib.contextmanager
def atomic_write(
    path: Path,
    mode: Literal["w", "wb"] = "w",
    *,
    encoding: str = "utf-8",
    newline: str | None = None,
    fsync: bool = True,
) -> Iterator[IO[Any]]:
    """Open a temporary file that replaces ``path`` when the ``with`` block succeeds.

    ``encoding`` and ``newline`` apply to text mode only. An exception raised inside the
    block removes the temporary file and propagates unchanged; a failure to create,
    finish or move the file itself is raised as :class:`OutputPathError`.
    """
    path = Path(path)
    handle = _open_temp(path, mode, encoding, newline)
    temp_path = Path(handle.name)
    try:
        yield handle
    except BaseException:
        _discard(handle, temp_path)
        raise
    try:
        _commit(handle, temp_path, path, fsync)
    except BaseException as exc:
        _discard(handle, temp_path)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from exc
        raise


def write_text_atomic(
    path: Path, text: str, *, encoding: str = "utf-8", fsync: bool = True
) -> None:
    """Replace ``path`` with ``text`` atomically."""
    with atomic_write(path, "w", encoding=encoding, fsync=fsync) as handle:
        handle.write(text)


def write_bytes_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_write(path, "wb", fsync=fsync) as handle:
        handle.write(data)


def check_writable(path: Path, *, what: str = "output") -> None:
    """Raise :class:`OutputPathError` if ``path`` cannot be written; create nothing.

    Meant to run before a run starts, so a bad output path fails in a second rather
    than after hours of paid work.
    """
    path = Path(path)
    parent = path.parent
    if not parent.exists():
        raise OutputPathError(
            f"the folder of the {what} file does not exist: {parent}",
            hint=f"create it first (mkdir -p {parent}) or choose another {what} path",
            file=str(path),
        )
    if not parent.is_dir():
        raise OutputPathError(
            f"the {what} path runs through {parent}, which is a file, not a folder",
            hint=f"choose an {what} path inside a folder",
            file=str(path),
        )
    _check_existing_target(path, what)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"no permission to create files in the folder of the {what}: {parent}",
            hint=f"make {parent} writable or choose another {what} path",
            file=str(path),
        )


def _check_existing_target(path: Path, what: str) -> None:
    if path.is_dir():
        raise OutputPathError(
            f"the {what} path is an existing folder",
            hint=f"give a file name inside it, e.g. {path / 'results.csv'}",
            file=str(path),
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(
            f"the {what} file exists and is read-only",
            hint=f"make it writable (chmod u+w {path}) or choose another {what} path",
            file=str(path),
        )


def _open_temp(path: Path, mode: Literal["w", "wb"], encoding: str, newline: str | None) -> IO[Any]:
    is_text = mode == "w"
    try:
        return tempfile.NamedTemporaryFile(
            mode,
            delete=False,
            dir=path.parent,
            prefix=f".{path.name}.",
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
    reason = exc.strerror or str(exc)
    return OutputPathError(
        f"cannot write the file: {reason}",
        hint="check that the folder exists, is writable and has free space",
        file=str(path),
    )
