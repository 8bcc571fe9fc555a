"""max_tokens from the output schema (rowpilot.llm.answer_bound): the bound holds every
valid answer, alone and in a batch, and it is tight where the answers are small."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings, target
from hypothesis import strategies as st

from rowpilot.llm.answer_bound import (
    DEFAULT_MAX_TOKENS,
    AnswerBound,
    Unbounded,
    answer_bound,
    choose_answer_tokens,
    tokens_for,
)
from rowpilot.llm.schema import OutputSchema

Drawn = tuple[dict[str, Any], st.SearchStrategy[Any]]  # a schema and its valid values

# The characters with the longest forms (a control character as a \u escape, an astral
# one as 4 bytes of UTF-8) mixed with plain text.
# Lone surrogates are left out: no answer's UTF-8 text can hold one unescaped.
CHARS = st.sampled_from(["\x00", "\x1f", "\U0001f600", "\u00e9", '"', "\\"]) | st.characters(
    exclude_categories=["Cs"]
)
NAMES = st.text(CHARS, min_size=1, max_size=8)
LEAF_TEXT = st.text(CHARS, max_size=6)


def _leaves() -> st.SearchStrategy[Drawn]:
    integer_bounds = st.tuples(st.integers(-(10**9), 10**9), st.integers(0, 10**9))
    return st.one_of(
        st.just(({"type": "boolean"}, st.booleans())),
        st.just(({"type": "null"}, st.none())),
        st.just(({"type": "number"}, st.floats(allow_nan=False, allow_infinity=False))),
        st.just(({"type": "integer"}, st.integers(-(2**63), 2**63 - 1))),
        integer_bounds.map(
            lambda b: (
                {"type": "integer", "minimum": b[0], "maximum": b[0] + b[1]},
                st.integers(b[0], b[0] + b[1]) | st.integers(b[0], b[0] + b[1]).map(float),
            )
        ),
        st.integers(0, 30).map(
            lambda n: ({"type": "string", "maxLength": n}, st.text(CHARS, max_size=n))
        ),
        st.lists(LEAF_TEXT | st.integers(), min_size=1, max_size=4, unique=True).map(
            lambda options: ({"enum": options}, st.sampled_from(options))
        ),
        (LEAF_TEXT | st.booleans()).map(lambda value: ({"const": value}, st.just(value))),
    )


def _containers(inner: st.SearchStrategy[Drawn]) -> st.SearchStrategy[Drawn]:
    def an_object(fields: dict[str, Drawn]) -> Drawn:
        schema = {
            "type": "object",
            "properties": {name: sub for name, (sub, _) in fields.items()},
            "required": list(fields),
            "additionalProperties": False,
        }
        values = st.fixed_dictionaries({name: strategy for name, (_, strategy) in fields.items()})
        return schema, values

    def an_array(drawn: Drawn, count: int) -> Drawn:
        sub, values = drawn
        return {"type": "array", "items": sub, "maxItems": count}, st.lists(values, max_size=count)

    def optional(drawn: Drawn) -> Drawn:
        sub, values = drawn
        return {"anyOf": [sub, {"type": "null"}]}, values | st.none()

    return st.one_of(
        st.dictionaries(NAMES, inner, min_size=1, max_size=4).map(an_object),
        st.builds(an_array, inner, st.integers(0, 4)),
        inner.map(optional),
    )


def _row_objects() -> st.SearchStrategy[Drawn]:
    tree = st.recursive(_leaves(), _containers, max_leaves=12)
    fields = st.dictionaries(NAMES.filter(lambda n: n != "key"), tree, min_size=1, max_size=5)
    return fields.map(
        lambda f: (
            {
                "type": "object",
                "properties": {name: sub for name, (sub, _) in f.items()},
                "required": list(f),
                "additionalProperties": False,
            },
            st.fixed_dictionaries({name: strategy for name, (_, strategy) in f.items()}),
        )
    )


def _forms(value: Any) -> list[int]:
    """The bytes of the pretty-printed and the compact serialisation."""
    return [
        len(json.dumps(value, indent=2, ensure_ascii=False).encode()),
        len(json.dumps(value, ensure_ascii=False).encode()),
        len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()),
    ]


@settings(max_examples=100, deadline=None)  # 300 took 19 s of the suite
@given(st.data(), _row_objects(), st.integers(1, 120))
def test_every_valid_answer_fits_under_the_bound_alone_and_in_a_batch(
    data: st.DataObject, drawn: Drawn, batch_size: int
) -> None:
    schema, values = drawn
    bound = answer_bound(schema, batch_size=batch_size)
    rows = data.draw(st.lists(values, min_size=1, max_size=min(batch_size, 5)))
    for row in rows:
        jsonschema.validate(row, schema)  # the generator's values are valid: else no proof
        assert max(_forms(row)) <= bound.row_bytes
    target(max(max(_forms(row)) for row in rows) / bound.row_bytes)  # seek the tightest
    # A batch: the last tags have the most digits; the bound must hold for any of them.
    first = batch_size - len(rows) + 1
    entries = [{"key": str(first + i), **row} for i, row in enumerate(rows)]
    answer = {"results": entries}
    assert max(_forms(answer)) <= bound.batch_bytes + len(rows) * bound.batch_row_bytes


def test_a_two_label_answer_is_bounded_well_under_100_tokens() -> None:
    labels = OutputSchema.from_labels(["spam", "urgent"])
    tokens = choose_answer_tokens(
        given=None,
        schema=labels.json_schema(),
        what="2 labels",
        model="openai/gpt-4o-mini",
        params={},
        batch_size=10,
    )
    assert tokens.source == "schema"
    assert tokens.per_row < 100 and tokens.per_batch_row < 100
    assert tokens.for_rows(10) < 10 * 100 < 10 * DEFAULT_MAX_TOKENS
    assert tokens.per_row == tokens_for(answer_bound(labels.json_schema()).row_bytes)
    assert tokens.describe().startswith(f"{tokens.per_row} per row (from the schema: 2 labels")


def test_the_bound_is_the_longest_option_and_the_exact_bytes_of_a_labels_answer() -> None:
    schema = OutputSchema.from_labels(["spam", "urgent"]).json_schema()
    longest = {"spam": False, "urgent": False}
    pretty = len(json.dumps(longest, indent=2).encode()) + 1  # + a comma after the last
    assert answer_bound(schema).row_bytes == pretty
    enum = {"type": "object", "properties": {"kind": {"enum": ["a", "ééé", "bb"]}}}
    # "ééé" as \u escapes is the longest form: 3 x 6 bytes and the quotes.
    assert answer_bound(enum).row_bytes == len('{\n  "kind": ,\n}') + 20


@pytest.mark.parametrize(
    ("field", "worst"),
    [
        ({"type": "boolean"}, False),
        ({"type": "null"}, None),
        ({"type": "number"}, -2.2250738585072014e-308),
        ({"type": "integer"}, -1.2345678901234567e300),
        ({"type": "integer", "minimum": -5, "maximum": 100}, 100.0),
        ({"type": "string", "maxLength": 7}, "\x00" * 7),
        ({"enum": ["a", "\u00e9\u00e9"]}, "\u00e9\u00e9"),
        ({"type": "array", "maxItems": 2, "items": {"type": "boolean"}}, [False, False]),
    ],
)
def test_the_longest_values_reach_the_bound(field: dict[str, Any], worst: Any) -> None:
    """Each rule's constant is needed: its longest value meets it (the comma after the
    last member is the one byte of slack)."""
    bound = answer_bound({"type": "object", "properties": {"f": field}})
    worst_bytes = len(json.dumps({"f": worst}, indent=2).encode())
    if isinstance(worst, list):  # the comma after the last item too
        worst_bytes += 1
    assert bound.row_bytes == worst_bytes + 1


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ({"type": "string"}, "field 'summary' is free text"),
        ({"type": "array", "items": {"type": "boolean"}}, "field 'summary' is a list without"),
        ({"type": "object"}, "field 'summary' is an object without properties"),
        ({}, "field 'summary' has no type"),
        (
            {"type": "array", "maxItems": 3, "items": {"type": "string"}},
            "field 'summary[]' is free text",
        ),
        ({"$ref": "#/properties/summary"}, "field 'summary' is recursive"),
    ],
)
def test_an_unbounded_field_keeps_the_default_and_is_named(
    field: dict[str, Any], reason: str
) -> None:
    schema = {"type": "object", "properties": {"summary": field, "ok": {"type": "boolean"}}}
    with pytest.raises(Unbounded, match=reason.replace("[", r"\[").replace("]", r"\]")):
        answer_bound(schema)
    tokens = choose_answer_tokens(
        given=None, schema=schema, what="2 fields", model="openai/gpt-4o", params={}, batch_size=1
    )
    assert (tokens.per_row, tokens.source) == (DEFAULT_MAX_TOKENS, "default")
    assert reason in tokens.why


def test_pydantic_models_are_bounded_through_their_refs() -> None:
    import pydantic

    class Part(pydantic.BaseModel):
        size: int = pydantic.Field(ge=0, le=999)
        kind: str = pydantic.Field(max_length=10)

    class Answer(pydantic.BaseModel):
        parts: list[Part] = pydantic.Field(max_length=3)
        note: str | None = pydantic.Field(default=None, max_length=20)

    schema = OutputSchema.from_model(Answer).json_schema()
    bound = answer_bound(schema)
    value = {
        "parts": [{"size": 999, "kind": "\x00" * 10}] * 3,
        "note": "\U0001f600" * 20,
    }
    assert max(_forms(value)) <= bound.row_bytes


@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("openai/o1", {}),
        ("openai/o3-mini", {}),
        ("openai/o4-mini", {}),
        ("openai/gpt-5-mini", {}),
        ("openrouter/openai/gpt-5", {}),
        ("deepseek/deepseek-reasoner", {}),
        ("anthropic/claude-sonnet-4-5", {"thinking": {"type": "enabled", "budget_tokens": 1024}}),
    ],
)
def test_reasoning_models_keep_the_default_and_say_why(model: str, params: dict[str, Any]) -> None:
    schema = OutputSchema.from_labels(["spam"]).json_schema()
    tokens = choose_answer_tokens(
        given=None, schema=schema, what="1 label", model=model, params=params, batch_size=1
    )
    assert (tokens.per_row, tokens.source) == (DEFAULT_MAX_TOKENS, "default")
    assert "hidden reasoning" in tokens.why


@pytest.mark.parametrize(
    "model", ["openai/gpt-4o-mini", "openai/gpt-4.1", "anthropic/claude-haiku-4-5"]
)
def test_other_models_are_tightened(model: str) -> None:
    schema = OutputSchema.from_labels(["spam"]).json_schema()
    tokens = choose_answer_tokens(
        given=None, schema=schema, what="1 label", model=model, params={}, batch_size=1
    )
    assert tokens.source == "schema"


def test_a_given_limit_is_used_as_given_whatever_the_schema() -> None:
    tokens = choose_answer_tokens(
        given=40, schema=None, what="", model="openai/o3", params={}, batch_size=10
    )
    assert (tokens.per_row, tokens.for_rows(10), tokens.source) == (40, 400, "given")
    assert tokens.describe() == "40 per row (given)"


def test_a_bound_above_the_default_keeps_the_default() -> None:
    schema = {"type": "object", "properties": {"essay": {"type": "string", "maxLength": 5000}}}
    tokens = choose_answer_tokens(
        given=None, schema=schema, what="1 field", model="openai/gpt-4o", params={}, batch_size=1
    )
    assert (tokens.per_row, tokens.source) == (DEFAULT_MAX_TOKENS, "default")
    assert "above it" in tokens.why


def test_the_batch_bound_grows_with_the_tag_digits() -> None:
    schema = OutputSchema.from_labels(["spam"]).json_schema()
    small: AnswerBound = answer_bound(schema, batch_size=9)
    large = answer_bound(schema, batch_size=100)
    assert large.batch_row_bytes == small.batch_row_bytes + 2


def test_a_lone_surrogate_in_a_name_is_bounded_by_its_escape() -> None:
    schema = {"type": "object", "properties": {"\ud800": {"type": "boolean"}}}
    escaped = json.dumps({"\ud800": False}, indent=2)  # ASCII: the name as \ud800
    assert answer_bound(schema).row_bytes == len(escaped) + 1
