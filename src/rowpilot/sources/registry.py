"""Which source reads an input: registered kinds, chosen by URL scheme, then by ``--format``
or the file's suffix; a folder is a :class:`FolderSource`, a DataFrame or an iterable an
in-memory source; an object that already is a ``Source`` (it has ``chunks`` and
``reiterable``: ``rowpilot compare``'s sample) is read as it is.

A new kind of file or URL is one opener (:data:`Opener`) and one :func:`register_source`
call; see "How to add a source" in docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import io
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rowpilot._targets import normal_schemes, normal_suffixes, scheme_of, suffix_of
from rowpilot.errors import ConfigError, SourceNotFoundError
from rowpilot.sources.base import DEFAULT_ENCODING, Opener, Source, SourceOptions
from rowpilot.sources.csv import open_csv, open_tsv
from rowpilot.sources.excel import open_excel
from rowpilot.sources.folder import FolderSource
from rowpilot.sources.gsheet import open_gsheet
from rowpilot.sources.jsonl import open_jsonl
from rowpilot.sources.memory import DataFrameSource, IterableSource
from rowpilot.sources.parquet import open_parquet

if TYPE_CHECKING:  # imported where used: the CLI starts without loading pandas
    import pandas as pd


@dataclass(frozen=True)
class SourceKind:
    """A registered kind of source: its opener and what selects it."""

    opener: Opener
    formats: tuple[str, ...]  # names for --format
    suffixes: tuple[str, ...]  # lowercase, with the dot
    schemes: tuple[str, ...]  # lowercase, without "://"
    reads: frozenset[str] = frozenset()  # which of KIND_OPTIONS its opener uses


# Options only some kinds read: given to any other, they would be silently dropped.
KIND_OPTIONS = {"sheet": "--sheet", "header_row": "--header-row", "credentials": "--credentials"}

_KINDS: list[SourceKind] = []


def register_source(
    opener: Opener,
    *,
    suffixes: Sequence[str] = (),
    schemes: Sequence[str] = (),
    formats: Sequence[str] | None = None,
    reads: Sequence[str] = (),
) -> SourceKind:
    """Let ``open_source`` read files with these suffixes, or URLs with these schemes,
    through ``opener``. ``formats`` are the names ``--format`` accepts for it (by default
    the suffixes without their dot). ``reads`` names the options of ``KIND_OPTIONS``
    its opener uses; given to a kind that does not read them they are an error. A later
    registration wins over an earlier one for the same suffix, scheme or format. Returns
    the kind, for :func:`unregister_source`."""
    kind = SourceKind(
        opener,
        formats=tuple(_lowered(formats if formats is not None else _bare(suffixes))),
        suffixes=normal_suffixes(suffixes),
        schemes=normal_schemes(schemes),
        reads=frozenset(reads),
    )
    _KINDS.append(kind)
    return kind


def unregister_source(kind: SourceKind) -> None:
    """Forget a kind that :func:`register_source` returned (a plugin unloaded, a test)."""
    _KINDS.remove(kind)


def open_source(
    source: str | os.PathLike[str] | pd.DataFrame | Iterable[Mapping[str, Any]],
    *,
    format: str | None = None,
    encoding: str | None = None,
    trust_quotes: bool = False,
    follow_symlinks: bool = False,
    credentials: str | os.PathLike[str] | None = None,
    sheet: str | None = None,
    header_row: int | None = None,
) -> Source:
    """Open ``source`` for reading. ``format`` and ``encoding`` only apply to paths.

    A URL whose scheme is registered goes to that kind. Otherwise the format comes from
    ``format`` ("csv", "tsv", "jsonl", "parquet" or a registered one) or else from the
    suffix. Text files default to "utf-8-sig", which also reads plain UTF-8. A folder is
    a :class:`FolderSource` (one row per file); there ``format`` selects the files to
    read: a glob ("*.json") or a suffix ("json").
    ``trust_quotes`` reads a CSV file's quoted values that span lines even where they look
    like swallowed rows (see :class:`CsvSource`). ``follow_symlinks`` reads a folder's
    symlinks to files outside it (see :class:`FolderSource`). ``sheet`` names a workbook's
    sheet and ``header_row`` (1-based) its header row (see :class:`ExcelSource`).
    ``credentials`` is the credentials file of a Google Sheets source (see
    ``rowpilot._gsheet``).
    See the package docstring for which errors are raised here and which from ``chunks()``.
    """
    if isinstance(source, str | os.PathLike):
        options = SourceOptions(
            format=format,
            encoding=_checked_encoding(encoding or DEFAULT_ENCODING),
            trust_quotes=trust_quotes,
            follow_symlinks=follow_symlinks,
            credentials=os.fspath(credentials) if credentials is not None else None,
            sheet=sheet,
            header_row=_checked_header_row(header_row),
        )
        return _open_path(os.fspath(source), options)
    if _is_source(source):  # a source made by rowpilot itself (compare's sample)
        return source  # type: ignore[return-value]  # the Source protocol, checked by duck
    pandas = sys.modules.get("pandas")  # a DataFrame caller has pandas loaded already
    if pandas is not None and isinstance(source, pandas.DataFrame):
        return DataFrameSource(source)
    if isinstance(source, bytes | Mapping) or not isinstance(source, Iterable):
        raise ConfigError(
            f"cannot read rows from a {type(source).__name__}",
            hint="pass a file path, a pandas DataFrame or an iterable of dicts",
        )
    return IterableSource(source)  # type: ignore[arg-type]  # a DataFrame returned above


def _is_source(value: Any) -> bool:
    return callable(getattr(value, "chunks", None)) and hasattr(value, "reiterable")


def supported_formats() -> list[str]:
    """The ``--format`` names, in registration order."""
    return list(dict.fromkeys(name for kind in _KINDS for name in kind.formats))


def _open_path(name: str, options: SourceOptions) -> Source:
    by_scheme = _kind_for_scheme(name)
    if by_scheme is not None:
        _check_options_read(name, options, by_scheme.reads)
        return by_scheme.opener(name, options)
    if os.path.isdir(name):
        _check_options_read(name, options, frozenset())
        return FolderSource(
            name, options.encoding, pattern=options.format, follow_symlinks=options.follow_symlinks
        )
    chosen = _kind_for_format(options.format)
    _require_file(name)
    kind = chosen or _kind_for_suffix(name)
    _check_options_read(name, options, kind.reads)
    lowered = None if options.format is None else options.format.lower()
    return kind.opener(name, dataclasses.replace(options, format=lowered))


def _check_options_read(name: str, options: SourceOptions, reads: frozenset[str]) -> None:
    unread = [
        flag
        for option, flag in KIND_OPTIONS.items()
        if getattr(options, option) is not None and option not in reads
    ]
    if not unread:
        return
    them = "it" if len(unread) == 1 else "them"
    readers = "a Google Sheet" if unread == ["--credentials"] else "a workbook or a Google Sheet"
    raise ConfigError(
        f"{' and '.join(unread)} would do nothing here: only {readers} uses {them}",
        file=name,
        hint=f"drop {them}, or read an .xlsx file or a gsheet:// address",
    )


def _kind_for_scheme(name: str) -> SourceKind | None:
    scheme = scheme_of(name)
    if scheme is None:
        return None
    # An unregistered scheme stays a path, as it always was: "no such file" names it.
    return next((kind for kind in reversed(_KINDS) if scheme in kind.schemes), None)


def _kind_for_format(format: str | None) -> SourceKind | None:
    if format is None:
        return None
    found = next((kind for kind in reversed(_KINDS) if format.lower() in kind.formats), None)
    if found is None:
        raise ConfigError(
            f"unknown format {format!r}", hint=f"use one of: {', '.join(supported_formats())}"
        )
    return found


def _kind_for_suffix(name: str) -> SourceKind:
    suffix = suffix_of(name)
    found = next((kind for kind in reversed(_KINDS) if suffix in kind.suffixes), None)
    if found is not None:
        return found
    what = f"suffix {suffix!r}" if suffix else "file name (it has no suffix)"
    raise ConfigError(
        f"cannot tell the format from the {what}",
        file=name,
        hint=f"pass --format with one of: {', '.join(supported_formats())}",
    )


def _checked_encoding(encoding: str) -> str:
    try:
        with io.TextIOWrapper(io.BytesIO(), encoding=encoding):  # also rejects base64 & co
            pass
    except LookupError:
        raise ConfigError(
            f"unknown encoding {encoding!r}",
            hint="use a Python codec name such as utf-8, latin-1, cp1252 or utf-16",
        ) from None
    return encoding


def _checked_header_row(header_row: int | None) -> int | None:
    if header_row is not None and (isinstance(header_row, bool) or header_row < 1):
        raise ConfigError(
            f"--header-row must be a row number from 1, not {header_row!r}",
            hint="count rows as the spreadsheet does: the first row is 1",
        )
    return header_row


def _require_file(name: str) -> None:
    if not os.path.exists(name):
        raise SourceNotFoundError(
            "no such file",
            file=name,
            hint=f"check the path; the working directory is {os.getcwd()}",
        )


def _bare(suffixes: Sequence[str]) -> list[str]:
    return [suffix.lstrip(".") for suffix in suffixes]


def _lowered(names: Iterable[str]) -> list[str]:
    return [name.lower() for name in names]


register_source(open_csv, suffixes=(".csv", ".txt"), formats=("csv",))
register_source(open_tsv, suffixes=(".tsv",), formats=("tsv",))
register_source(open_jsonl, suffixes=(".jsonl", ".ndjson"), formats=("jsonl",))
register_source(open_parquet, suffixes=(".parquet", ".pq"), formats=("parquet",))
register_source(
    open_excel,
    suffixes=(".xlsx", ".xlsm"),
    formats=("excel", "xlsx"),
    reads=("sheet", "header_row"),
)
# A sheet's browser address is an https URL: the opener refuses any other.
register_source(open_gsheet, schemes=("gsheet", "https"), formats=(), reads=tuple(KIND_OPTIONS))
