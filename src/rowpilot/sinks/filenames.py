"""Safe, stable file names for the "one JSON file per key" export.

Item keys are arbitrary strings: any unicode, slashes, "..", control characters, Windows
device names, thousands of characters. :func:`safe_stem` turns a key into a portable file
name stem, keeping plain keys readable (``C0018099`` stays ``C0018099``) and tagging every
other key with a hash of the original so distinct keys never share a stem.

:class:`KeyFileNamer` adds what one key cannot know alone: uniqueness on case-insensitive
file systems, and stability across exports through the ``_index.jsonl`` mapping file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain, count
from pathlib import Path
from typing import Any

from rowpilot.errors import OutputPathError
from rowpilot.sinks.atomic import write_text_atomic

__all__ = ["INDEX_FILE_NAME", "KeyFileNamer", "key_hash", "safe_stem"]

INDEX_FILE_NAME = "_index.jsonl"
FILE_SUFFIX = ".json"

_MAX_PLAIN_LENGTH = 100
_MAX_MANGLED_PREFIX = 80
_HASH_CHARS = 10
_PLAIN_KEY = re.compile(r"[A-Za-z0-9._-]+")
_DISALLOWED_CHAR = re.compile(r"[^A-Za-z0-9._-]")
_OWN_FILE_NAME = re.compile(r"[A-Za-z0-9~][A-Za-z0-9._~-]*\.json")
_WINDOWS_DEVICE_NAMES = frozenset(
    ["CON", "PRN", "AUX", "NUL"]
    + [f"COM{digit}" for digit in range(1, 10)]
    + [f"LPT{digit}" for digit in range(1, 10)]
)


def key_hash(key: str) -> str:
    """The first 10 hex characters of blake2b over the key's UTF-8 bytes."""
    # surrogatepass: keys decoded with surrogateescape must still hash, not crash.
    data = key.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data).hexdigest()[:_HASH_CHARS]


def safe_stem(key: str) -> str:
    """A file name stem for ``key``: portable, never empty, never a path.

    Plain keys (ASCII letters, digits, ``.``, ``_``, ``-``; no leading ``.``/``_``/``-``,
    no trailing ``.``; no Windows device name; at most 100 characters) map to themselves.
    Every other key is sanitised, truncated to 80 characters and suffixed with
    ``~`` + :func:`key_hash`, so it cannot equal a plain key (which has no ``~``) nor
    another mangled key (unless their hashes collide).
    """
    if _is_plain(key):
        return key
    sanitised = _DISALLOWED_CHAR.sub("_", key).lstrip("._-")[:_MAX_MANGLED_PREFIX]
    return f"{_defuse_device_name(sanitised)}~{key_hash(key)}"


def _is_plain(key: str) -> bool:
    return (
        len(key) <= _MAX_PLAIN_LENGTH
        and _PLAIN_KEY.fullmatch(key) is not None
        and not key.startswith((".", "_", "-"))
        and not key.endswith(".")
        and not _is_device_name(key)
    )


def _is_device_name(stem: str) -> bool:
    # Windows treats "con.txt" and "con.tar.gz" like "CON": only the part before the
    # first dot counts.
    return stem.split(".", 1)[0].upper() in _WINDOWS_DEVICE_NAMES


def _defuse_device_name(sanitised: str) -> str:
    # "aux.txt" + "~hash" would still open the AUX device on Windows; "CON" + "~hash"
    # would not, since without a dot the hash is part of the device-name position.
    if "." not in sanitised or not _is_device_name(sanitised):
        return sanitised
    device, dot, rest = sanitised.partition(".")
    return f"{device}_{dot}{rest}"


@dataclass(slots=True)
class _Assignment:
    file: str
    fingerprint: str | None


