"""Tests for rowpilot.llm.prompt: templates, output schemas, requests, answers, cache keys.

The end-to-end tests send the requests built here to the real simulator through
``ChatClient`` and check that every row gets its own row's answer.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jsonschema
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rowpilot.errors import ConfigError, KeyColumnError
from rowpilot.llm.prompt import (
    BatchAnswer,
    Request,
    batch_request,
    parse_batch,
    parse_single,
    repair_request,
    row_cache_key,
    single_request,
)
from rowpilot.llm.providers import ChatClient, ProviderSpec
from rowpilot.llm.schema import OutputSchema, OutputValidationError
from rowpilot.llm.template import PromptTemplate
from rowpilot.simulator.server import (
    _INSTRUCTION,
    _TAGGED,
    Simulator,
    _instruction_fields,
    _row_object,
    _short_hash,
    _summary,
    _tagged_rows,
    _untagged_text,
)

FIELDS = {"title": "str", "pages": "int", "score": "float", "done": "bool", "tags": "list"}


class Book(pydantic.BaseModel):
    title: str
    pages: int
    urgent: bool
    tags: list[str]


class Address(pydantic.BaseModel):
    city: str


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(description="the full name")
    age: int | None = None
    address: Address


def fields_schema() -> OutputSchema:
    return OutputSchema.from_fields(FIELDS)


# --------------------------------------------------------------------------- templates


def test_a_template_renders_columns_and_literal_braces() -> None:
    template = PromptTemplate("{title}: {body} {{not a column}} {title}")
    assert template.columns == ("title", "body")
    assert template.render({"title": "T", "body": "B", "other": 1}) == "T: B {not a column} T"


def test_column_names_may_hold_spaces_and_dashes() -> None:
    template = PromptTemplate("Product: {product name} ({sku-id})")
    assert template.columns == ("product name", "sku-id")
    assert template.render({"product name": "Lamp", "sku-id": 7}) == "Product: Lamp (7)"


def test_values_become_text() -> None:
    template = PromptTemplate("[{a}|{b}|{c}|{d}|{e}]")
    row = {"a": None, "b": math.nan, "c": 3.5, "d": {"k": [1, "é"]}, "e": True}
    assert template.render(row) == '[||3.5|{"k": [1, "é"]}|True]'


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("Summarize {}", "positional"),
        ("Summarize {0}", "positional"),
        ("Summarize {row.text}", "attribute or index"),
        ("Summarize {row[0]}", "attribute or index"),
        ("Summarize {text!r}", "conversion or format spec"),
        ("Summarize {score:.2f}", "conversion or format spec"),
        ("Summarize {text", "cannot be read"),
        ("Summarize text}", "cannot be read"),
        ("Summarize this", "uses no column"),
        ("Summarize {{text}}", "uses no column"),
    ],
)
def test_bad_templates_are_config_errors_with_a_hint(template: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        PromptTemplate(template)
    assert words in info.value.message
    assert info.value.hint


def test_check_names_the_unknown_column_and_lists_the_available_ones() -> None:
    template = PromptTemplate("{titel} {body}")
    columns = ["title", "body", *(f"c{i}" for i in range(20))]
    with pytest.raises(ConfigError) as info:
        template.check(columns)
    error = info.value
    assert "'titel'" in error.message
    assert error.column == "titel"
    assert error.hint is not None
    assert "did you mean 'title'" in error.hint
    assert "'c7'" in error.hint
    assert "'c8'" not in error.hint  # only the first ten are listed
    assert "(12 more)" in error.hint
    PromptTemplate("{title} {body}").check(columns)  # known columns pass


def test_a_missing_column_at_render_is_a_key_column_error() -> None:
    with pytest.raises(KeyColumnError) as info:
        PromptTemplate("{title} {body}").render({"title": "x"})
    assert info.value.column == "body"
    assert "'body'" in str(info.value)


_NAME_CHARS = st.characters(exclude_characters="{}!:.[", exclude_categories=["Cs"])
column_names = st.text(_NAME_CHARS, min_size=1, max_size=8).filter(lambda name: not name.isdigit())


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


@given(
    parts=st.lists(st.tuples(st.text(max_size=12), column_names), min_size=1, max_size=6),
    tail=st.text(max_size=12),
    data=st.data(),
)
def test_render_never_raises_and_puts_each_value_in_place(
    parts: list[tuple[str, str]], tail: str, data: st.DataObject
) -> None:
    template = PromptTemplate(
        "".join(_escape(literal) + "{" + name + "}" for literal, name in parts) + _escape(tail)
    )
    names = list(dict.fromkeys(name for _, name in parts))
    assert template.columns == tuple(names)
    row = {name: data.draw(st.text(max_size=20)) for name in names}
    expected = "".join(literal + row[name] for literal, name in parts) + tail
    assert template.render(row) == expected
    template.check(names)


@given(literal=st.text(max_size=30))
def test_literal_braces_round_trip(literal: str) -> None:
    template = PromptTemplate(_escape(literal) + "{x}" + _escape(literal))
    assert template.render({"x": "|"}) == f"{literal}|{literal}"


# --------------------------------------------------------------------------- output schemas


@pytest.mark.parametrize(
    ("spec", "schema", "value", "validated"),
    [
        ("str", {"type": "string"}, "a", "a"),
        ("string", {"type": "string"}, "a", "a"),
        ("int", {"type": "integer"}, "7", 7),
        ("integer", {"type": "integer"}, 7.0, 7),
        ("float", {"type": "number"}, "2.5", 2.5),
        ("number", {"type": "number"}, 3, 3.0),
        ("bool", {"type": "boolean"}, "true", True),
        ("boolean", {"type": "boolean"}, False, False),
        ("list", {"type": "array", "items": {"type": "string"}}, ["a"], ["a"]),
        ("list[str]", {"type": "array", "items": {"type": "string"}}, [], []),
        (" Int ", {"type": "integer"}, 1, 1),
        ("a|b|c", {"type": "string", "enum": ["a", "b", "c"]}, "b", "b"),
    ],
)
def test_field_types(spec: str, schema: dict[str, Any], value: Any, validated: Any) -> None:
    output = OutputSchema.from_fields({"x": spec})
    assert output.json_schema()["properties"] == {"x": schema}
    assert output.validate({"x": value}) == {"x": validated}


def test_fields_schema_validates_in_order_and_drops_extra_keys() -> None:
    schema = fields_schema()
    assert schema.field_names == ("title", "pages", "score", "done", "tags")
    assert not schema.is_text
    assert schema.json_schema() == {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "pages": {"type": "integer"},
            "score": {"type": "number"},
            "done": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["title", "pages", "score", "done", "tags"],
        "additionalProperties": False,
    }
    answer = {"tags": ["x"], "done": "yes", "score": 1, "pages": "3", "title": "T", "extra": 1}
    validated = schema.validate(answer)
    assert validated == {"title": "T", "pages": 3, "score": 1.0, "done": True, "tags": ["x"]}
    assert list(validated) == list(schema.field_names)


def test_any_field_name_works_even_pydantic_ones() -> None:
    schema = OutputSchema.from_fields({"model_config": "str", "_private": "int", "a b": "bool"})
    value = {"model_config": "m", "_private": 1, "a b": False}
    assert schema.validate(value) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"title": "T", "pages": 1, "score": "high", "done": True, "tags": []}, None),
        ({"title": "T", "pages": 1, "done": True, "tags": []}, "field 'score' is missing"),
        (
            {"title": 3, "pages": 1, "score": 1, "done": True, "tags": []},
            "field 'title': expected a string, got 3",
        ),
        (
            {"title": "T", "pages": 1.5, "score": 1, "done": True, "tags": []},
            "field 'pages': expected a whole number, got 1.5",
        ),
        (
            {"title": "T", "pages": 1, "score": 1, "done": "maybe", "tags": []},
            "field 'done': expected true or false, got 'maybe'",
        ),
        (
            {"title": "T", "pages": 1, "score": 1, "done": True, "tags": ["a", 2]},
            "field 'tags[1]': expected a string, got 2",
        ),
        ([1, 2], "expected a JSON object, got [1, 2]"),
    ],
)
def test_validation_messages_are_short_and_plain(value: Any, message: str | None) -> None:
    with pytest.raises(OutputValidationError) as info:
        fields_schema().validate(value)
    expected = message or "field 'score': expected a number, got 'high'"
    assert str(info.value) == expected
    assert isinstance(info.value, ValueError)


def test_validation_messages_stay_short_for_huge_values() -> None:
    with pytest.raises(OutputValidationError) as info:
        OutputSchema.from_fields({"n": "int"}).validate({"n": "x" * 100_000})
    assert len(str(info.value)) < 100
    with pytest.raises(OutputValidationError) as info:
        OutputSchema.from_fields({"n": "int", "m": "int"}).validate({"n": "a", "m": "b"})
    assert str(info.value).endswith("(and 1 more problem)")


def test_choices_are_checked() -> None:
    schema = OutputSchema.from_fields({"kind": "book | paper"})
    assert schema.validate({"kind": "paper"}) == {"kind": "paper"}
    with pytest.raises(OutputValidationError, match="field 'kind': expected 'book' or 'paper'"):
        schema.validate({"kind": "blog"})


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"title": "text"}, "field 'title': unknown type 'text'"),
        ({"title": 3}, "field 'title': the type must be a string"),
        ({"kind": "a||b"}, "not a list of distinct values"),
        ({"kind": "a|a"}, "not a list of distinct values"),
        ({"kind": "a,b|c"}, "not a list of distinct values"),
        ({"a,b": "str"}, "cannot be used"),
        ({"a:b": "str"}, "cannot be used"),
        ({" a": "str"}, "cannot be used"),
        ({"": "str"}, "non-empty"),
        ({}, "at least one"),
    ],
)
def test_bad_fields_are_config_errors(fields: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        OutputSchema.from_fields(fields)
    assert words in info.value.message


def test_an_unknown_type_lists_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as info:
        OutputSchema.from_fields({"title": "text"})
    assert info.value.hint is not None
    for name in ("str", "int", "float", "bool", "list", "a|b|c"):
        assert name in info.value.hint


def test_labels_are_boolean_fields() -> None:
    schema = OutputSchema.from_labels(["spam", "urgent"])
    assert schema.field_names == ("spam", "urgent")
    assert schema.json_schema()["properties"] == {
        "spam": {"type": "boolean"},
        "urgent": {"type": "boolean"},
    }
    assert schema.validate({"spam": "yes", "urgent": 0}) == {"spam": True, "urgent": False}
    assert "Labels: spam, urgent" in schema.instructions().splitlines()


@pytest.mark.parametrize("labels", [[], ["spam", "spam"], ["spam", ""], ["a,b"], "spam"])
def test_bad_labels_are_config_errors(labels: Any) -> None:
    with pytest.raises(ConfigError):
        OutputSchema.from_labels(labels)


def test_the_text_schema() -> None:
    schema = OutputSchema.text()
    assert schema.is_text
    assert schema.field_names == ("answer",)
    assert schema.instructions() == ""
    assert schema.validate({"answer": "hi"}) == {"answer": "hi"}
    assert parse_single("  any text, even {json} ", schema) == {
        "answer": "  any text, even {json} "
    }


def test_a_pydantic_model_validates_with_itself() -> None:
    schema = OutputSchema.from_model(Person)
    assert schema.field_names == ("name", "age", "address")
    assert schema.json_schema() == Person.model_json_schema()
    value = {"name": "Ada", "address": {"city": "London"}}
    assert schema.validate(value) == {"name": "Ada", "age": None, "address": {"city": "London"}}
    with pytest.raises(OutputValidationError) as info:
        schema.validate({"name": "Ada", "address": {}})
    assert str(info.value) == "field 'address.city' is missing"


@pytest.mark.parametrize("model", [int, pydantic.RootModel[list[int]], "Book"])
def test_what_is_not_an_object_model_is_a_config_error(model: Any) -> None:
    with pytest.raises(ConfigError):
        OutputSchema.from_model(model)


def test_a_json_schema_validates_with_jsonschema() -> None:
    schema = OutputSchema.from_json_schema(
        {
            "type": "object",
            "properties": {
                "score": {"type": "number"},
                "kind": {"enum": ["a", "b"]},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["score", "kind"],
        }
    )
    assert schema.field_names == ("score", "kind", "tags")
    assert schema.validate({"score": 1, "kind": "a", "x": 1}) == {"score": 1, "kind": "a", "x": 1}
    cases = {
        "field 'score': expected a number, got 'high'": {"score": "high", "kind": "a"},
        "field 'kind' is missing": {"score": 1},
        "field 'kind': expected one of 'a', 'b', got 'c'": {"score": 1, "kind": "c"},
        "field 'tags[0]': expected a string, got 1": {"score": 1, "kind": "a", "tags": [1]},
        "expected a JSON object, got 'no'": "no",
    }
    for message, value in cases.items():
        with pytest.raises(OutputValidationError) as info:
            schema.validate(value)
        assert str(info.value) == message


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "object", "properties": {"a": {"type": "strnig"}}}, "not a valid JSON Schema"),
        ({"type": "array", "items": {"type": "string"}}, "a JSON object with properties"),
        ({"type": "object"}, "a JSON object with properties"),
        ({"type": "object", "properties": {}}, "a JSON object with properties"),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "x": object()}, "plain JSON"),
    ],
)
def test_bad_json_schemas_are_config_errors(schema: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        OutputSchema.from_json_schema(schema)
    assert words in info.value.message


def test_the_batch_schema_wraps_the_row_schema() -> None:
    batch = OutputSchema.from_labels(["spam"]).batch_json_schema()
    assert batch == {
        "type": "object",
        "properties": {
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"key": {"type": "string"}, "spam": {"type": "boolean"}},
                    "required": ["key", "spam"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["results"],
        "additionalProperties": False,
    }


def test_the_batch_schema_of_a_model_keeps_its_definitions_resolvable() -> None:
    batch = OutputSchema.from_model(Person).batch_json_schema()
    assert "$defs" in batch
    assert "$defs" not in batch["properties"]["results"]["items"]
    entry = {"key": "1", "name": "Ada", "address": {"city": "London"}}
    jsonschema.validate({"results": [entry]}, batch)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"results": [{**entry, "address": {}}]}, batch)


def test_a_row_field_named_key_cannot_be_batched() -> None:
    schema = OutputSchema.from_fields({"key": "str", "title": "str"})
    single_request(None, "text", schema, key="1", structured=True)  # alone it is fine
    with pytest.raises(ConfigError) as info:
        batch_request(None, [("1", "text")], schema, structured=True)
    assert "'key'" in info.value.message
    assert info.value.hint is not None
    assert "rename" in info.value.hint


def test_fingerprints() -> None:
    assert fields_schema().fingerprint() == fields_schema().fingerprint()
    assert fields_schema() == fields_schema()
    other = OutputSchema.from_fields({**FIELDS, "pages": "float"})
    assert other.fingerprint() != fields_schema().fingerprint()
    book = OutputSchema.from_model(Book)
    same_shape = OutputSchema.from_json_schema(Book.model_json_schema())
    assert book.fingerprint() != same_shape.fingerprint()  # a model validates differently
    json.loads(fields_schema().fingerprint())  # canonical JSON text
    assert (
        OutputSchema.text().fingerprint()
        != OutputSchema.from_fields({"answer": "str"}).fingerprint()
    )


# --------------------------------------------------------------------------- instructions


@pytest.mark.parametrize(
    "schema",
    [
        fields_schema(),
        OutputSchema.from_labels(["spam", "urgent"]),
        OutputSchema.from_model(Book),
        OutputSchema.from_model(Person),
        OutputSchema.from_fields({"kind": "a|b", "n": "int"}),
    ],
    ids=["fields", "labels", "model", "nested-model", "choices"],
)
def test_instructions_name_the_fields_the_way_the_simulator_reads_them(
    schema: OutputSchema,
) -> None:
    for text in (schema.instructions(), schema.batch_instructions()):
        assert "JSON" in text
        read = _instruction_fields(text)
        assert tuple(read) == schema.field_names
        assert len([line for line in text.splitlines() if _INSTRUCTION.match(line)]) == 1
    properties = schema.json_schema()["properties"]
    simple = {"string", "integer", "number", "boolean"}
    for name, kind in _instruction_fields(schema.instructions()).items():
        if properties[name].get("type") in simple and "enum" not in properties[name]:
            assert kind["type"] == properties[name]["type"]


def test_a_schema_that_says_more_than_the_fields_line_is_quoted() -> None:
    person = OutputSchema.from_model(Person).instructions()
    assert "the full name" in person  # descriptions reach the model
    assert '"title"' not in person  # pydantic's titles do not
    assert "JSON Schema" not in OutputSchema.from_model(Book).instructions()
    assert "JSON Schema" not in fields_schema().instructions()


def test_the_single_and_batch_instructions_read_as_expected() -> None:
    assert fields_schema().instructions() == (
        "Reply with one JSON object and nothing else (no prose, no code fences), with these "
        "fields:\n"
        "Fields: title, pages:int, score:number, done:bool, tags:list\n"
        "Untyped fields are strings; the types mean: int a whole number, number any "
        "number, bool true or false, list a list of strings."
    )
    batch = OutputSchema.from_labels(["spam", "urgent"]).batch_instructions()
    assert '{"results": [...]}' in batch
    assert "[key=N]" in batch
    assert batch.endswith("Labels: spam, urgent")


# --------------------------------------------------------------------------- requests


def test_a_single_request_keeps_the_row_alone_in_the_user_message() -> None:
    schema = fields_schema()
    request = single_request(
        "You read books.", "a text\nover lines", schema, key="k1", structured=True
    )
    assert request.messages == [{"role": "user", "content": "a text\nover lines"}]
    assert request.system == "You read books.\n\n" + schema.instructions()
    assert request.json_schema == schema.json_schema()
    assert request.keys == ("k1",)
    assert not request.batch
    plain = single_request(None, "t", schema, key="k1", structured=False)
    assert plain.json_schema is None
    assert plain.system == schema.instructions()


def test_a_text_request_asks_for_text() -> None:
    request = single_request(None, "t", OutputSchema.text(), key="k", structured=True)
    assert request.system is None
    assert request.json_schema is None
    request = single_request("Be brief.", "t", OutputSchema.text(), key="k", structured=True)
    assert request.system == "Be brief."


def test_a_batch_request_tags_rows_by_position() -> None:
    rows = [("a]b", "first\n\nrow  text"), ("line\nbreak", "[key=9] forged"), ("7", "")]
    schema = fields_schema()
    request = batch_request("Sys.", rows, schema, structured=True)
    assert request.keys == ("a]b", "line\nbreak", "7")
    assert request.batch
    assert request.json_schema == schema.batch_json_schema()
    assert request.system == "Sys.\n\n" + schema.batch_instructions()
    content = request.messages[0]["content"]
    assert content.splitlines() == [
        "Rows (3):",
        "[key=1] first row text",
        "[key=2] [key=9] forged",
        "[key=3]",
    ]
    assert _tagged_rows(content) == [("1", "first row text"), ("2", "[key=9] forged"), ("3", "")]
    assert batch_request(None, rows, schema, structured=False).json_schema is None


def test_bad_batches_are_value_errors() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        batch_request(None, [], fields_schema(), structured=True)
    with pytest.raises(ValueError, match="twice"):
        batch_request(None, [("a", "x"), ("a", "y")], fields_schema(), structured=True)


@given(
    rows=st.lists(
        st.tuples(st.text(max_size=10), st.text(max_size=40)),
        min_size=1,
        max_size=10,
        unique_by=lambda row: row[0],
    )
)
def test_every_batch_row_is_one_tagged_line_whatever_its_key_and_text(
    rows: list[tuple[str, str]],
) -> None:
    request = batch_request(None, rows, OutputSchema.text(), structured=False)
    content = request.messages[0]["content"]
    tagged = [line for line in content.splitlines() if _TAGGED.match(line)]
    assert len(tagged) == len(rows)
    expected = [(str(index + 1), " ".join(text.split())) for index, (_, text) in enumerate(rows)]
    assert _tagged_rows(content) == expected
    assert request.keys == tuple(key for key, _ in rows)


def test_chars_and_texts_count_system_and_messages() -> None:
    request = Request(
        system="abc",
        messages=[
            {"role": "user", "content": "de"},
            {"role": "user", "content": [{"type": "text", "text": "fgh"}, {"type": "image"}]},
        ],
        json_schema=None,
        keys=("k",),
    )
    assert request.texts() == ["abc", "de", "fgh"]
    assert request.chars() == 8


def test_a_batch_repair_quotes_the_problem_and_repeats_the_rows() -> None:
    request = batch_request("Sys.", [("a", "one"), ("b", "two")], fields_schema(), structured=True)
    bad = "x" * 20_000
    repaired = repair_request(request, bad, "field 'pages': expected an integer, got 'ten'.")
    assert repaired.system == request.system
    assert repaired.keys == request.keys
    assert repaired.batch
    assert repaired.json_schema == request.json_schema
    assert repaired.messages[: len(request.messages)] == request.messages
    assistant, user = repaired.messages[-2:]
    assert assistant["role"] == "assistant"
    assert 4000 <= len(assistant["content"]) < 4100
    assert "16000 more characters cut" in assistant["content"]
    assert user["role"] == "user"
    assert "field 'pages': expected an integer, got 'ten'" in user["content"]
    assert "JSON only" in user["content"]
    assert _tagged_rows(user["content"]) == [("1", "one"), ("2", "two")]


def test_a_single_repair_repeats_the_text_and_says_the_problem_in_the_system_prompt() -> None:
    request = single_request(None, "the text", fields_schema(), key="k", structured=False)
    repaired = repair_request(request, "", "the answer is empty")
    assert [m["role"] for m in repaired.messages] == ["user", "assistant", "user"]
    assert repaired.messages[1]["content"] == "(an empty answer)"  # never an empty message
    assert repaired.messages[-1]["content"] == "the text"
    assert repaired.system is not None
    assert repaired.system.startswith(fields_schema().instructions())
    assert "could not be used: the answer is empty" in repaired.system
    twice = repair_request(repaired, "{}", "field 'title' is missing")
    assert twice.messages[-1]["content"] == "the text"
    assert len(twice.messages) == 5


# --------------------------------------------------------------------------- cache keys

PARAMS = {"temperature": 0.0, "extra_body": {"top_p": 1, "seed": 3}}


def test_request_cache_keys_are_stable_and_secret_free() -> None:
    request = single_request(None, "t", fields_schema(), key="k", structured=True)
    key = request.cache_key("openai", "gpt-4o-mini", PARAMS, 100)
    assert len(key) == 40
    assert int(key, 16) >= 0
    assert key == request.cache_key("openai", "gpt-4o-mini", dict(reversed(PARAMS.items())), 100)
    assert key == request.cache_key(
        "openai", "gpt-4o-mini", {"temperature": 0, "extra_body": {"seed": 3, "top_p": 1.0}}, 100
    )
    # Neither credentials nor client options change the key.
    with_secret = {**PARAMS, "timeout": 5, "extra_headers": {"Authorization": "Bearer sk-1"}}
    other_secret = {**PARAMS, "timeout": 9, "extra_headers": {"Authorization": "Bearer sk-2"}}
    assert request.cache_key("p", "m", with_secret, 1) == request.cache_key(
        "p", "m", other_secret, 1
    )
    headers = {**PARAMS, "extra_headers": {"x-sim-fault": "none"}}
    assert request.cache_key("p", "m", headers, 1) != request.cache_key("p", "m", PARAMS, 1)


def test_request_cache_keys_change_with_every_determining_input() -> None:
    schema = fields_schema()
    base = single_request("S", "t", schema, key="k", structured=True)
    requests = [
        base,
        single_request("S2", "t", schema, key="k", structured=True),
        single_request("S", "t2", schema, key="k", structured=True),
        single_request("S", "t", schema, key="k", structured=False),
        single_request("S", "t", OutputSchema.from_labels(["x"]), key="k", structured=True),
        repair_request(base, "bad", "problem"),
    ]
    keys = {request.cache_key("openai", "m", PARAMS, 100) for request in requests}
    keys |= {
        base.cache_key("anthropic", "m", PARAMS, 100),
        base.cache_key("openai", "m2", PARAMS, 100),
        base.cache_key("openai", "m", {**PARAMS, "temperature": 0.5}, 100),
        base.cache_key("openai", "m", PARAMS, 101),
    }
    assert len(keys) == len(requests) + 4


def test_row_cache_keys_do_not_depend_on_the_batch() -> None:
    schema = fields_schema()
    rows = [("a", "one"), ("b", "two two"), ("c", "three")]

    def keys_of(batch: Sequence[tuple[str, str]]) -> dict[str, str]:
        return {
            key: row_cache_key("openai", "m", "S", text, schema, PARAMS, 100) for key, text in batch
        }

    together = keys_of(rows)
    assert together == {**keys_of(rows[:1]), **keys_of(rows[1:][::-1])}
    assert len(set(together.values())) == 3
    alone = single_request("S", "two two", schema, key="b", structured=True)
    batch = batch_request("S", rows, schema, structured=True)
    assert alone.cache_key("openai", "m", PARAMS, 100) != batch.cache_key(
        "openai", "m", PARAMS, 100
    )


def test_row_cache_keys_change_with_every_determining_input() -> None:
    schema = fields_schema()
    args: dict[str, Any] = {
        "provider": "openai",
        "model": "m",
        "system": "S",
        "row_text": "t",
        "schema": schema,
        "params": PARAMS,
        "max_tokens": 100,
    }
    changes: dict[str, Any] = {
        "provider": "anthropic",
        "model": "m2",
        "system": None,
        "row_text": "t ",
        "schema": OutputSchema.from_fields({**FIELDS, "title": "int"}),
        "params": {**PARAMS, "temperature": 1},
        "max_tokens": 99,
    }
    base = row_cache_key(**args)
    changed = {row_cache_key(**{**args, name: value}) for name, value in changes.items()}
    assert base not in changed
    assert len(changed) == len(changes)


json_leaves = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


def _reordered(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _reordered(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(item) for item in value]
    return value


@given(params=st.dictionaries(st.text(max_size=8), json_values, max_size=6), text=st.text())
def test_cache_keys_do_not_depend_on_dict_order(params: dict[str, Any], text: str) -> None:
    schema = OutputSchema.from_labels(["spam"])
    request = batch_request("S", [("a", text), ("b", "x")], schema, structured=True)
    reordered = _reordered(params)
    assert request.cache_key("p", "m", params, 9) == request.cache_key("p", "m", reordered, 9)
    assert row_cache_key("p", "m", "S", text, schema, params, 9) == row_cache_key(
        "p", "m", "S", text, schema, reordered, 9
    )


# --------------------------------------------------------------------------- parsing answers

BOOK = {"title": "T", "pages": 3, "score": 1.5, "done": False, "tags": ["a"]}


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(BOOK),
        f"```json\n{json.dumps(BOOK, indent=2)}\n```",
        f"Here is the JSON:\n{json.dumps(BOOK)}\nHope this helps!",
        f"Sure: ```\n{json.dumps(BOOK)}```",
        f"\ufeff{json.dumps(BOOK)}",
        f"[{json.dumps(BOOK)}]",
        f"Note: use {{braces}} wisely. {json.dumps(BOOK)}",
    ],
    ids=["bare", "fenced", "prose", "inline-fence", "bom", "list-of-one", "stray-brace"],
)
def test_a_single_answer_is_found_in_fences_and_prose(text: str) -> None:
    assert parse_single(text, fields_schema()) == BOOK


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the answer is empty"),
        ("I cannot help with that.", "the answer holds no complete JSON object"),
        ('{"title": "T", "pages": 3', "the answer holds no complete JSON object"),
        ('{"title": "T", "pages": NaN, "score": 1, "done": true, "tags": []}', "no complete JSON"),
        (json.dumps({**BOOK, "pages": "ten"}), "field 'pages': expected an integer, got 'ten'"),
    ],
)
def test_bad_single_answers_get_a_short_message(text: str, message: str) -> None:
    with pytest.raises(OutputValidationError) as info:
        parse_single(text, fields_schema())
    assert message in str(info.value)
    assert len(str(info.value)) < 120


def test_an_object_inside_a_cut_answer_is_not_taken_for_the_answer() -> None:
    schema = OutputSchema.from_json_schema({"type": "object", "properties": {"key": {}}})
    cut = 'Sure! Here is the JSON:\n{"results": [{"key": "1"}, {"key": "2", "ti'
    with pytest.raises(OutputValidationError):
        parse_single(cut, schema)
    assert parse_batch(cut, ["a", "b"], fields_schema()).valid == {}


def entry(tag: Any, **fields: Any) -> dict[str, Any]:
    return {"key": tag, **{**BOOK, **fields}}


def answer(*entries: Any) -> str:
    return json.dumps({"results": list(entries)})


def test_a_batch_answer_lands_on_its_keys() -> None:
    text = answer(entry("2", title="B"), entry(1, title="A"), entry("[key=3]", title="C"))
    read = parse_batch(text, ["x", "y", "z"], fields_schema())
    assert read == BatchAnswer(
        valid={
            "x": {**BOOK, "title": "A"},
            "y": {**BOOK, "title": "B"},
            "z": {**BOOK, "title": "C"},
        },
        problems={},
    )
    assert list(read.valid) == ["x", "y", "z"]


def test_batch_problems_missing_invalid_duplicates_and_strangers() -> None:
    text = answer(
        entry("1", pages="ten"),
        entry("2", title="first"),
        entry("2", title="second"),
        entry("4", pages="bad"),
        entry("4", title="fixed"),
        entry("9", title="not asked"),
        {"title": "no key"},
        "not an object",
    )
    read = parse_batch(text, ["a", "b", "c", "d"], fields_schema())
    assert read.valid == {"b": {**BOOK, "title": "first"}, "d": {**BOOK, "title": "fixed"}}
    assert read.problems == {
        "a": "field 'pages': expected an integer, got 'ten'",
        "c": "missing from the answer",
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Sorry, I cannot do that.", "the answer holds no complete JSON object"),
        ("", "the answer is empty"),
        (json.dumps(BOOK), 'the answer has no "results" list'),
    ],
)
def test_an_unreadable_batch_answer_is_every_keys_problem(text: str, problem: str) -> None:
    read = parse_batch(text, ["a", "b"], fields_schema())
    assert read.valid == {}
    assert set(read.problems) == {"a", "b"}
    assert all(problem in message for message in read.problems.values())


def test_batch_answers_in_other_shapes() -> None:
    schema = OutputSchema.from_labels(["spam"])
    listed = json.dumps([{"key": "2", "spam": True}, {"key": "1", "spam": False}])
    assert parse_batch(listed, ["a", "b"], schema).valid == {
        "a": {"spam": False},
        "b": {"spam": True},
    }
    keyed = json.dumps({"results": {"1": {"spam": True}, "2": {"spam": "no"}}})
    assert parse_batch(f"```json\n{keyed}\n```", ["a", "b"], schema).valid == {
        "a": {"spam": True},
        "b": {"spam": False},
    }


ACTIONS = ("valid", "invalid", "missing", "invalid+valid", "valid+invalid", "int-tag")


@settings(max_examples=200)
@given(
    keys=st.lists(st.text(max_size=8), unique=True, min_size=1, max_size=12),
    data=st.data(),
)
def test_every_asked_key_lands_in_exactly_one_place(keys: list[str], data: st.DataObject) -> None:
    schema = OutputSchema.from_fields({"n": "int", "word": "str"})
    actions = [data.draw(st.sampled_from(ACTIONS)) for _ in keys]
    entries: list[Any] = []
    for index, action in enumerate(actions):
        tag: Any = str(index + 1)
        good = {"key": tag, "n": index, "word": f"w{index}"}
        bad = {"key": tag, "n": "not a number", "word": "w"}
        entries += {
            "valid": [good],
            "invalid": [bad],
            "missing": [],
            "invalid+valid": [bad, good],
            "valid+invalid": [good, bad],
            "int-tag": [{**good, "key": index + 1}],
        }[action]
    strangers = data.draw(st.lists(st.integers(len(keys) + 1, 99) | st.just(0), max_size=3))
    entries += [{"key": str(tag), "n": -1, "word": "stranger"} for tag in strangers]
    entries += data.draw(st.lists(json_leaves, max_size=2))
    shuffled = data.draw(st.permutations(entries))
    read = parse_batch(json.dumps({"results": shuffled}), keys, schema)

    assert set(read.valid) | set(read.problems) == set(keys)
    assert not set(read.valid) & set(read.problems)
    for index, (key, action) in enumerate(zip(keys, actions, strict=True)):
        if action == "missing":
            assert read.problems[key] == "missing from the answer"
        elif action == "invalid":
            assert read.problems[key] == "field 'n': expected an integer, got 'not a number'"
        else:
            assert read.valid[key] == {"n": index, "word": f"w{index}"}


# --------------------------------------------------------------------------- the simulator


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator() as simulator:
        yield simulator


ROWS = [
    ("a]b", "Buy cheap pills now, this is not spam at all"),
    ("line\nbreak", "URGENT: the production   server is\ndown since 3am"),
    ("7", "hello world"),
    (" spaced key ", "A quiet note about lunch plans for Friday afternoon with the team"),
]
SYSTEM = "You label support tickets."
SCHEMAS = {
    "fields": fields_schema(),
    "labels": OutputSchema.from_labels(["spam", "urgent"]),
    "model": OutputSchema.from_model(Book),
    "text": OutputSchema.text(),
}


def _client(sim: Simulator, kind: str) -> ChatClient:
    if kind == "openai":
        return ChatClient(
            ProviderSpec("sim", "openai", sim.openai_base_url, None), "gpt-4o-mini", api_key="x"
        )
    spec = ProviderSpec("sim", "anthropic", sim.anthropic_base_url, None)
    return ChatClient(spec, "claude-haiku-4-5", api_key="x")


def ask(
    sim: Simulator, kind: str, requests: Sequence[Request], fault: str | None = None
) -> list[str]:
    """The answers' texts, all requests sent at once."""
    params = {"extra_headers": {"x-sim-fault": fault}} if fault else {}

    async def go() -> list[str]:
        client = _client(sim, kind)
        try:
            completions = await asyncio.gather(
                *(
                    client.complete(
                        request.messages,
                        system=request.system,
                        max_tokens=4000,
                        json_schema=request.json_schema,
                        params=params,
                    )
                    for request in requests
                )
            )
        finally:
            await client.aclose()
        assert all(completion.finish_reason == "stop" for completion in completions)
        return [completion.text for completion in completions]

    return asyncio.run(go())


