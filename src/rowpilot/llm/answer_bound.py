"""max_tokens from the output schema: a safe upper bound on an answer's tokens.

Providers (and ``rowpilot.llm.limits``) count a request as its prompt plus its
``max_tokens``, so a limit far above the answer wastes the tokens/min ceiling. When the
user gives no max_tokens, a prompt task's limit comes from its output schema:

* **the bound is in bytes.** A byte-level BPE tokenizer never emits more tokens than the
  UTF-8 bytes of the text, so the bytes of the longest serialisation of any valid answer
  bound its tokens. The serialisation allowed for is pretty-printed JSON with
  ``INDENT`` spaces per level: every object member and array item gets a newline, its
  indentation, ``": "`` after a key and a comma (a tokenizer takes a run of spaces as one
  token or a few, so a deeper indentation costs bytes, not tokens: the margin holds it);
* **a value's longest form**: ``true``/``false`` 5 bytes, ``null`` 4; an enum or const its
  longest option (as UTF-8 and as ``\\u`` escapes, whichever is longer); a string with
  ``maxLength`` N two quotes and ``CHAR_BYTES`` per character (UTF-8 takes at most 4, a
  ``\\u00XX`` escape 6); a number ``NUMBER_BYTES`` (the longest repr of a double is 24,
  ``-1.2345678901234567e-308``, and 24 digits also hold any 64-bit integer); an integer
  with both ``minimum`` and ``maximum`` the longer bound's digits plus 2 (``100.0`` is a
  valid integer); an object its named properties, every one present; an array
  ``maxItems`` of its items; ``anyOf``/``oneOf``/a list of types their longest option,
  ``allOf`` its tightest bounded part; local ``$ref``s are followed;
* **unbounded**: a string without ``maxLength`` (free text), an array without
  ``maxItems``, an object without properties, a value without a type, a recursive
  ``$ref``. Then the limit stays ``DEFAULT_MAX_TOKENS`` and the reason names the field;
* **a batch answer** is ``{"results": [{"key": "N", ...}, ...]}``: each row's entry is its
  object one level deeper plus its ``"key"`` (the position tag, at most as many digits as
  the batch size), and the wrapper is counted once per request;
* **the margin**: tokens = bytes x ``MARGIN`` + ``SLACK`` (a code fence, stray
  whitespace), per request; a row's share in a batch gets ``MARGIN`` only;
* **when not to tighten**: a limit the user gave is used as given; reasoning models
  (OpenAI o1/o3/o4, gpt-5, deepseek-reasoner, or a ``thinking``/``reasoning`` parameter)
  count hidden reasoning in their limit, so they keep the default; a bound above the
  default keeps the default (today's limit: the cut-answer retry doubles it if needed).

Not covered, by choice: properties the schema does not name (a schema that allows extra
ones is bounded on the ones it names: the model is told exactly those, and structured
output forbids the rest), astral characters written as ``\\u`` surrogate pairs (12 bytes
for one character), and numbers written with more digits than a double holds. Such an
answer can pass the bound; it is then cut, asked again once at twice the limit, and only
then invalid (``rowpilot.llm.session``). Pure: no I/O.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

DEFAULT_MAX_TOKENS = 512  # per row, when the schema gives no bound (free text)
INDENT = 2  # spaces per level: json.dumps(indent=2), the usual pretty-printing
CHAR_BYTES = 6  # a string character at most: 4 bytes of UTF-8, or a \u00XX escape
NUMBER_BYTES = 24  # the longest repr of a double; any 64-bit integer fits too
MARGIN = 1.25  # on the bytes: a model's own spacing, a field written twice over a repair
SLACK = 16  # per request: a code fence around the JSON, leading and trailing newlines
_WRAPPER_KEY = "results"
_KEY_FIELD = "key"
_REASONING_MODEL = re.compile(r"^(o\d+|gpt-5|deepseek-reasoner)(\b|[-.]|$)", re.IGNORECASE)
_REASONING_PARAMS = ("thinking", "reasoning", "reasoning_effort")

Source = Literal["given", "schema", "default"]


class Unbounded(ValueError):
    """A schema with no byte bound; the message says which field and why."""


@dataclass(frozen=True)
class AnswerBound:
    """The longest serialisations of an answer under a schema, in bytes."""

    row_bytes: int  # one row's answer, asked alone
    batch_row_bytes: int  # one row's entry in a batch answer, its key included
    batch_bytes: int  # a batch answer's wrapper, once per request
    what: str  # what the schema holds, for the reason: "2 labels", "3 fields"


@dataclass(frozen=True)
class AnswerTokens:
    """The max_tokens a prompt task asks with, and why.

    ``per_row`` is a single-row request's limit; a batch of N rows asks for
    ``per_batch + N x per_batch_row``."""

    per_row: int
    per_batch_row: int
    per_batch: int
    source: Source
    why: str

    @classmethod
    def flat(cls, per_row: int, source: Source, why: str) -> AnswerTokens:
        """The same limit per row, alone or in a batch (a given limit, the default)."""
        return cls(per_row, per_row, 0, source, why)

    def for_rows(self, rows: int) -> int:
        """The limit of a request carrying ``rows`` rows."""
        if rows <= 1:
            return self.per_row
        return self.per_batch + self.per_batch_row * rows

    def describe(self) -> str:
        """One line for doctor, estimate and the run's log: the value and why."""
        return f"{self.per_row} per row ({self.why})"


