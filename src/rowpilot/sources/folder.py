"""A folder of files, one row per file."""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from rowpilot.errors import EmptySourceError, SourceEncodingError, SourceError, SourceFormatError
from rowpilot.sources.base import Row, RowStream, checked_size, chunked, open_binary
from rowpilot.sources.text import line_of_bad_bytes

FOLDER_COLUMNS = ["path", "name", "suffix", "size", "text"]
SHOWN = 10  # symlinks named in a notice; more are counted
FOLDER_HINT = (
    "pass --encoding with the files' real encoding, or read only the text files with "
    "--format (a glob such as '*.json', or a suffix)"
)


@dataclass(frozen=True)
class _FileEntry:
    relative: str  # '/'-separated, relative to the folder: the row's ``path`` and key
    full: str
    size: int


class FolderSource:
    """A folder of files, one row per file: ``path``, ``name``, ``suffix``, ``size``, ``text``.

    Files are found recursively, directory by directory in sorted name order (so the order
    is the sort of the paths' component lists, the same on every platform and every run).
    Names starting with "." are skipped, files and folders alike: a state directory kept
    inside the folder (``.rowpilot``) or an editor's swap file is not input. Symlinks to
    files in the folder are read; a symlink to a file outside it (its resolved path is not
    under the folder's) is skipped, so that a link cannot pull ``/etc/passwd`` into the
    run, and named by ``notices()``; ``follow_symlinks=True`` (``--follow-symlinks``)
    reads those too. Symlinks to folders are never followed (they could loop). ``pattern``
    keeps only matching files: a glob matched case-sensitively against the file name, or
    against the relative path when it holds a "/"; or a bare suffix ("json", ".json"),
    matched in any case.

    ``path`` is the natural key, named by ``default_key`` (pass ``--key path``): unlike the
    row number it does not shift when a file is added. ``text`` is the whole file decoded
    with ``encoding``; a file that does not decode, or decodes to NUL characters (a binary
    file), is a SourceEncodingError naming it. Rows are read a file at a time, so memory
    holds one chunk's texts; listing holds one directory's names per level being walked.
    """

    reiterable = True
    default_key = "path"

    def __init__(
        self,
        path: str,
        encoding: str,
        pattern: str | None = None,
        *,
        follow_symlinks: bool = False,
    ) -> None:
        self.name = path
        self._encoding = encoding
        self._match = _file_matcher(pattern)
        self._pattern = pattern
        self._follow_symlinks = follow_symlinks
        self._real_path = os.path.realpath(path)
        self._outside: dict[str, str] = {}  # skipped symlinks, relative path -> target
        if next(self._files(), None) is None:  # stops at the first file: cheap on any tree
            raise self._empty()

    def columns(self) -> list[str]:
        return list(FOLDER_COLUMNS)

    def chunks(self, size: int = 1024) -> Iterator[list[Row]]:
        return chunked(self._rows(), checked_size(size), self._empty())

    def notices(self) -> list[str]:
        """One-line warnings about what the passes so far skipped: symlinks to files outside
        the folder (each named once, however many passes saw it)."""
        if not self._outside:
            return []
        return [_outside_notice(self.name, self._outside)]

    def _empty(self) -> EmptySourceError:
        if self._outside:
            return EmptySourceError(
                "is a folder whose only files to read are symlinks that point outside it",
                file=self.name,
                hint=_outside_notice(self.name, self._outside),
            )
        if self._pattern is None:
            return EmptySourceError(
                "is a folder with no files to read (names starting with '.' are skipped)",
                file=self.name,
                hint="put the input files in it, or pass the path of one input file",
            )
        return EmptySourceError(
            f"is a folder with no file matching {self._pattern!r}",
            file=self.name,
            hint="check --format: a glob such as '*.json' (against the file name), or a suffix",
        )

    def _rows(self) -> RowStream:
        for index, entry in enumerate(self._files()):
            yield index, None, self._row(index, entry)

    def _row(self, index: int, entry: _FileEntry) -> dict[str, Any]:
        name = entry.relative.rpartition("/")[2]
        return {
            "path": entry.relative,
            "name": name,
            "suffix": Path(name).suffix,
            "size": entry.size,
            "text": self._text(index, entry),
        }

    def _text(self, index: int, entry: _FileEntry) -> str:
        with open_binary(entry.full) as file:
            data = file.read()
        try:
            text = data.decode(self._encoding)
        except UnicodeDecodeError:
            line = line_of_bad_bytes(entry.full, self._encoding)
            raise SourceEncodingError(
                f"bytes that do not decode as {self._encoding}",
                file=entry.full,
                row=index,
                line=line,
                hint=FOLDER_HINT,
            ) from None
        if "\0" in text:  # decodes, but as text it is noise: a binary file or UTF-16 as UTF-8
            raise SourceEncodingError(
                f"holds NUL characters when read as {self._encoding}: a binary file, or "
                "another encoding",
                file=entry.full,
                row=index,
                line=text.count("\n", 0, text.index("\0")) + 1,
                hint=FOLDER_HINT,
            )
        return text

    def _files(self) -> Iterator[_FileEntry]:
        return self._walk(self.name, "")

    def _walk(self, folder: str, prefix: str) -> Iterator[_FileEntry]:
        for entry in self._listing(folder):
            relative = prefix + _utf8_name(entry, prefix, self.name)
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(entry.path, relative + "/")
            elif self._match(relative):
                size = _file_size(entry)
                if size is not None and not self._points_outside(entry, relative):
                    yield _FileEntry(relative, entry.path, size)

    def _points_outside(self, entry: os.DirEntry[str], relative: str) -> bool:
        """Whether ``entry`` is a symlink to skip; if so, remember it for ``notices()``."""
        if self._follow_symlinks or not entry.is_symlink():
            return False  # a walked entry that is no symlink is in the folder
        if _is_within(os.path.realpath(entry.path), self._real_path):
            return False
        self._outside.setdefault(relative, _link_target(entry.path))
        return True

    def _listing(self, folder: str) -> list[os.DirEntry[str]]:
        """The folder's visible entries in name order (one directory's names in memory)."""
        try:
            with os.scandir(folder) as entries:
                visible = [entry for entry in entries if not entry.name.startswith(".")]
        except OSError as error:
            raise SourceError(
                f"the folder cannot be read: {error.strerror}",
                file=folder,
                hint="check its permissions",
            ) from None
        return sorted(visible, key=lambda entry: entry.name)


