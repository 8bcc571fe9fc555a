"""What picks a kind of source or sink from its path or URL: the scheme, else the suffix.
Shared by the source and sink registries, so both read a target the same way."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

# An RFC 3986 scheme followed by "//": a Windows drive ("C:\\data.csv") is no URL.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme_of(target: str) -> str | None:
    """``"toy"`` for ``"TOY://x"``; None for a plain path."""
    found = _SCHEME.match(target)
    return None if found is None else found.group(1).lower()


def suffix_of(target: str) -> str:
    """The lowercased suffix with its dot (``".csv"``), or ``""``."""
    return Path(target).suffix.lower()


def normal_suffixes(suffixes: Iterable[str]) -> tuple[str, ...]:
    """``"CSV"``, ``".csv"`` → ``".csv"``: how registrations are compared with targets."""
    return tuple("." + suffix.lower().lstrip(".") for suffix in suffixes)


def normal_schemes(schemes: Iterable[str]) -> tuple[str, ...]:
    """``"Toy"``, ``"toy://"`` → ``"toy"``."""
    return tuple(scheme.lower().removesuffix("://") for scheme in schemes)
