"""Agreement between two models' answers (or a model's and a reference column's), field by
field, by the field's kind in the output schema:

* **exact** (labels, enums, booleans, and anything that is not a number or free text:
  arrays and objects compare as canonical JSON): the share of rows whose values are equal.
  A reference cell read as text is first read as the field's type: ``true``/``false``,
  ``yes``/``no`` and ``1``/``0`` (any case) for a boolean, a number for a number field.
* **number** (integer and number fields): the share of rows whose values are within a
  relative tolerance of each other, relative to the larger magnitude
  (``math.isclose(a, b, rel_tol=tolerance, abs_tol=1e-9)``). The default,
  ``NUMBER_TOLERANCE`` = 0.01: 100 and 100.9 agree, 100 and 102 do not; a tolerance of
  0.5 makes numbers agree within a factor of 2 (for estimates such as an incidence).
* **text** (string fields without an enum): the mean over rows of a normalised string
  ratio: both texts case-folded with runs of whitespace made one space, then
  ``difflib.SequenceMatcher(autojunk=False).ratio()`` (2 x matching characters / total
  characters; 1.0 for equal texts, 0.0 for texts sharing no character).

A row counts only where both sides have a value (an answer that failed, or an empty
reference cell, is left out); ``compared`` says how many rows did, and ``equal`` which
share of them agree fully (for text: the texts are equal up to case and spaces).
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rowpilot.errors import ConfigError

FieldKind = Literal["exact", "number", "text"]

NUMBER_TOLERANCE = 0.01  # relative: numbers within 1% of the larger agree
_ABSOLUTE_TOLERANCE = 1e-9  # so that 0 and 0.0000000001 agree
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})


@dataclass(frozen=True)
class FieldAgreement:
    """One field's agreement: a share (exact, number) or a mean similarity (text) in
    [0, 1] over the ``compared`` rows, and the share of those rows that agree fully
    (``equal``: for text, equal up to case and spaces); both None when no row could be
    compared."""

    field: str
    kind: FieldKind
    compared: int
    score: float | None
    equal: float | None = None


def field_kinds(schema: Mapping[str, Any], names: Sequence[str]) -> dict[str, FieldKind]:
    """Each output field's kind, read from the row object's JSON schema (``$ref``s to
    ``$defs`` followed, an ``anyOf`` with null read as its other branch)."""
    properties = schema.get("properties", {})
    definitions = schema.get("$defs", schema.get("definitions", {}))
    return {name: _kind(_resolved(properties.get(name, {}), definitions)) for name in names}


def _resolved(node: Any, definitions: Mapping[str, Any]) -> Mapping[str, Any]:
    for _ in range(16):  # a chain of references, never a cycle of them
        if not isinstance(node, Mapping):
            return {}
        reference = node.get("$ref")
        if isinstance(reference, str):
            node = definitions.get(reference.rsplit("/", 1)[-1], {})
            continue
        branches = [b for b in node.get("anyOf", []) if b != {"type": "null"}]
        if len(branches) == 1 and "enum" not in node and "type" not in node:
            node = branches[0]
            continue
        return node
    return {}


def _kind(node: Mapping[str, Any]) -> FieldKind:
    kind = node.get("type")
    if "enum" in node or "const" in node or kind == "boolean":
        return "exact"
    if kind in ("integer", "number"):
        return "number"
    if kind == "string":
        return "text"
    return "exact"


def numbers_agree(first: float, second: float, tolerance: float = NUMBER_TOLERANCE) -> bool:
    """Within ``tolerance`` relative to the larger magnitude."""
    return math.isclose(first, second, rel_tol=tolerance, abs_tol=_ABSOLUTE_TOLERANCE)


def checked_tolerance(tolerance: float) -> float:
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ConfigError(
            f"--tolerance {tolerance} is not a relative tolerance",
            hint="give a number >= 0: 0.01 is within 1%, 0.5 within a factor of 2",
        )
    return tolerance


def normalised_text(text: str) -> str:
    return " ".join(text.casefold().split())


def text_similarity(first: str, second: str) -> float:
    """The normalised string ratio in [0, 1] (1.0 for texts equal up to case and spaces)."""
    first, second = normalised_text(first), normalised_text(second)
    if first == second:
        return 1.0
    return difflib.SequenceMatcher(None, first, second, autojunk=False).ratio()


def reference_value(cell: Any, kind: FieldKind, like: Any) -> Any:
    """A reference cell as the field's type (``like`` is an answer's value, which says
    whether a boolean is meant); None when the cell is empty or cannot be read so."""
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return None
    if not isinstance(cell, str):
        return cell
    text = cell.strip()
    if text == "":
        return None
    if isinstance(like, bool):
        lowered = text.casefold()
        return True if lowered in _TRUE else False if lowered in _FALSE else text
    if kind == "number":
        try:
            return float(text)
        except ValueError:
            return text
    return text


def row_score(
    first: Any, second: Any, kind: FieldKind, tolerance: float = NUMBER_TOLERANCE
) -> float:
    """One row's agreement: 1.0 or 0.0 for exact and number fields, a similarity for text."""
    if kind == "number" and _is_number(first) and _is_number(second):
        return 1.0 if numbers_agree(float(first), float(second), tolerance) else 0.0
    if kind == "text" and isinstance(first, str) and isinstance(second, str):
        return text_similarity(first, second)
    return 1.0 if _canonical(first) == _canonical(second) else 0.0


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _canonical(value: Any) -> str:
    if _is_number(value) and float(value).is_integer():
        value = int(value)  # 3 and 3.0 are one value
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def agreement(
    field: str,
    kind: FieldKind,
    pairs: Iterable[tuple[Any, Any]],
    tolerance: float = NUMBER_TOLERANCE,
) -> FieldAgreement:
    """The field's agreement over ``pairs`` of (value, baseline value); a pair with a None
    on either side is left out."""
    present = [(a, b) for a, b in pairs if a is not None and b is not None]
    scores = [row_score(a, b, kind, tolerance) for a, b in present]
    if not scores:
        return FieldAgreement(field, kind, 0, None, None)
    equal = sum(1 for score in scores if score == 1.0) / len(scores)
    return FieldAgreement(field, kind, len(scores), math.fsum(scores) / len(scores), equal)
