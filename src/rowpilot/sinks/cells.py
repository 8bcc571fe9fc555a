"""Cells of a file a spreadsheet opens (CSV, Excel): every value as text, and text that a
spreadsheet would run as a formula neutralised (:func:`neutralise_cell`)."""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from rowpilot.engine.items import is_vector

__all__ = ["cell_text", "neutralise_cell"]

# Spreadsheets run a cell starting with these as a formula (CSV injection), also behind
# leading blanks; a cell starting with a tab or a line break is quoted whatever follows.
_FORMULA_STARTS = frozenset("=+-@")
_BREAK_STARTS = frozenset("\t\r\n")
# ASCII digits only: "-\u0663" (an Arabic-Indic three) is no number to a spreadsheet.
_PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def neutralise_cell(text: str) -> str:
    """``text`` as a spreadsheet cell that cannot start a formula.

    A text whose first character after any leading whitespace or control characters is
    ``=``, ``+``, ``-`` or ``@``, or that starts with a tab, CR or LF, gets a leading ``'``,
    which spreadsheets take as "this is text"; a plain number such as ``-5`` or
    ``+3.2e4`` (the whole text, no surrounding space) stays as it is. Removing that one
    ``'`` gives back the exact text. Meant for every cell and header cell of a file a
    spreadsheet may open.
    """
    if text[:1] in _BREAK_STARTS:
        return "'" + text
    first = _first_visible(text)
    if first in _FORMULA_STARTS and _PLAIN_NUMBER.fullmatch(text) is None:
        return "'" + text
    return text


def _first_visible(text: str) -> str:
    # Categories C (control, format: zero-width space, BOM) and Z (every unicode space):
    # which of these a spreadsheet or its import dialog trims before looking for "="
    # varies, so all of them are skipped.
    for char in text:
        if unicodedata.category(char)[0] not in "CZ":
            return char
    return ""


def cell_text(value: Any) -> str:
    """A value as the text of a spreadsheet cell: ``""`` for None, ``true``/``false``,
    JSON for lists, dicts and vectors, ``str()`` for the rest."""
    # Every cell becomes text here, so the guard sees what the spreadsheet will see:
    # a float -inf is the text "-inf", which a spreadsheet would run as a formula.
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list) or is_vector(value):
        return _json_text(value)
    return str(value)


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=_plain)


def _plain(value: Any) -> Any:
    # Vectors become lists; anything else str: a stray datetime should not sink an export.
    return value.tolist() if is_vector(value) else str(value)
