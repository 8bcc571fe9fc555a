"""Output schemas: what each row's answer holds, said to the provider and checked here.

The provider gets a JSON Schema (structured output, when it supports it); every answer is
validated here anyway, with the pydantic model itself, with ``jsonschema`` for a JSON
Schema, or with a model built from the ``fields``/``labels`` of a job file (lax, so
``"7"`` is read as 7). Problems are one short line each. Pure: no network, no SDK.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, cast

import pydantic

from rowpilot.errors import ConfigError

KEY_FIELD = "key"
TEXT_FIELD = "answer"
_SHORT_VALUE = 40
PROBLEM_CHARS = 500


class OutputValidationError(ValueError):
    """An answer that does not hold what the schema asks; the message is one short line."""


# -- small text helpers ---------------------------------------------------------------------


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_value(value: Any) -> str:
    """A value as a problem message quotes it: ``'high'``, ``[1, 2]``, at most ~40 chars."""
    if isinstance(value, str):
        return repr(clip(value, _SHORT_VALUE))
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr)
    except ValueError:  # a circular structure
        text = repr(value)
    return clip(text, _SHORT_VALUE)


def _field_path(parts: Sequence[str | int]) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _where(parts: Sequence[str | int]) -> str:
    return f"field {_field_path(parts)!r}" if parts else "the answer"


_TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "an object",
    "null": "null",
}


def _type_words(kind: Any) -> str:
    kinds = kind if isinstance(kind, list) else [kind]
    return " or ".join(_TYPE_WORDS.get(str(item), str(item)) for item in kinds)


def _with_more(message: str, count: int) -> str:
    extra = count - 1
    if extra <= 0:
        return message
    return f"{message} (and {extra} more problem{'s' if extra > 1 else ''})"


# -- output schemas -------------------------------------------------------------------------

_SchemaKind = Literal["model", "json_schema", "fields", "labels", "text"]

_FIELD_TYPES: Mapping[str, tuple[Any, dict[str, Any], str]] = {
    # spec: (python type for validation, JSON Schema, marker in the Fields: line)
    "str": (str, {"type": "string"}, ""),
    "string": (str, {"type": "string"}, ""),
    "int": (int, {"type": "integer"}, ":int"),
    "integer": (int, {"type": "integer"}, ":int"),
    "float": (float, {"type": "number"}, ":number"),
    "number": (float, {"type": "number"}, ":number"),
    "bool": (bool, {"type": "boolean"}, ":bool"),
    "boolean": (bool, {"type": "boolean"}, ":bool"),
    "list": (list[str], {"type": "array", "items": {"type": "string"}}, ":list"),
    "list[str]": (list[str], {"type": "array", "items": {"type": "string"}}, ":list"),
}
_ALLOWED_TYPES = "str, int, float, bool, list (or string, integer, number, boolean, list[str]), "
_ALLOWED_TYPES += "or choices written a|b|c"

_MARKER_MEANINGS = {
    ":int": "int a whole number",
    ":number": "number any number",
    ":bool": "bool true or false",
    ":list": "list a list of strings",
}
_NO_PROSE = "Reply with one JSON object and nothing else (no prose, no code fences)"
_LABELS_MEANING = "one key per label below, true when the label applies to {}, else false"


def _breaks_line(name: str) -> bool:
    """Whether a name cannot stand in a Fields:/Labels: line: entries split on commas,
    types on the first colon, and an instruction is one line."""
    return "," in name or ":" in name or len(name.splitlines()) != 1 or name != name.strip()


class OutputSchema:
    """What each row's answer must contain: a JSON Schema for the provider, a validator for us.

    Build one with ``from_model``, ``from_json_schema``, ``from_fields``, ``from_labels``
    or ``text``. ``validate`` returns the row's output dict or raises
    ``OutputValidationError`` with one short line.
    """

    def __init__(
        self,
        *,
        kind: _SchemaKind,
        schema: dict[str, Any],
        validator: Callable[[Any], dict[str, Any]],
        field_names: tuple[str, ...],
        field_line: str,
        markers: frozenset[str] = frozenset(),
        detailed: bool = False,
        identity: str = "",
    ) -> None:
        """Internal: use the class methods."""
        self._kind: _SchemaKind = kind
        self._schema = schema
        self._validator = validator
        self.field_names = field_names
        self._field_line = field_line
        self._markers = markers
        self._detailed = detailed
        self._identity = identity
        self._fingerprint = canonical({"kind": kind, "of": identity, "schema": schema})

    # -- constructors --

    @classmethod
    def from_model(cls, model: type[pydantic.BaseModel]) -> OutputSchema:
        """The model's JSON Schema for the provider; the model itself validates."""
        if not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)):
            raise ConfigError(
                f"{model!r} is not a pydantic model class", hint="pass a BaseModel subclass"
            )
        try:
            schema = model.model_json_schema()
        except pydantic.PydanticUserError as exc:
            raise ConfigError(f"pydantic model {model.__name__}: {exc}") from exc
        root = _object_root(schema, f"pydantic model {model.__name__}")

        def validate(value: Any) -> dict[str, Any]:
            return _validate_pydantic(model, value)

        names = tuple(root["properties"])
        line, markers, exact = _schema_field_line(root, schema)
        return cls(
            kind="model",
            schema=schema,
            validator=validate,
            field_names=names,
            field_line=line,
            markers=markers,
            detailed=not exact,
            identity=f"{model.__module__}.{model.__qualname__}",
        )

    @classmethod
    def from_json_schema(cls, schema: Mapping[str, Any]) -> OutputSchema:
        """A JSON Schema of an object with properties, validated with ``jsonschema``.

        Draft 2020-12 unless the schema names its own ``$schema``.
        """
        import jsonschema

        if not isinstance(schema, Mapping):
            raise ConfigError("the output schema must be a JSON object (a mapping)")
        try:
            own = json.loads(json.dumps(schema))  # a private, plain-JSON copy
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"the output schema is not plain JSON: {exc}") from exc
        validator_class = jsonschema.validators.validator_for(
            own, default=jsonschema.Draft202012Validator
        )
        try:
            validator_class.check_schema(own)
        except jsonschema.SchemaError as exc:
            where = _field_path(list(exc.absolute_path))
            raise ConfigError(
                f"the output schema is not a valid JSON Schema: {clip(exc.message, 200)}"
                + (f" (at {where})" if where else ""),
                hint="see https://json-schema.org/understanding-json-schema",
            ) from exc
        root = _object_root(own, "the output schema")
        checker = validator_class(own)

        def validate(value: Any) -> dict[str, Any]:
            errors = list(checker.iter_errors(value))
            if errors:
                best = jsonschema.exceptions.best_match(errors)
                raise OutputValidationError(_with_more(_jsonschema_problem(best), len(errors)))
            if not isinstance(value, dict):  # a schema without "type" accepts anything
                raise OutputValidationError(f"expected a JSON object, got {short_value(value)}")
            return dict(value)

        line, markers, exact = _schema_field_line(root, own)
        return cls(
            kind="json_schema",
            schema=own,
            validator=validate,
            field_names=tuple(root["properties"]),
            field_line=line,
            markers=markers,
            detailed=not exact,
        )

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> OutputSchema:
        """Fields from a job file: ``{title = "str", pages = "int", kind = "a|b|c"}``."""
        if not isinstance(fields, Mapping) or not fields:
            raise ConfigError(
                "fields must name at least one output field",
                hint='e.g. fields = {title = "str", pages = "int"}',
            )
        properties: dict[str, Any] = {}
        types: dict[str, Any] = {}
        entries: list[str] = []
        markers: set[str] = set()
        for name, spec in fields.items():
            _check_name(name, "field")
            python_type, schema, marker = _field_type(name, spec)
            properties[name], types[name] = schema, python_type
            entries.append(name + marker)
            markers.add(":choice" if schema.get("enum") else marker)
        model = _row_model(types)
        return cls(
            kind="fields",
            schema=_object_schema(properties),
            validator=lambda value: _validate_pydantic(model, value),
            field_names=tuple(properties),
            field_line="Fields: " + ", ".join(entries),
            markers=frozenset(markers - {""}),
        )

    @classmethod
    def from_labels(cls, labels: Sequence[str]) -> OutputSchema:
        """One boolean field per label: true when the label applies to the row."""
        if isinstance(labels, str) or not labels:
            raise ConfigError(
                "labels must be a list of at least one label", hint='e.g. labels = ["spam"]'
            )
        seen: set[str] = set()
        for label in labels:
            _check_name(label, "label")
            if label in seen:
                raise ConfigError(f"the label {label!r} is given twice", hint="list each once")
            seen.add(label)
        model = _row_model(dict.fromkeys(labels, bool))
        return cls(
            kind="labels",
            schema=_object_schema({label: {"type": "boolean"} for label in labels}),
            validator=lambda value: _validate_pydantic(model, value),
            field_names=tuple(labels),
            field_line="Labels: " + ", ".join(labels),
        )

    @classmethod
    def text(cls) -> OutputSchema:
        """No schema given: the answer is text, kept as the one string field ``answer``."""
        model = _row_model({TEXT_FIELD: str})
        return cls(
            kind="text",
            schema=_object_schema({TEXT_FIELD: {"type": "string"}}),
            validator=lambda value: _validate_pydantic(model, value),
            field_names=(TEXT_FIELD,),
            field_line=f"Fields: {TEXT_FIELD}",
        )

    # -- what it says --

    @property
    def is_text(self) -> bool:
        """The plain-text case: a single row's answer is the raw text, as ``answer``."""
        return self._kind == "text"

    def json_schema(self) -> dict[str, Any]:
        """The schema of one row's object (a copy: structured output for a single row)."""
        return copy.deepcopy(self._schema)

    def batch_json_schema(self) -> dict[str, Any]:
        """``{"results": [{"key": ..., <row fields>}]}``; ``$defs`` move to the root.

        Raises ConfigError when the row itself has a field ``key``: it would clash with
        the row's tag.
        """
        if KEY_FIELD in self.field_names:
            raise ConfigError(
                "the output field 'key' cannot be used when several rows share a request: "
                "each answer entry names its row with 'key'",
                hint="rename the output field, or send one row per request",
            )
        schema = self.json_schema()
        defs: dict[str, Any] = {
            name: schema.pop(name) for name in ("$defs", "definitions") if name in schema
        }
        row = _resolve_root(schema, defs)
        skipped = {"$schema", "$id", "title", "type", "properties", "required"}
        items: dict[str, Any] = {
            "type": "object",
            "properties": {KEY_FIELD: {"type": "string"}, **row["properties"]},
            "required": [KEY_FIELD, *row.get("required", [])],
        }
        items.update({name: value for name, value in row.items() if name not in skipped})
        batch: dict[str, Any] = {
            "type": "object",
            "properties": {"results": {"type": "array", "items": items}},
            "required": ["results"],
            "additionalProperties": False,
        }
        batch.update(defs)
        return batch

    def validate(self, value: Any) -> dict[str, Any]:
        """The validated row dict, or OutputValidationError with a short message."""
        return self._validator(value)

    def instructions(self) -> str:
        """What a single-row request asks for: JSON only, and the Fields:/Labels: lines.

        Empty for the text schema: a single row's answer is then free text.
        """
        if self.is_text:
            return ""
        if self._kind == "labels":
            lead = f"{_NO_PROSE}, with {_LABELS_MEANING.format('the text')}:"
        else:
            lead = f"{_NO_PROSE}, with these fields:"
        return "\n".join([lead, *self._description("The object must match this JSON Schema")])

    def batch_instructions(self) -> str:
        """What a batch request asks for: the row tags, the results list and the fields."""
        if self._kind == "labels":
            each = _LABELS_MEANING.format("that row's text") + ":"
        elif self.is_text:
            each = f'"{TEXT_FIELD}", your answer for that row as a string:'
        else:
            each = "the row's fields:"
        lines = [
            "The user message holds rows of data, one per line; each line starts with a tag "
            "[key=N], then the row's text.",
            "Answer every row on its own, as if it were the only one, and never mix rows up.",
            f'{_NO_PROSE}: {{"results": [...]}} with exactly one entry per row, in the '
            'given order. Each entry is an object with "key" (the N of the row\'s tag, as a '
            f'string, e.g. "1"), then {each}',
            *self._description('Apart from "key", each entry must match this JSON Schema'),
        ]
        return "\n".join(lines)

    def _description(self, schema_lead: str) -> list[str]:
        lines = [self._field_line]
        if self._detailed:  # the schema says it all; a legend could only contradict it
            lines.append(f"{schema_lead}: {_compact(_untitled(self._schema))}")
        elif self._kind in ("fields", "model", "json_schema"):
            lines.append(_legend(self._markers))
        return lines

    def fingerprint(self) -> str:
        """Canonical text of the schema (and, for a model, its class), for task versions."""
        return self._fingerprint

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OutputSchema):
            return NotImplemented
        return self._fingerprint == other._fingerprint

    def __hash__(self) -> int:
        return hash(self._fingerprint)

    def __repr__(self) -> str:
        return f"OutputSchema({self._kind}: {', '.join(self.field_names)})"


