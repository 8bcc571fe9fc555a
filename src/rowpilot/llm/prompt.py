"""Prompts: requests for one row or a batch, cache keys, and reading answers (templates are
in ``rowpilot.llm.template``, output schemas in ``rowpilot.llm.schema``).

Pure: no network and no SDK here. The rules:

* **Templates** are Python format syntax with named columns only: ``"{title}: {body}"``,
  ``"{product name}"``, ``"{{literal braces}}"``. Positional fields, attribute or index
  access, format specs and conversions are refused when the template is read, so a typo
  fails at startup rather than on row 1,000,000. A template must name a column: without
  one every row would get the same prompt.
* **Output schemas** say what each row's answer holds. The provider gets a JSON Schema
  (structured output, when it supports it); we validate every answer ourselves anyway,
  with the pydantic model itself, with ``jsonschema`` for a JSON Schema, or with a model
  built from the ``fields``/``labels`` of a job file (lax, so ``"7"`` is read as 7).
* **Instructions go in the system prompt, rows in the user message.** A single request's
  user message is the row's text and nothing else, so the system prompt is the same for
  every row (provider prompt caching) and a model (or the simulator) reads the row alone.
  The fields are written as ``Fields: a, b:int`` / ``Labels: x, y`` lines, which the
  simulator reads and real models understand, plus the JSON Schema itself when the fields
  say more than those lines can (nested objects, enums, descriptions).
* **Batches tag rows by position**: ``[key=1] text``, ``[key=2] text``, ... never by the
  row's own key. A data key may hold ``]``, newlines or be long; a position tag is always
  safe, short to copy back and cheap in tokens. ``Request.keys`` keeps the real keys in
  tag order, and ``parse_batch`` maps tag ``i + 1`` back to ``keys[i]``. A row's text is
  put on one line (whitespace runs collapsed), so no row can forge another row's tag.
* **Cache keys** hash everything that decides an answer and nothing else (no API key,
  no timeout). ``row_cache_key`` is the same for a row asked alone or in any batch, so a
  resumed run with other batch sizes still finds the rows it paid for.
* **Answers** are read leniently (code fences and prose around one JSON object are fine,
  a key 7 matches tag "7") and validated strictly; problems are one short line each.
* **Repairs** keep the rows in the last user message, where models and the simulator
  read them: a batch repair's user message quotes the problem, then repeats the tagged
  rows; a single-row repair repeats the row's text and says the problem in the system
  prompt (a note in the user message would become part of the row).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rowpilot.errors import ConfigError
from rowpilot.llm.schema import (
    KEY_FIELD,
    PROBLEM_CHARS,
    TEXT_FIELD,
    OutputSchema,
    OutputValidationError,
    canonical,
    clip,
    short_value,
)

__all__ = [
    "BatchAnswer",
    "Request",
    "batch_request",
    "conversation_request",
    "parse_batch",
    "parse_single",
    "repair_request",
    "row_cache_key",
    "single_request",
]

# Bump when the wording of requests changes in a way that should not reuse cached answers.
_FORMAT = "rowpilot-prompt-1"


_BAD_ANSWER_CHARS = 4000
_MAX_JSON_STARTS = 200  # "{" positions tried in prose: bounds the work on a long answer
# -- requests -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One provider call: system prompt, messages, structured-output schema, the rows' keys.

    ``batch`` says the user message holds tagged rows (``keys`` in tag order).
    """

    system: str | None
    messages: list[dict[str, Any]]
    json_schema: dict[str, Any] | None
    keys: tuple[str, ...]
    batch: bool = False

    def texts(self) -> list[str]:
        """The system prompt and every message's text, for token upper bounds."""
        head = [self.system] if self.system else []
        return head + [_content_text(message.get("content")) for message in self.messages]

    def chars(self) -> int:
        """Characters of the system prompt and every message, for token estimates."""
        return sum(len(text) for text in self.texts())

    def cache_key(
        self, provider: str, model: str, params: Mapping[str, Any], max_tokens: int
    ) -> str:
        """A stable hash of everything that determines the answer (never an API key)."""
        return _hash(
            {
                "format": _FORMAT,
                "what": "request",
                "provider": provider,
                "model": model,
                "system": self.system,
                "messages": self.messages,
                "json_schema": self.json_schema,
                "params": _answer_params(params),
                "max_tokens": max_tokens,
            }
        )


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks: count their text
        texts = (block.get("text") for block in content if isinstance(block, Mapping))
        return "\n".join(text for text in texts if isinstance(text, str))
    return ""


def _join_system(system: str | None, instructions: str) -> str | None:
    if not instructions:
        return system or None
    if not system or not system.strip():
        return instructions
    return f"{system.rstrip()}\n\n{instructions}"


def single_request(
    system: str | None, text: str, schema: OutputSchema, *, key: str, structured: bool
) -> Request:
    """One row: the instructions join the system prompt, the user message is the text."""
    return conversation_request(
        system, [{"role": "user", "content": text}], schema, key=key, structured=structured
    )


