"""Vectors beside the registry: each run's raw float32 bytes appended to a file of its own,
``STATE/vectors/<run id>.f32``; the registry's row names where (``vector_at``,
``vector_len``, migration 0005) and its ``run_id`` names the file.

Why not in SQLite (as migration 0004 kept them): every byte written there goes through
the write-ahead log (a frame header and a checksum every page) and is copied again into
the database file at the checkpoint. For 100,000 256-dimension vectors that cost the
commit thread 0.43 s of its 0.96 s; appending the same bytes to a file costs 0.05 s, and
on two cores the commit thread shares the machine with the model (docs/benchmarks.md,
issue 13).

Durable as the registry is: a group's bytes are written (``os.write``: in the operating
system's cache, so a killed process loses nothing, as the registry's ``synchronous=NORMAL``
promises) before the transaction that names them commits. A crash between the two leaves
bytes at the end of the file that no row names, never a row naming bytes that are not
there. A run never appends to another run's file, so a resumed run starts a file of its
own. Readers check that the bytes a row names are all there (a file lost or cut short is
a one-line ``StateError``).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from itertools import accumulate
from pathlib import Path

from rowpilot.errors import StateError
from rowpilot.state._errors import state_error

FOLDER = "vectors"
SUFFIX = ".f32"
_SAFE_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class VectorFiles:
    """The vector files of one state folder: appends for the runs that write, reads for any."""

    def __init__(self, directory: Path) -> None:
        self.folder = directory / FOLDER
        self._appending: dict[str, int] = {}  # run id -> its file, opened for appending
        self._reading: dict[str, int] = {}

    def append(self, run_id: str, blobs: Sequence[bytes | None]) -> list[tuple[int, int] | None]:
        """Write the blobs end to end to the run's file; each one's (offset, length), None
        for a row without vectors. Written, not synced: see the module's note."""
        lengths = [0 if blob is None else len(blob) for blob in blobs]
        data = b"".join(blob for blob in blobs if blob)
        if not data:
            return [None] * len(blobs)
        handle = self._appending.get(run_id)
        if handle is None:
            handle = self._appending[run_id] = self._open_for_appending(run_id)
        try:
            written = os.write(handle, data)
            end = os.lseek(handle, 0, os.SEEK_CUR)  # O_APPEND: this write's own end
        except OSError as exc:
            raise state_error(exc, self._path(run_id), "write") from exc
        if written != len(data):  # only a full disk cuts a write to a file short
            raise state_error(OSError(28, "No space left on device"), self._path(run_id), "write")
        start = end - len(data)
        offsets = accumulate(lengths, initial=start)
        return [None if not n else (at, n) for at, n in zip(offsets, lengths, strict=False)]

    def read(self, run_id: str, at: int, length: int) -> bytes:
        """The ``length`` bytes at ``at`` of the run's file, all of them or a StateError."""
        handle = self._reading.get(run_id)
        if handle is None:
            handle = self._reading[run_id] = self._open_for_reading(run_id)
        try:
            data = os.pread(handle, length, at)
        except OSError as exc:
            raise state_error(exc, self._path(run_id), "read") from exc
        if len(data) != length:
            raise StateError(
                f"{self._path(run_id)} is shorter than the registry says: a row's vectors "
                f"end at byte {at + length:,}, the file at {at + len(data):,}",
                hint="restore the state folder from a copy, or run again with --force",
            )
        return data

    def shortfalls(self, ends: dict[str, int]) -> list[str]:
        """Of the runs' files the registry's rows point into (each with the end of the last
        bytes a row names), those missing or shorter, said in a line each."""
        found: list[str] = []
        for run_id, end in sorted(ends.items()):
            path = self._path(run_id)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                found.append(f"{path} is missing (rows name {end:,} bytes of it)")
                continue
            except OSError as exc:
                raise state_error(exc, path, "read") from exc
            if size < end:
                found.append(f"{path} holds {size:,} bytes, rows name {end:,}")
        return found

    def runs(self) -> set[str]:
        """The runs that have a file here."""
        if not self.folder.is_dir():
            return set()
        return {path.stem for path in self.folder.glob(f"*{SUFFIX}")}

    def remove_all_but(self, runs: set[str]) -> list[str]:
        """Remove the run files of runs not in ``runs`` (no row points into them any more:
        every row they wrote was redone by a later run), and copies a killed merge left.
        Only under the state's lock: no run or merge is writing here. Their names."""
        removed: list[str] = []
        if not self.folder.is_dir():
            return removed
        for path in sorted(self.folder.iterdir()):
            unfinished = path.name.startswith(".") and path.name.endswith(".part")
            if unfinished or (path.suffix == SUFFIX and path.stem not in runs):
                try:
                    path.unlink()
                except OSError as exc:
                    raise state_error(exc, path, "remove") from exc
                removed.append(path.name)
        return removed

    def copy_missing_to(self, folder: Path) -> None:
        """Copy this folder's run files into ``folder`` (a merge's shards): one it lacks, or
        holds only the start of (copied while that run still wrote); the longer of two where
        one starts the other. The same run id with other bytes is a StateError, never a file
        silently kept: rows would read the wrong vectors."""
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            copy = folder / FOLDER / path.name
            if copy.exists():
                ours, theirs = path.stat().st_size, copy.stat().st_size
                shorter, longer = (path, copy) if ours <= theirs else (copy, path)
                if not _starts_with(longer, shorter):
                    raise StateError(
                        f"{path} and {copy} hold different vectors for one run id",
                        hint="merge these states into separate folders: two runs share an id",
                    )
                if theirs >= ours:
                    continue  # the same bytes, or more of them
            copy.parent.mkdir(parents=True, exist_ok=True)
            partial = copy.with_name(f".{copy.name}.{os.getpid()}.part")
            shutil.copyfile(path, partial)
            os.replace(partial, copy)  # whole or absent: a killed copy is not a file

    def close(self) -> None:
        for handle in (*self._appending.values(), *self._reading.values()):
            os.close(handle)
        self._appending.clear()
        self._reading.clear()

    def _open_for_appending(self, run_id: str) -> int:
        path = self._path(run_id)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise state_error(exc, path, "write") from exc

    def _open_for_reading(self, run_id: str) -> int:
        path = self._path(run_id)
        try:
            return os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise StateError(
                f"{path} is missing: the registry names vectors written by run {run_id}",
                hint="copy the state folder whole (its vectors/ folder too), or run again "
                "with --force",
            ) from None
        except OSError as exc:
            raise state_error(exc, path, "read") from exc

    def _path(self, run_id: str) -> Path:
        if not _SAFE_RUN_ID.fullmatch(run_id):
            raise StateError(
                f"the registry names a run {run_id!r} that cannot be a file name",
                hint="the registry is damaged: restore it from a copy",
            )
        return self.folder / f"{run_id}{SUFFIX}"


def _starts_with(path: Path, start: Path) -> bool:
    """Whether the file ``path`` begins with the whole of the file ``start``."""
    with path.open("rb") as whole, start.open("rb") as head:
        while chunk := head.read(1 << 20):
            if whole.read(len(chunk)) != chunk:
                return False
    return True