def schema_of(value: Any, what: str = "schema") -> OutputSchema:
    """An output schema from what a user gives: None (text), an ``OutputSchema``, a pydantic
    model class or a JSON Schema dict; anything else is a ConfigError naming ``what``."""
    if value is None:
        return OutputSchema.text()
    if isinstance(value, OutputSchema):
        return value
    if isinstance(value, type) and issubclass(value, pydantic.BaseModel):
        return OutputSchema.from_model(value)
    if isinstance(value, Mapping):
        return OutputSchema.from_json_schema(value)
    raise ConfigError(
        f"{what} must be a JSON Schema or a pydantic model, not {type(value).__name__}",
        hint="pass a dict such as {'type': 'object', 'properties': {...}} or a BaseModel class",
    )


def _check_name(name: Any, what: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{what} names must be non-empty strings, not {name!r}")
    if _breaks_line(name):
        raise ConfigError(
            f"the {what} name {name!r} cannot be used",
            hint=f"a {what} name cannot contain ',', ':' or a newline, nor start or end "
            "with spaces",
        )


def _field_type(name: str, spec: Any) -> tuple[Any, dict[str, Any], str]:
    if not isinstance(spec, str):
        raise ConfigError(
            f"field {name!r}: the type must be a string, not {spec!r}",
            hint=f"use one of: {_ALLOWED_TYPES}",
        )
    text = spec.strip()
    if "|" in text:
        options = [option.strip() for option in text.split("|")]
        if not all(options) or len(set(options)) != len(options) or "," in text:
            raise ConfigError(
                f"field {name!r}: the choices {spec!r} are not a list of distinct values",
                hint="write them as a|b|c, without commas or empty choices",
            )
        choice_type = cast(Any, Literal)[tuple(options)]
        return choice_type, {"type": "string", "enum": options}, ":" + "|".join(options)
    known = _FIELD_TYPES.get(text.lower())
    if known is None:
        raise ConfigError(
            f"field {name!r}: unknown type {spec!r}", hint=f"use one of: {_ALLOWED_TYPES}"
        )
    python_type, schema, marker = known
    return python_type, copy.deepcopy(schema), marker


def _object_schema(properties: dict[str, Any]) -> dict[str, Any]:
    # additionalProperties false: Anthropic's structured output requires it on objects.
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _row_model(types: Mapping[str, Any]) -> type[pydantic.BaseModel]:
    """A pydantic model with these output fields. Names become aliases of ``f0, f1, ...``:
    any name works then, even ``model_config`` or ``_private``."""
    definitions: dict[str, Any] = {
        f"f{index}": (python_type, pydantic.Field(alias=name))
        for index, (name, python_type) in enumerate(types.items())
    }
    return pydantic.create_model("RowOutput", **definitions)


def _validate_pydantic(model: type[pydantic.BaseModel], value: Any) -> dict[str, Any]:
    try:
        instance = model.model_validate(value)
    except pydantic.ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise OutputValidationError(_with_more(_pydantic_problem(errors[0]), len(errors))) from None
    return instance.model_dump(mode="json", by_alias=True)


_PYDANTIC_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


def _pydantic_problem(error: Any) -> str:
    parts = [part for part in error.get("loc", ()) if isinstance(part, str | int)]
    where = _where(parts)
    kind = error.get("type", "")
    got = short_value(error.get("input"))
    if kind == "missing":
        return f"{where} is missing"
    if kind == "extra_forbidden":
        return f"{where} is not allowed"
    if kind in _PYDANTIC_EXPECTED:
        expected = _PYDANTIC_EXPECTED[kind]
        if not parts and expected == "an object":
            return f"expected a JSON object, got {got}"
        return f"{where}: expected {expected}, got {got}"
    if kind in ("literal_error", "enum"):
        return f"{where}: expected {error.get('ctx', {}).get('expected', 'one of the choices')}"
    message = str(error.get("msg", "invalid")).split(",")[0]
    message = re.sub(r"^Input should be ", "expected ", message)
    message = re.sub(r"^Value error, ", "", message)
    return f"{where}: {clip(message, 160)}, got {got}"


def _jsonschema_problem(error: Any) -> str:
    parts = list(error.absolute_path)
    instance, expected = error.instance, error.validator_value
    if error.validator == "required" and isinstance(instance, Mapping):
        missing = next((name for name in expected if name not in instance), "?")
        return f"{_where([*parts, missing])} is missing"
    if error.validator == "type":
        if not parts and expected == "object":
            return f"expected a JSON object, got {short_value(instance)}"
        return f"{_where(parts)}: expected {_type_words(expected)}, got {short_value(instance)}"
    if error.validator == "enum":
        options = ", ".join(short_value(option) for option in expected[:10])
        return f"{_where(parts)}: expected one of {options}, got {short_value(instance)}"
    if error.validator == "const":
        return f"{_where(parts)}: expected {short_value(expected)}, got {short_value(instance)}"
    return f"{_where(parts)}: {clip(error.message, 160)}"


def _object_root(schema: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The object schema at the root (following a root ``$ref``), or ConfigError."""
    defs: dict[str, Any] = {
        name: schema[name] for name in ("$defs", "definitions") if name in schema
    }
    root = _resolve_root(schema, defs)
    kind = root.get("type", "object")
    properties = root.get("properties")
    if kind != "object" or not isinstance(properties, Mapping) or not properties:
        raise ConfigError(
            f"{what} must describe a JSON object with properties",
            hint='e.g. {"type": "object", "properties": {"title": {"type": "string"}}}',
        )
    return root


def _resolve_root(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    """A root that is only a local ``$ref`` (pydantic's recursive models): its target."""
    ref = schema.get("$ref")
    if not isinstance(ref, str) or "properties" in schema:
        return dict(schema)
    section, _, name = ref.removeprefix("#/").partition("/")
    target = defs.get(section, {}).get(name) if "/" not in name else None
    return dict(target) if isinstance(target, Mapping) else dict(schema)


def _deref(node: Any, root: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(node, Mapping):
        return {}
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, Mapping) else {}
        return target if isinstance(target, Mapping) else {}
    return node


_PLAIN_KEYWORDS = frozenset({"type", "title", "default"})
_MARKERS = {"string": "", "integer": ":int", "number": ":number", "boolean": ":bool"}


def _marker(node: Any, root: Mapping[str, Any], depth: int = 0) -> tuple[str, bool]:
    """A property's Fields:-line marker, and whether that marker says all the schema says."""
    prop = _deref(node, root)
    options = prop.get("anyOf") or prop.get("oneOf")
    if isinstance(options, list):  # pydantic's ``X | None``: mark X, the schema says the rest
        typed = [_deref(option, root) for option in options]
        concrete = [option for option in typed if option.get("type") != "null"]
        if not concrete or depth > 4:  # depth: a $ref cycle through anyOf
            return "", False
        return _marker(concrete[0], root, depth + 1)[0], False
    kind = prop.get("type")
    exact = set(prop) <= _PLAIN_KEYWORDS | {"items"}
    if isinstance(prop.get("enum"), list) and all(isinstance(o, str) for o in prop["enum"]):
        return ":" + "|".join(prop["enum"]), False
    if kind in _MARKERS:
        return _MARKERS[kind], exact
    if kind == "array":
        items = _deref(prop.get("items", {}), root)
        strings = items.get("type") == "string" and set(items) <= _PLAIN_KEYWORDS
        return ":list", exact and strings
    return (":object", False) if kind == "object" or "properties" in prop else ("", False)


def _schema_field_line(
    root: Mapping[str, Any], document: Mapping[str, Any]
) -> tuple[str, frozenset[str], bool]:
    """The ``Fields:`` line of a JSON Schema's top-level properties.

    Also the markers used and whether the line says everything (else the prompt carries
    the schema too).
    """
    entries: list[str] = []
    markers: set[str] = set()
    exact = True
    for name, node in root["properties"].items():
        marker, plain = _marker(node, document)
        exact = exact and plain and not _breaks_line(name)
        entries.append(f"{name}{marker}")
        markers.add(":choice" if "|" in marker else marker)
    return "Fields: " + ", ".join(entries), frozenset(markers - {""}), exact


def _legend(markers: frozenset[str]) -> str:
    if not markers:
        return "All fields are strings."
    meanings = [_MARKER_MEANINGS[marker] for marker in _MARKER_MEANINGS if marker in markers]
    if ":choice" in markers:
        meanings.append("a|b|... exactly one of the listed values")
    return "Untyped fields are strings; the types mean: " + ", ".join(meanings) + "."


def _untitled(node: Any) -> Any:
    """A schema without its ``title`` keywords (pydantic puts one everywhere): fewer tokens.

    Only keywords go: a property named "title" stays.
    """
    if isinstance(node, list):
        return [_untitled(item) for item in node]
    if not isinstance(node, Mapping):
        return node
    kept: dict[str, Any] = {}
    for name, value in node.items():
        if name == "title" and isinstance(value, str):
            continue
        if name in ("properties", "$defs", "definitions") and isinstance(value, Mapping):
            kept[name] = {prop: _untitled(sub) for prop, sub in value.items()}
        else:
            kept[name] = _untitled(value)
    return kept


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def normalized(value: Any) -> Any:
    """JSON-ready and order-free: mapping keys as text, 1.0 as 1 (the same parameter)."""
    if isinstance(value, Mapping):
        return {str(key): normalized(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [normalized(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def canonical(value: Any) -> str:
    return json.dumps(
        normalized(value),
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        default=repr,
    )
