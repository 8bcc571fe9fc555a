"""Tests for rowpilot._task: loading task paths, versions, the ctx argument, output checks."""

from __future__ import annotations

import datetime as dt
import functools
import importlib
import logging
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from rowpilot.errors import OutputCollisionError, TaskLoadError, TaskOutputError
from rowpilot.tasks.ctx import Ctx
from rowpilot.tasks.output import MatrixRows, group_parts, output_json, output_parts
from rowpilot.tasks.python import PythonTask as Task
from rowpilot.tasks.python import load_task, source_version

TASKS = """\
import asyncio

NOT_CALLABLE = 42
_private = print


def upper(row):
    return {"upper": row["text"].upper()}


def lower(row, ctx):
    return {"lower": row["text"].lower(), "key": ctx.key}


async def async_upper(row):
    await asyncio.sleep(0)
    return {"upper": row["text"].upper()}


class Tasks:
    @staticmethod
    def shout(row):
        return {"shout": row["text"].upper() + "!"}

    def method(self, row, ctx):
        return {"method": ctx.key}


tasks = Tasks()
"""

WriteModule = Callable[[str, str], Path]


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteModule]:
    """``write_module("name.py", text)`` in tmp_path (the cwd); imports are undone afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        importlib.invalidate_caches()
        return path

    yield write
    root = str(tmp_path)
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(root):
            del sys.modules[name]


def row() -> dict[str, Any]:
    return {"id": "k1", "text": "Hello"}


def ctx(key: str = "k1") -> Ctx:
    return Ctx("run-1", key, 0, 1, logging.getLogger("test"))


# -- load_task -----------------------------------------------------------------------------


def test_load_module_function(write_module: WriteModule) -> None:
    write_module("rp_tasks_a.py", TASKS)
    task = load_task("rp_tasks_a:upper")
    assert task.name == "upper"
    assert task.fn(row()) == {"upper": "HELLO"}
    assert (task.is_async, task.takes_ctx) == (False, False)
    assert task.arguments(row(), ctx()) == (row(),)

    with_ctx = load_task("rp_tasks_a:lower")
    assert with_ctx.takes_ctx
    assert with_ctx.fn(*with_ctx.arguments(row(), ctx("k9"))) == {"lower": "hello", "key": "k9"}

    assert load_task("rp_tasks_a:async_upper").is_async


def test_load_a_function_of_a_package_module(write_module: WriteModule) -> None:
    write_module("rp_pkg/__init__.py", "")
    write_module("rp_pkg/jobs.py", TASKS)
    assert load_task("rp_pkg.jobs:upper").fn(row()) == {"upper": "HELLO"}


@pytest.mark.parametrize("relative", [True, False], ids=["relative", "absolute"])
def test_load_file_function(write_module: WriteModule, tmp_path: Path, relative: bool) -> None:
    write_module("jobs/rp_file_tasks.py", TASKS)
    spec = "jobs/rp_file_tasks.py:upper" if relative else f"{tmp_path}/jobs/rp_file_tasks.py:upper"
    task = load_task(spec)
    assert task.name == "upper"
    assert task.fn(row()) == {"upper": "HELLO"}


def test_a_task_file_can_import_its_neighbours(write_module: WriteModule) -> None:
    write_module("jobs/rp_neighbour.py", "SUFFIX = '?'\n")
    write_module(
        "jobs/rp_main_task.py",
        """\
        import rp_neighbour

        def ask(row):
            return {"q": row["text"] + rp_neighbour.SUFFIX}
        """,
    )
    assert load_task("jobs/rp_main_task.py:ask").fn(row()) == {"q": "Hello?"}


def test_the_same_file_loads_as_the_same_module(write_module: WriteModule) -> None:
    write_module("rp_same.py", TASKS)
    assert load_task("rp_same.py:upper").fn is load_task("./rp_same.py:upper").fn


@pytest.mark.parametrize(
    ("attribute", "expected", "takes_ctx"),
    [
        ("Tasks.shout", {"shout": "HELLO!"}, False),
        ("tasks.shout", {"shout": "HELLO!"}, False),
        ("tasks.method", {"method": "k1"}, True),
    ],
)
def test_load_a_nested_attribute(
    write_module: WriteModule, attribute: str, expected: dict[str, Any], takes_ctx: bool
) -> None:
    write_module("rp_nested.py", TASKS)
    for spec in (f"rp_nested:{attribute}", f"rp_nested.py:{attribute}"):
        task = load_task(spec)
        assert task.takes_ctx is takes_ctx
        assert task.fn(*task.arguments(row(), ctx())) == expected


def test_a_given_version_overrides_the_source_hash(write_module: WriteModule) -> None:
    write_module("rp_versioned.py", TASKS)
    assert load_task("rp_versioned:upper", version="2024-06").version == "2024-06"


# -- load errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["upper", "rp_tasks:", ":upper", ""])
def test_a_spec_that_names_no_function(spec: str) -> None:
    with pytest.raises(TaskLoadError, match="does not name a function") as caught:
        load_task(spec)
    assert caught.value.hint == "write module:function or path/to/file.py:function"


def test_missing_file(write_module: WriteModule) -> None:
    with pytest.raises(TaskLoadError, match=r"task file nope/tasks\.py does not exist") as caught:
        load_task("nope/tasks.py:upper")
    assert caught.value.hint == "check the path"


def test_missing_module(write_module: WriteModule) -> None:
    with pytest.raises(TaskLoadError, match="no module named 'rp_no_such_module'") as caught:
        load_task("rp_no_such_module:upper")
    assert caught.value.hint is not None
    assert "file.py:function" in caught.value.hint


BROKEN = """\
def upper(row):
    return row