class KeyFileNamer:
    """Assigns each key a file name ``<stem>.json``, unique and stable.

    Names are unique under casefold, so "Abc" and "abc" get different files on macOS and
    Windows too: a key whose natural name is taken by another key gets ``~`` + its hash
    appended. Once assigned, a key keeps its name: :meth:`load` reads the assignments
    (and the fingerprint of each written file) that :meth:`save` stored in
    ``_index.jsonl``, a name no key's file can have because stems never start with ``_``.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._assignments: dict[str, _Assignment] = {}
        self._key_by_folded_name: dict[str, str] = {}

    @property
    def index_path(self) -> Path:
        """Where the key-to-file mapping is stored."""
        return self.directory / INDEX_FILE_NAME

    @classmethod
    def load(cls, directory: Path) -> KeyFileNamer:
        """The namer with the assignments of the previous export in ``directory``, if any."""
        namer = cls(directory)
        if namer.index_path.is_file():
            namer._load_index()
        return namer

    def file_name(self, key: str) -> str:
        """The file name of ``key``, assigning a new one on first request."""
        assignment = self._assignments.get(key)
        if assignment is None:
            assignment = _Assignment(self._free_name(key), None)
            self._remember(key, assignment)
        return assignment.file

    def fingerprint(self, key: str) -> str | None:
        """The fingerprint recorded for ``key``'s file, or None if never written."""
        assignment = self._assignments.get(key)
        return None if assignment is None else assignment.fingerprint

    def set_fingerprint(self, key: str, fingerprint: str) -> None:
        """Record what ``key``'s file now holds (assigning its name if needed)."""
        self.file_name(key)
        self._assignments[key].fingerprint = fingerprint

    def save(self) -> None:
        """Write the mapping to ``_index.jsonl`` atomically."""
        write_text_atomic(self.index_path, "".join(self._index_lines()))

    def __len__(self) -> int:
        return len(self._assignments)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """(key, file name) pairs in assignment order."""
        return ((key, item.file) for key, item in self._assignments.items())

    def _free_name(self, key: str) -> str:
        stem = safe_stem(key)
        tagged = f"{stem}~{key_hash(key)}"
        # Past the hash, a counter: only a 40-bit hash collision ever gets that far.
        fallbacks = (f"{tagged}~{number}" for number in count(2))
        for candidate in chain([stem, tagged], fallbacks):
            name = candidate + FILE_SUFFIX
            if name.casefold() not in self._key_by_folded_name:
                return name
        raise AssertionError("unreachable: the candidates never run out")

    def _remember(self, key: str, assignment: _Assignment) -> None:
        self._assignments[key] = assignment
        self._key_by_folded_name[assignment.file.casefold()] = key

    def _index_lines(self) -> Iterator[str]:
        for key, item in self._assignments.items():
            entry = {"key": key, "file": item.file, "fingerprint": item.fingerprint}
            # ASCII escapes keep the index writable and parseable for any key,
            # including lone surrogates and U+2028 line separators.
            yield json.dumps(entry, ensure_ascii=True) + "\n"

    def _load_index(self) -> None:
        text = self.index_path.read_text(encoding="utf-8")
        for line_number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                key, assignment = self._parse_entry(line, line_number)
                self._check_consistent(key, assignment, line_number)
                self._remember(key, assignment)

    def _parse_entry(self, line: str, line_number: int) -> tuple[str, _Assignment]:
        try:
            entry: Any = json.loads(line)
            key, file, fingerprint = entry["key"], entry["file"], entry["fingerprint"]
        except (ValueError, TypeError, KeyError) as exc:
            raise self._index_error(line_number, "is not a valid index entry") from exc
        valid_types = isinstance(key, str) and isinstance(fingerprint, str | None)
        if not (valid_types and isinstance(file, str) and _is_own_file_name(file)):
            raise self._index_error(line_number, "is not a valid index entry")
        return key, _Assignment(file, fingerprint)

    def _check_consistent(self, key: str, assignment: _Assignment, line_number: int) -> None:
        owner = self._key_by_folded_name.get(assignment.file.casefold())
        if key in self._assignments or (owner is not None and owner != key):
            raise self._index_error(line_number, "repeats a key or a file name")

    def _index_error(self, line_number: int, problem: str) -> OutputPathError:
        return OutputPathError(
            f"the export's file index {problem}",
            hint=(
                f"restore {INDEX_FILE_NAME} or export into a new, empty folder; "
                "rowpilot will not guess which file belongs to which key"
            ),
            file=str(self.index_path),
            line=line_number,
        )


def _is_own_file_name(file: str) -> bool:
    # The index decides where files are written: an edited index must not be able to
    # point outside the directory or onto the index itself.
    return _OWN_FILE_NAME.fullmatch(file) is not None