def conversation_request(
    system: str | None,
    messages: Sequence[Mapping[str, Any]],
    schema: OutputSchema,
    *,
    key: str,
    structured: bool,
) -> Request:
    """A task's own messages (``ctx.llm``): system messages join the system prompt, then
    the schema's instructions, as for a row."""
    if not messages:
        raise ConfigError("ctx.llm needs a prompt", hint="pass a string or a list of messages")
    systems = [system] if system else []
    turns: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, Mapping) or "role" not in message:
            raise ConfigError(
                f"a message must be a dict with a role and a content, not {short_value(message)}",
                hint='e.g. {"role": "user", "content": "..."}',
            )
        if message["role"] == "system":
            systems.append(_content_text(message.get("content")))
        else:
            turns.append(dict(message))
    json_schema = schema.json_schema() if structured and not schema.is_text else None
    return Request(
        system=_join_system("\n\n".join(systems) or None, schema.instructions()),
        messages=turns,
        json_schema=json_schema,
        keys=(key,),
    )


def _tag(index: int) -> str:
    return str(index + 1)


def _one_line(text: str) -> str:
    # str.split() splits on every character str.splitlines() breaks lines at.
    return " ".join(text.split())


def batch_request(
    system: str | None, rows: Sequence[tuple[str, str]], schema: OutputSchema, *, structured: bool
) -> Request:
    """Several rows in one request: ``[key=N] text`` lines, N the row's position from 1.

    ``rows`` are ``(key, rendered text)``; the real keys stay in ``Request.keys``, in tag
    order, for ``parse_batch``.
    """
    if not rows:
        raise ValueError("a batch needs at least one row")
    keys = tuple(key for key, _ in rows)
    if len(set(keys)) != len(keys):
        raise ValueError("a batch cannot hold the same key twice")
    batch_schema = schema.batch_json_schema()  # ConfigError for a field named "key"
    lines = [
        f"[key={_tag(index)}] {_one_line(text)}".rstrip() for index, (_, text) in enumerate(rows)
    ]
    content = f"Rows ({len(rows)}):\n" + "\n".join(lines)
    return Request(
        system=_join_system(system, schema.batch_instructions()),
        messages=[{"role": "user", "content": content}],
        json_schema=batch_schema if structured else None,
        keys=keys,
        batch=True,
    )


def repair_request(request: Request, bad_answer: str, problem: str) -> Request:
    """The same request, the bad answer, and a request for corrected JSON only.

    The bad answer is cut to a few KB. The rows stay in the last user message (see the
    module docstring): a batch repeats its tagged rows after the problem; a single row
    repeats its text, and the problem goes into the system prompt.
    """
    shown = bad_answer if bad_answer.strip() else "(an empty answer)"
    if len(shown) > _BAD_ANSWER_CHARS:
        cut = len(shown) - _BAD_ANSWER_CHARS
        shown = f"{shown[:_BAD_ANSWER_CHARS]}\n[... {cut} more characters cut ...]"
    problem = clip(" ".join(problem.split()), PROBLEM_CHARS).rstrip(".")
    original = next(
        (_content_text(m.get("content")) for m in request.messages if m.get("role") == "user"),
        "",
    )
    system = request.system
    if request.batch:
        retry = (
            f"Your answer could not be used: {problem}.\n"
            "Reply again with the corrected JSON only, one entry per row, for these rows:\n\n"
            + original
        )
    else:
        retry = original
        note = (
            f"Your previous answer to this text could not be used: {problem}. "
            "Reply with the corrected JSON only."
        )
        system = _join_system(system, note)
    messages = [
        *request.messages,
        {"role": "assistant", "content": shown},
        {"role": "user", "content": retry},
    ]
    return Request(system, messages, request.json_schema, request.keys, request.batch)


# -- cache keys -----------------------------------------------------------------------------

# SDK options that do not change the answer, and header/query names that carry secrets.
_NOT_ANSWER_PARAMS = frozenset({"timeout", "api_key"})
_SECRET_NAME = re.compile(r"auth|api[-_]?key|token|secret|cookie|password", re.IGNORECASE)