raise RuntimeError("the API key is not set")
"""


@pytest.mark.parametrize("spec", ["rp_broken:upper", "rp_broken.py:upper"])
def test_a_module_that_raises_on_import_names_the_exception(
    write_module: WriteModule, spec: str
) -> None:
    write_module("rp_broken.py", BROKEN)
    with pytest.raises(TaskLoadError) as caught:
        load_task(spec)
    assert "raised RuntimeError: the API key is not set" in caught.value.message
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert caught.value.hint is not None
    assert "--debug" in caught.value.hint
    # A failed import leaves nothing half-loaded behind: fixing the file fixes the load.
    write_module("rp_broken.py", TASKS)
    assert load_task(spec).fn(row()) == {"upper": "HELLO"}


def test_a_syntax_error_names_the_exception(write_module: WriteModule) -> None:
    write_module("rp_syntax.py", "def upper(row)\n    return row\n")
    with pytest.raises(TaskLoadError, match="raised SyntaxError"):
        load_task("rp_syntax.py:upper")


@pytest.mark.parametrize(
    "missing",
    ["rp_unrelated_dependency_xyz", "rp_dep"],
    ids=["unrelated-name", "name-is-a-prefix-of-the-task-module"],
)
def test_a_missing_dependency_of_the_task_module_is_named(
    write_module: WriteModule, missing: str
) -> None:
    # The task module exists; what is missing is a module it imports.
    write_module("rp_dep_task.py", f"import {missing}\n\ndef upper(row):\n    return row\n")
    with pytest.raises(TaskLoadError) as caught:
        load_task("rp_dep_task:upper")
    assert f"No module named '{missing}'" in caught.value.message
    assert "importing rp_dep_task raised ModuleNotFoundError" in caught.value.message


@pytest.mark.parametrize("spec", ["rp_attrs:nope", "rp_attrs.py:nope", "rp_attrs:Tasks.nope"])
def test_missing_attribute_hint_lists_the_functions(write_module: WriteModule, spec: str) -> None:
    write_module("rp_attrs.py", TASKS)
    with pytest.raises(TaskLoadError, match="has no attribute") as caught:
        load_task(spec)
    hint = caught.value.hint
    assert hint is not None
    assert hint.startswith("check the name; it defines ")
    for name in ("upper", "lower", "async_upper", "Tasks"):
        assert name in hint
    assert "_private" not in hint
    assert "NOT_CALLABLE" not in hint


def test_missing_attribute_of_a_module_without_functions(write_module: WriteModule) -> None:
    write_module("rp_empty.py", "VALUE = 1\n")
    with pytest.raises(TaskLoadError) as caught:
        load_task("rp_empty:upper")
    assert caught.value.hint == "check the name; it defines no functions"


def test_a_non_callable_attribute(write_module: WriteModule) -> None:
    write_module("rp_nc.py", TASKS)
    with pytest.raises(TaskLoadError, match="rp_nc:NOT_CALLABLE is a int, not callable"):
        load_task("rp_nc:NOT_CALLABLE")


def test_from_callable_refuses_a_non_callable() -> None:
    with pytest.raises(TaskLoadError, match="is not callable"):
        Task.from_callable(42)  # type: ignore[arg-type]


# -- source_version ------------------------------------------------------------------------

FUNCTION = """\
def task(row):
    return {"n": len(row)}