def _is_within(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # on another drive (Windows)
        return False


def _link_target(path: str) -> str:
    """The target as the link holds it (``../x``), to show the user what they wrote."""
    try:
        return os.readlink(path)
    except OSError:  # replaced since it was listed
        return os.path.realpath(path)


def _outside_notice(folder: str, links: dict[str, str]) -> str:
    shown = ", ".join(f"{path} -> {target}" for path, target in islice(links.items(), SHOWN))
    more = f" and {len(links) - SHOWN} more" if len(links) > SHOWN else ""
    what = "symlink that points" if len(links) == 1 else "symlinks that point"
    return (
        f"skipped {len(links)} {what} outside {folder.rstrip('/')}/: {shown}{more} "
        "(pass --follow-symlinks to read them)"
    )


def _file_matcher(pattern: str | None) -> Callable[[str], bool]:
    """Which relative paths ``pattern`` keeps (see FolderSource)."""
    if pattern is None or not pattern.strip():
        return lambda _relative: True
    if not any(char in pattern for char in "*?[/"):  # a bare suffix: json or .json
        suffix = "." + pattern.strip().lstrip(".").lower()
        return lambda relative: relative.lower().endswith(suffix)
    if "/" in pattern:
        return lambda relative: fnmatch.fnmatchcase(relative, pattern)
    return lambda relative: fnmatch.fnmatchcase(relative.rpartition("/")[2], pattern)


def _utf8_name(entry: os.DirEntry[str], prefix: str, folder: str) -> str:
    """The entry's name, refused if it is not UTF-8: it could not be stored as a key."""
    try:
        entry.name.encode("utf-8")
    except UnicodeEncodeError:
        shown = prefix + entry.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        raise SourceFormatError(
            f"the file name {shown!r} is not valid UTF-8",
            file=folder,
            hint="rename the file (keys and outputs are text)",
        ) from None
    return entry.name


def _file_size(entry: os.DirEntry[str]) -> int | None:
    """The size of a regular file (a symlink followed), else None: sockets, FIFOs, broken
    links and the like are not input."""
    try:
        status = entry.stat()
    except OSError:
        return None
    return status.st_size if stat.S_ISREG(status.st_mode) else None