def expected_output(schema: OutputSchema, text: str, *, batch: bool) -> dict[str, Any]:
    """What the simulator's rules give for a row's text, validated as we validate it."""
    if schema.is_text:
        seen = " ".join(text.split())
        return {
            "answer": _summary(seen) if batch else f"Answer {_short_hash(text)}: {_summary(seen)}"
        }
    seen = " ".join(text.split()) if batch else _untagged_text(text)
    properties: Mapping[str, Any] = schema.json_schema()["properties"]
    return schema.validate(_row_object(seen, properties))


KINDS = ["openai", "anthropic"]


@pytest.mark.parametrize("structured", [True, False], ids=["structured", "instructed"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(SCHEMAS))
def test_the_simulator_answers_every_row_with_its_own_answer(
    sim: Simulator, name: str, kind: str, structured: bool
) -> None:
    schema = SCHEMAS[name]
    batch = batch_request(SYSTEM, ROWS, schema, structured=structured)
    singles = [
        single_request(SYSTEM, text, schema, key=key, structured=structured) for key, text in ROWS
    ]
    batch_text, *single_texts = ask(sim, kind, [batch, *singles])

    read = parse_batch(batch_text, batch.keys, schema)
    assert read.problems == {}
    assert read.valid == {key: expected_output(schema, text, batch=True) for key, text in ROWS}
    for (key, text), single, answer_text in zip(ROWS, singles, single_texts, strict=True):
        assert single.keys == (key,)
        assert parse_single(answer_text, schema) == expected_output(schema, text, batch=False)


def test_labels_follow_the_rows_words(sim: Simulator) -> None:
    schema = SCHEMAS["labels"]
    request = batch_request(None, ROWS, schema, structured=False)
    read = parse_batch(ask(sim, "openai", [request])[0], request.keys, schema)
    assert read.valid["a]b"]["spam"] is True
    assert read.valid["line\nbreak"]["urgent"] is True


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("structured", [True, False], ids=["structured", "instructed"])
def test_faulty_batch_answers_name_the_rows_they_fail(
    sim: Simulator, kind: str, structured: bool
) -> None:
    schema = SCHEMAS["fields"]
    request = batch_request(SYSTEM, ROWS, schema, structured=structured)
    missing_text, bad_text = [
        ask(sim, kind, [request], fault=fault)[0] for fault in ("missing_field", "bad_content")
    ]

    missing = parse_batch(missing_text, request.keys, schema)
    last_key = ROWS[-1][0]
    assert missing.problems == {last_key: "missing from the answer"}
    assert set(missing.valid) == {key for key, _ in ROWS[:-1]}

    bad = parse_batch(bad_text, request.keys, schema)
    assert bad.valid == {}
    assert set(bad.problems) == set(request.keys)
    assert all("no complete JSON object" in problem for problem in bad.problems.values())


@pytest.mark.parametrize("kind", KINDS)
def test_faulty_single_answers_are_output_validation_errors(sim: Simulator, kind: str) -> None:
    schema = SCHEMAS["model"]
    request = single_request(SYSTEM, ROWS[0][1], schema, key=ROWS[0][0], structured=True)
    missing_text, bad_text = [
        ask(sim, kind, [request], fault=fault)[0] for fault in ("missing_field", "bad_content")
    ]
    with pytest.raises(OutputValidationError, match="field 'tags' is missing"):
        parse_single(missing_text, schema)
    with pytest.raises(OutputValidationError, match="no complete JSON object"):
        parse_single(bad_text, schema)


@pytest.mark.parametrize("kind", KINDS)
def test_repaired_requests_are_answered_for_the_same_rows(sim: Simulator, kind: str) -> None:
    schema = SCHEMAS["fields"]
    batch = batch_request(SYSTEM, ROWS, schema, structured=True)
    single = single_request(SYSTEM, ROWS[1][1], schema, key=ROWS[1][0], structured=False)
    bad_batch, bad_single = ask(sim, kind, [batch, single], fault="bad_content")
    broken = parse_batch(bad_batch, batch.keys, schema)
    batch_fix = repair_request(batch, bad_batch, next(iter(broken.problems.values())))
    single_fix = repair_request(single, bad_single, "the answer holds no complete JSON object")
    fixed_batch, fixed_single = ask(sim, kind, [batch_fix, single_fix])

    read = parse_batch(fixed_batch, batch_fix.keys, schema)
    assert read.valid == {key: expected_output(schema, text, batch=True) for key, text in ROWS}
    assert parse_single(fixed_single, schema) == expected_output(schema, ROWS[1][1], batch=False)