def tokens_for(nbytes: int) -> int:
    """The max_tokens of a request whose answer is at most ``nbytes`` bytes."""
    return math.ceil(nbytes * MARGIN) + SLACK


def is_reasoning_model(model: str, params: Mapping[str, Any]) -> bool:
    """Whether hidden reasoning counts in the model's answer limit."""
    name = model.rsplit("/", 1)[-1]
    return bool(_REASONING_MODEL.match(name)) or any(p in params for p in _REASONING_PARAMS)


def choose_answer_tokens(
    *,
    given: int | None,
    schema: Mapping[str, Any] | None,
    what: str,
    model: str,
    params: Mapping[str, Any],
    batch_size: int,
) -> AnswerTokens:
    """The limit a prompt task asks with: ``given``, else the schema's bound with its
    margin, else ``DEFAULT_MAX_TOKENS``; ``schema`` None means the answer is free text."""
    if given is not None:
        return AnswerTokens.flat(given, "given", "given")
    default = f"default {DEFAULT_MAX_TOKENS}"
    if is_reasoning_model(model, params):
        why = f"{default}: {model} counts hidden reasoning in its limit"
        return AnswerTokens.flat(DEFAULT_MAX_TOKENS, "default", why)
    if schema is None:
        return AnswerTokens.flat(DEFAULT_MAX_TOKENS, "default", f"{default}: free text")
    try:
        bound = answer_bound(schema, batch_size=batch_size, what=what)
    except Unbounded as reason:
        return AnswerTokens.flat(DEFAULT_MAX_TOKENS, "default", f"{default}: {reason}")
    per_row = tokens_for(bound.row_bytes)
    if per_row >= DEFAULT_MAX_TOKENS:
        why = f"{default}: the schema's bound, {per_row} tokens with its margin, is above it"
        return AnswerTokens.flat(DEFAULT_MAX_TOKENS, "default", why)
    why = f"from the schema: {bound.what}, bound {bound.row_bytes} tokens + margin"
    return AnswerTokens(
        per_row=per_row,
        per_batch_row=math.ceil(bound.batch_row_bytes * MARGIN),
        per_batch=tokens_for(bound.batch_bytes),
        source="schema",
        why=why,
    )


def answer_bound(schema: Mapping[str, Any], *, batch_size: int = 1, what: str = "") -> AnswerBound:
    """The byte bounds of a row object's schema alone and in a batch of ``batch_size``
    rows; ``Unbounded`` names the first field without one."""
    walker = _Walker(schema)
    row = walker.value(schema, level=0, path=())
    # In a batch the row object sits at level 2 ({"results": [ here ]}) with its key.
    tag = json.dumps(str(max(batch_size, 1)))
    key_member = _member_bytes(_KEY_FIELD, len(tag), level=3)
    entry = walker.value(schema, level=2, path=()) + key_member
    item = _item_bytes(entry, level=2)
    # {"results": [ items ]}: the wrapper's member at level 1, the array closing at it.
    wrapper = 1 + _member_bytes(_WRAPPER_KEY, _container_bytes(0, level=1), level=1) + 1
    wrapper += 1  # its closing "}"
    return AnswerBound(row, item, wrapper, what or "the schema's fields")