"""


def test_source_version_is_stable_and_changes_with_the_body(write_module: WriteModule) -> None:
    write_module("rp_v1.py", FUNCTION)
    version = load_task("rp_v1:task").version
    assert len(version) == 16
    assert load_task("rp_v1:task").version == version
    assert source_version(load_task("rp_v1:task").fn) == version

    # Comments and blank lines do not count, in the function or around it.
    write_module("rp_v2.py", f"# a comment\n\n\n{FUNCTION}\n\n# the end\n")
    assert load_task("rp_v2:task").version == version
    assert load_task("rp_v2.py:task").version == version
    write_module("rp_v4.py", FUNCTION.replace("return", "# cheaper model\n    return"))
    assert load_task("rp_v4:task").version == version

    # Any change inside the function body: a new version.
    write_module("rp_v3.py", FUNCTION.replace("len(row)", "len(row) + 1"))
    assert load_task("rp_v3:task").version != version


def test_the_version_covers_the_helpers_and_constants_of_the_task_module(
    write_module: WriteModule,
) -> None:
    """Editing a helper the entry function calls (or a prompt constant) is a new task."""
    body = "PROMPT = 'Label: {}'\n\ndef helper(text):\n    return PROMPT.format(text)\n\n"
    body += "def task(row):\n    return {'prompt': helper(row['text'])}\n"
    write_module("rp_h1.py", body)
    write_module("rp_h2.py", body.replace("PROMPT.format(text)", "PROMPT.format(text.strip())"))
    write_module("rp_h3.py", body.replace("'Label: {}'", "'Classify: {}'"))
    write_module("rp_h4.py", body + "\ndef another(row):\n    return {}\n")
    versions = {load_task(f"rp_h{n}:task").version for n in (1, 2, 3, 4)}
    assert len(versions) == 4
    # Two entry points of one module are two tasks.
    assert load_task("rp_h4:another").version != load_task("rp_h4:task").version


def test_source_version_of_objects_without_source() -> None:
    assert source_version(len) == source_version(len)
    assert source_version(len) != source_version(abs)
    assert Task.from_callable(functools.partial(len)).version  # no source, still a version


# -- takes_ctx and is_async ----------------------------------------------------------------


def only_row(row: dict[str, Any]) -> dict[str, Any]:
    return row


def row_and_ctx(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    return row


def keyword_ctx(row: dict[str, Any], *, ctx: Ctx | None = None) -> dict[str, Any]:
    return row


def any_second_name(row: dict[str, Any], context: Ctx) -> dict[str, Any]:
    return row


def star_args(row: dict[str, Any], *args: Any) -> dict[str, Any]:
    return row


def second_with_default(row: dict[str, Any], retries: int = 3) -> dict[str, Any]:
    return row


async def async_row(row: dict[str, Any]) -> dict[str, Any]:
    return row


async def async_row_ctx(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    return row


class CallRow:
    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        return row


class CallRowCtx:
    def __call__(self, row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        return row


class AsyncCallRow:
    async def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        return row


class AsyncCallRowCtx:
    async def __call__(self, row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
        return row


@pytest.mark.parametrize(
    ("fn", "takes_ctx", "is_async"),
    [
        (only_row, False, False),
        (row_and_ctx, True, False),
        (keyword_ctx, True, False),
        (any_second_name, True, False),
        (star_args, True, False),
        (second_with_default, False, False),
        (lambda row: row, False, False),
        (lambda row, ctx: row, True, False),
        (async_row, False, True),
        (async_row_ctx, True, True),
        (CallRow(), False, False),
        (CallRowCtx(), True, False),
        (AsyncCallRow(), False, True),
        (AsyncCallRowCtx(), True, True),
        (functools.partial(row_and_ctx), True, False),
        (functools.partial(async_row), False, True),
    ],
    ids=lambda value: getattr(value, "__name__", type(value).__name__),
)
def test_takes_ctx_and_is_async(fn: Callable[..., Any], takes_ctx: bool, is_async: bool) -> None:
    task = Task.from_callable(fn)
    assert task.takes_ctx is takes_ctx
    assert task.is_async is is_async
    expected = (row(), ctx()) if takes_ctx else (row(),)
    assert task.arguments(row(), ctx()) == expected


def test_a_callable_object_is_versioned_and_named_by_its_class() -> None:
    task = Task.from_callable(CallRowCtx())
    assert task.name == "CallRowCtx"
    assert task.version == Task.from_callable(CallRowCtx()).version
    assert task.version != Task.from_callable(CallRow()).version


# -- output_json ---------------------------------------------------------------------------


class Label(BaseModel):
    label: str
    score: float
    when: dt.date
    tags: list[str] = []


class Opaque(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    handle: object


def test_output_json_accepts_a_dict_in_its_own_field_order() -> None:
    value = {"zeta": 1, "alpha": "é", "nested": {"b": [1, 2], "a": None}, "ok": True}
    assert output_json(value, task="t", key="k1") == (
        '{"zeta":1,"alpha":"é","nested":{"b":[1,2],"a":null},"ok":true}'
    )
    assert output_json({}, task="t", key="k1") == "{}"
    assert output_json({"n": np.int64(3), "d": dt.date(2024, 1, 2)}, task="t", key="k") == (
        '{"n":3,"d":"2024-01-02"}'
    )


def test_output_json_accepts_a_pydantic_model() -> None:
    model = Label(label="spam", score=0.25, when=dt.date(2024, 5, 6), tags=["a"])
    assert output_json(model, task="t", key="k1") == (
        '{"label":"spam","score":0.25,"when":"2024-05-06","tags":["a"]}'
    )


@pytest.mark.parametrize(
    ("value", "kind"),
    [("a string", "str"), (None, "NoneType"), ([{"a": 1}], "list"), (3, "int")],
)
def test_output_json_rejects_what_is_not_a_dict(value: Any, kind: str) -> None:
    with pytest.raises(TaskOutputError) as caught:
        output_json(value, task="classify", key="row-7")
    error = caught.value
    assert error.key == "row-7"
    assert error.message == f"task classify returned a {kind} for key 'row-7', not a dict"
    assert error.hint is not None
    assert "pydantic model" in error.hint


def test_output_json_rejects_non_text_field_names() -> None:
    with pytest.raises(TaskOutputError, match="non-text field names for key 'row-7'") as caught:
        output_json({"ok": 1, 2: "two"}, task="t", key="row-7")
    assert caught.value.key == "row-7"


@pytest.mark.parametrize(
    "value",
    [{"v": object()}, {"v": {1, 2}}, {"nested": {"deep": [1, object()]}}],
    ids=["object", "set", "nested"],
)
def test_output_json_rejects_unserialisable_values(value: dict[str, Any]) -> None:
    with pytest.raises(TaskOutputError, match="cannot be stored for key 'row-7'") as caught:
        output_json(value, task="t", key="row-7")
    assert caught.value.key == "row-7"
    assert caught.value.hint is not None
    assert "JSON-compatible" in caught.value.hint


def test_output_json_rejects_a_circular_value() -> None:
    value: dict[str, Any] = {}
    value["self"] = value
    with pytest.raises(TaskOutputError, match="cannot be stored for key 'row-7'"):
        output_json(value, task="t", key="row-7")


def test_output_json_rejects_an_unserialisable_model_with_task_output_error() -> None:
    # A model is "a dict or a model": one that cannot be stored is a TaskOutputError too,
    # not a raw pydantic error that the scheduler would treat as a failure of the task.
    with pytest.raises(TaskOutputError, match="for key 'row-7'") as caught:
        output_json(Opaque(handle=object()), task="t", key="row-7")
    assert caught.value.key == "row-7"


# -- group_parts: a grouped task's outputs encoded at once ---------------------------------

_vector_of = st.integers(0, 6).flatmap(
    lambda n: st.lists(st.floats(width=16, allow_nan=False), min_size=n, max_size=n)
)
# Arrays of every float width, and integer arrays (not vectors): a group that mixes them
# must take the same path one row alone would.
_array_of = st.one_of(
    st.tuples(_vector_of, st.sampled_from(["<f2", "<f4", "<f8", ">f8"])).map(
        lambda pair: np.array(pair[0], dtype=pair[1])
    ),
    st.lists(st.integers(-5, 5), max_size=6).map(lambda ints: np.array(ints, dtype="<i8")),
)


@given(
    st.lists(
        st.one_of(
            st.fixed_dictionaries({"embedding": _array_of}),
            st.fixed_dictionaries({"a": _array_of, "b": _array_of}),
            st.fixed_dictionaries({"label": st.booleans()}),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_a_group_encodes_as_its_rows_would_one_by_one(values: list[dict[str, Any]]) -> None:
    one_by_one = [output_parts(value, task="t", key="") for value in values]
    assert group_parts(values, task="t") == one_by_one


@given(
    rows=st.integers(1, 6),
    width=st.integers(0, 5),
    dtype=st.sampled_from(["<f2", "<f4", "<f8", ">f8", "<i8"]),
    data=st.data(),
)
def test_matrix_rows_encode_as_their_rows_would_one_by_one(
    rows: int, width: int, dtype: str, data: st.DataObject
) -> None:
    # The local model's outputs skip the re-stacking: the result must be the same bytes
    # and JSON as its rows one by one, whatever the matrix's width and type.
    cells = st.floats(width=16, allow_nan=False) if "f" in dtype else st.integers(-5, 5)
    flat = data.draw(st.lists(cells, min_size=rows * width, max_size=rows * width))
    matrix = np.array(flat, dtype=dtype).reshape(rows, width)
    values = MatrixRows("embedding", matrix)
    assert isinstance(values, list) and len(values) == rows  # still a list of dicts
    assert all(np.array_equal(v["embedding"], row) for v, row in zip(values, matrix, strict=True))
    one_by_one = [output_parts(value, task="t", key="") for value in values]
    assert group_parts(values, task="t", prefix="") == one_by_one
    prefixed = [output_parts(value, task="t", key="", prefix="p_") for value in values]
    assert group_parts(values, task="t", prefix="p_") == prefixed


def test_a_group_of_embeddings_shares_one_json_and_slices_one_matrix() -> None:
    vectors = np.arange(12, dtype=np.float64).reshape(3, 4)  # stored as float32
    encoded = group_parts([{"e": vector} for vector in vectors], task="t")
    assert [text for text, _ in encoded] == ['{"e":{"$vector":[0,4]}}'] * 3
    assert [raw for _, raw in encoded] == [v.astype("<f4").tobytes() for v in vectors]


def test_a_group_checks_its_field_names_like_one_row() -> None:
    with pytest.raises(OutputCollisionError, match="'text'"):
        group_parts([{"text": np.zeros(2)}] * 2, task="t", taken={"text": "an input column"})