def _answer_params(params: Mapping[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for name, value in params.items():
        if name in _NOT_ANSWER_PARAMS:
            continue
        if name in ("extra_headers", "extra_query") and isinstance(value, Mapping):
            kept[name] = {k: v for k, v in value.items() if not _SECRET_NAME.search(str(k))}
        else:
            kept[name] = value
    return kept


def _hash(value: Any) -> str:
    data = canonical(value).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def row_cache_key(
    provider: str,
    model: str,
    system: str | None,
    row_text: str,
    schema: OutputSchema,
    params: Mapping[str, Any],
    max_tokens: int,
) -> str:
    """The cache key of one row's answer, whether it is asked alone or in any batch."""
    return _hash(
        {
            "format": _FORMAT,
            "what": "row",
            "provider": provider,
            "model": model,
            "system": system,
            "row": row_text,
            "schema": schema.fingerprint(),
            "params": _answer_params(params),
            "max_tokens": max_tokens,
        }
    )


# -- reading answers ------------------------------------------------------------------------

_FENCE = re.compile(r"```[\w+-]*[ \t]*\n?(.*?)```", re.DOTALL)
_JSON_START = re.compile(r"[{\[]")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def _loads(text: str) -> Any:
    value, end = _DECODER.raw_decode(text)
    if text[end:].strip():
        raise ValueError("extra data after the JSON value")
    return value


_NOTHING = object()


def _try_loads(text: str) -> Any:
    try:
        return _loads(text)
    except ValueError:
        return _NOTHING


def _json_values(text: str) -> Iterator[Any]:
    """JSON values the answer may mean: all of it, a fenced block, or one in prose."""
    text = text.lstrip("\ufeff")
    whole = _try_loads(text.strip())
    if whole is not _NOTHING:
        yield whole
    for match in _FENCE.finditer(text):
        fenced = _try_loads(match[1].strip())
        if fenced is not _NOTHING:
            yield fenced
    for count, match in enumerate(_JSON_START.finditer(text)):
        if count >= _MAX_JSON_STARTS:
            return
        try:
            value, end = _DECODER.raw_decode(text, match.start())
        except ValueError:
            continue
        # A value right after "[" or "," or right before ",", "]" or "}" sat inside a
        # bigger value that did not parse (an answer cut short): it is not the answer.
        before = text[: match.start()].rstrip()[-1:]
        after = text[end:].lstrip()[:1]
        if before in ("[", ",") or (after and after in ",]}"):
            continue
        yield value


def _not_json(text: str) -> str:
    if not text.strip():
        return "the answer is empty"
    return f"the answer holds no complete JSON object (it begins {short_value(text.strip())})"


def parse_single(text: str, schema: OutputSchema) -> dict[str, Any]:
    """One row's output from its answer; OutputValidationError with a short message."""
    if schema.is_text:
        return {TEXT_FIELD: text}
    for value in _json_values(text):
        # [{...}]: one object in a list is that object
        found = value[0] if isinstance(value, list) and len(value) == 1 else value
        if isinstance(found, dict):
            return schema.validate(found)
    raise OutputValidationError(_not_json(text))


@dataclass(frozen=True)
class BatchAnswer:
    """A batch answer, read: every asked key is in exactly one of the two, in key order."""

    valid: dict[str, dict[str, Any]]
    problems: dict[str, str]


def _entries(text: str) -> list[Any]:
    """The answer's ``results`` entries; OutputValidationError when there are none to read."""
    found_object = False
    for value in _json_values(text):
        if isinstance(value, list):
            return value
        if not isinstance(value, dict):
            continue
        results = value.get("results")
        if isinstance(results, list):
            return results
        if isinstance(results, Mapping):  # {"results": {"1": {...}}}: keyed by tag
            return [
                {KEY_FIELD: key, **entry}
                for key, entry in results.items()
                if isinstance(entry, Mapping)
            ]
        found_object = True
    if found_object:
        raise OutputValidationError('the answer has no "results" list')
    raise OutputValidationError(_not_json(text))


_TAG_TEXT = re.compile(r"^\[?\s*key\s*=\s*(.*?)\s*\]?$", re.IGNORECASE)


def _entry_tag(value: Any) -> str | None:
    """The tag an entry names: 7 and "7" and "[key=7]" all mean tag "7"."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        text = value.strip()
        match = _TAG_TEXT.match(text)
        return match[1] if match else text
    return None


def parse_batch(text: str, keys: Sequence[str], schema: OutputSchema) -> BatchAnswer:
    """Each asked row's output or problem from a batch answer.

    ``keys`` are the request's keys in tag order (``Request.keys``): the entry tagged
    ``i + 1`` is ``keys[i]``'s. Entries for tags not asked are ignored; for a tag given
    twice the first valid entry wins (else the first problem stands).
    """
    if len(set(keys)) != len(keys):
        raise ValueError("parse_batch needs distinct keys")
    try:
        entries = _entries(text)
    except OutputValidationError as exc:
        return BatchAnswer({}, {key: str(exc) for key in keys})
    by_tag = {_tag(index): key for index, key in enumerate(keys)}
    valid: dict[str, dict[str, Any]] = {}
    problems: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        key = by_tag.get(_entry_tag(entry.get(KEY_FIELD)) or "")
        if key is None or key in valid:
            continue
        row = {name: value for name, value in entry.items() if name != KEY_FIELD}
        try:
            valid[key] = schema.validate(row)
        except OutputValidationError as exc:
            problems.setdefault(key, str(exc))
    return BatchAnswer(
        valid={key: valid[key] for key in keys if key in valid},
        problems={
            key: problems.get(key, "missing from the answer") for key in keys if key not in valid
        },
    )