# -- the walk -------------------------------------------------------------------------------


def _json_bytes(value: Any) -> int:
    """The longer of a value's compact UTF-8 and ``\\u``-escaped forms."""
    return max(
        # surrogatepass: a lone surrogate (from a \ud800 escape) has no UTF-8 form; its
        # escaped form, 6 bytes, is the longer one anyway.
        len(
            json.dumps(value, ensure_ascii=flag, separators=(",", ":")).encode(
                "utf-8", "surrogatepass"
            )
        )
        for flag in (False, True)
    )


def _member_bytes(name: str, value: int, *, level: int) -> int:
    """An object member at ``level``: newline, indent, key, ``": "``, value, comma."""
    return 1 + INDENT * level + _json_bytes(name) + 2 + value + 1


def _item_bytes(value: int, *, level: int) -> int:
    """An array item at ``level``: newline, indent, value, comma."""
    return 1 + INDENT * level + value + 1


def _container_bytes(members: int, *, level: int) -> int:
    """Brackets around ``members`` bytes, the closing one on its own line at ``level``."""
    return 1 + members + 1 + INDENT * level + 1


def _path_text(path: Sequence[str]) -> str:
    return ".".join(path).replace(".[]", "[]") or "the answer"


class _Walker:
    """Bounds the values of one schema document (its ``$ref``s resolve against it)."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self._document = document
        self._resolving: set[str] = set()

    def value(self, node: Any, *, level: int, path: tuple[str, ...]) -> int:
        """The longest serialisation of a value of ``node`` whose first line is at
        ``level``; ``Unbounded`` when there is none."""
        if node is True or not isinstance(node, Mapping):
            raise Unbounded(f"field {_path_text(path)!r} takes any value")
        ref = node.get("$ref")
        if isinstance(ref, str):
            return self._referenced(ref, node, level=level, path=path)
        if "const" in node:
            return _literal_bytes(node["const"], level)
        if isinstance(node.get("enum"), list) and node["enum"]:
            return max(_literal_bytes(option, level) for option in node["enum"])
        options = node.get("anyOf") or node.get("oneOf")
        if isinstance(options, list) and options:
            return max(self.value(option, level=level, path=path) for option in options)
        parts = node.get("allOf")
        if isinstance(parts, list) and parts:
            return self._tightest(parts, level=level, path=path)
        kinds = node.get("type")
        if isinstance(kinds, list) and kinds:
            return max(self._typed(str(kind), node, level=level, path=path) for kind in kinds)
        if isinstance(kinds, str):
            return self._typed(kinds, node, level=level, path=path)
        if isinstance(node.get("properties"), Mapping):
            return self._typed("object", node, level=level, path=path)
        raise Unbounded(f"field {_path_text(path)!r} has no type")

    def _referenced(
        self, ref: str, node: Mapping[str, Any], *, level: int, path: tuple[str, ...]
    ) -> int:
        if ref in self._resolving:
            raise Unbounded(f"field {_path_text(path)!r} is recursive")
        target: Any = self._document if ref.startswith("#") else None
        for part in ref.removeprefix("#").strip("/").split("/") if ref != "#" else ():
            target = target.get(part) if isinstance(target, Mapping) else None
        if not isinstance(target, Mapping):
            raise Unbounded(f"field {_path_text(path)!r} refers to {ref!r}, not found")
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        self._resolving.add(ref)
        try:
            if siblings:  # $ref beside other keywords: both hold, the tighter bounds
                return self._tightest([target, siblings], level=level, path=path)
            return self.value(target, level=level, path=path)
        finally:
            self._resolving.discard(ref)

    def _tightest(self, parts: Sequence[Any], *, level: int, path: tuple[str, ...]) -> int:
        bounds: list[int] = []
        reason: Unbounded | None = None
        for part in parts:
            try:
                bounds.append(self.value(part, level=level, path=path))
            except Unbounded as error:
                reason = reason or error
        if bounds:
            return min(bounds)
        raise reason or Unbounded(f"field {_path_text(path)!r} has no type")

    def _typed(
        self, kind: str, node: Mapping[str, Any], *, level: int, path: tuple[str, ...]
    ) -> int:
        if kind == "boolean":
            return len("false")
        if kind == "null":
            return len("null")
        if kind == "integer":
            return _integer_bytes(node)
        if kind == "number":
            return NUMBER_BYTES
        if kind == "string":
            return _string_bytes(node, path)
        if kind == "array":
            return self._array(node, level=level, path=path)
        if kind == "object":
            return self._object(node, level=level, path=path)
        raise Unbounded(f"field {_path_text(path)!r} has the unknown type {kind!r}")

    def _object(self, node: Mapping[str, Any], *, level: int, path: tuple[str, ...]) -> int:
        properties = node.get("properties")
        if not isinstance(properties, Mapping) or not properties:
            raise Unbounded(f"field {_path_text(path)!r} is an object without properties")
        members = sum(
            _member_bytes(
                name, self.value(sub, level=level + 1, path=(*path, name)), level=level + 1
            )
            for name, sub in properties.items()
        )
        return _container_bytes(members, level=level)

    def _array(self, node: Mapping[str, Any], *, level: int, path: tuple[str, ...]) -> int:
        count = _max_items(node)
        if count is None:
            raise Unbounded(f"field {_path_text(path)!r} is a list without maxItems")
        if count == 0:
            return len("[]")
        kinds = list(_item_schemas(node))
        if not kinds:
            raise Unbounded(f"field {_path_text(path)!r} is a list of any values")
        inner = (*path, "[]")
        item = max(self.value(kind, level=level + 1, path=inner) for kind in kinds)
        return _container_bytes(count * _item_bytes(item, level=level + 1), level=level)


def _max_items(node: Mapping[str, Any]) -> int | None:
    count = node.get("maxItems")
    prefix = node.get("prefixItems")
    if node.get("items") is False and isinstance(prefix, list):
        fixed = len(prefix)  # a tuple: no item past its positions
        return fixed if not isinstance(count, int) else min(count, fixed)
    return count if isinstance(count, int) and count >= 0 else None


def _item_schemas(node: Mapping[str, Any]) -> Iterator[Any]:
    prefix = node.get("prefixItems")
    if isinstance(prefix, list):
        yield from prefix
    items = node.get("items")
    if isinstance(items, Mapping):
        yield items


def _integer_bytes(node: Mapping[str, Any]) -> int:
    low = node.get("minimum", node.get("exclusiveMinimum"))
    high = node.get("maximum", node.get("exclusiveMaximum"))
    if not all(isinstance(b, int | float) and math.isfinite(b) for b in (low, high)):
        return NUMBER_BYTES
    digits = max(len(str(math.floor(low))), len(str(math.ceil(high))))
    return min(digits + 2, NUMBER_BYTES)  # + ".0": 100.0 is a valid integer too


def _string_bytes(node: Mapping[str, Any], path: tuple[str, ...]) -> int:
    length = node.get("maxLength")
    if not isinstance(length, int) or length < 0:
        raise Unbounded(f"field {_path_text(path)!r} is free text")
    return 2 + CHAR_BYTES * length


def _literal_bytes(value: Any, level: int) -> int:
    """A fixed value (an enum option, a const), pretty-printed at ``level``."""
    if isinstance(value, Mapping) and value:
        members = sum(
            _member_bytes(str(name), _literal_bytes(item, level + 1), level=level + 1)
            for name, item in value.items()
        )
        return _container_bytes(members, level=level)
    if isinstance(value, list) and value:
        items = sum(_item_bytes(_literal_bytes(item, level + 1), level=level + 1) for item in value)
        return _container_bytes(items, level=level)
    return _json_bytes(value)
