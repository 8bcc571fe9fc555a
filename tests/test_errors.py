"""The exception tree: every class pickles with its context and keeps its exit code."""

from __future__ import annotations

import inspect
import pickle

import pytest

from rowpilot import errors
from rowpilot.errors import RowpilotError, UserError

ERROR_CLASSES = sorted(
    (
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, RowpilotError) and cls.__module__ == errors.__name__
    ),
    key=lambda cls: cls.__name__,
)
CONTEXT = {"file": "data.csv", "row": 3, "line": 5, "column": "id", "key": "k-007"}
ATTRIBUTES = ("message", "hint", "file", "row", "line", "column", "key")


def test_the_tree_is_complete() -> None:
    assert {cls.__name__ for cls in ERROR_CLASSES} == set(errors.__all__)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
def test_pickle_round_trip_keeps_every_attribute(cls: type[RowpilotError], protocol: int) -> None:
    error = cls("something went wrong", hint="do this instead", **CONTEXT)
    copy = pickle.loads(pickle.dumps(error, protocol=protocol))

    assert type(copy) is cls
    for name in ATTRIBUTES:
        assert getattr(copy, name) == getattr(error, name), name
    assert copy.message == "something went wrong"
    assert copy.hint == "do this instead"
    assert str(copy) == str(error)
    assert copy.args == error.args
    assert copy.exit_code == error.exit_code


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_pickle_round_trip_without_context(cls: type[RowpilotError]) -> None:
    error = cls("bare")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    expected = f"bare (hint: {cls.default_hint})" if cls.default_hint else "bare"
    assert str(copy) == str(error) == expected
    assert copy.hint == cls.default_hint
    for name in ATTRIBUTES[1:]:
        if name != "hint":
            assert getattr(copy, name) is None


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_str_names_the_place_and_the_hint(cls: type[RowpilotError]) -> None:
    error = cls("it broke", hint="fix it", **CONTEXT)
    text = str(error)
    assert text.startswith("data.csv line 5, column 'id': it broke")
    assert text.endswith("(hint: fix it)")


def test_str_uses_the_row_when_there_is_no_line() -> None:
    error = errors.SourceFormatError("bad", file="data.parquet", row=7, hint="h")
    assert str(error) == "data.parquet row 7: bad (hint: h)"
    assert str(errors.KeyColumnError("no such key column", column="id", hint="h")) == (
        "column 'id': no such key column (hint: h)"
    )


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_user_errors_exit_2_and_others_1(cls: type[RowpilotError]) -> None:
    expected = 2 if issubclass(cls, UserError) else 1
    assert cls.exit_code == expected
    assert cls("x").exit_code == expected


def test_the_hierarchy() -> None:
    source_errors = [
        errors.SourceNotFoundError,
        errors.SourceEncodingError,
        errors.SourceFormatError,
        errors.EmptySourceError,
        errors.KeyColumnError,
        errors.DuplicateKeyError,
    ]
    for cls in source_errors:
        assert issubclass(cls, errors.SourceError)
    for cls in (
        errors.ConfigError,
        errors.SourceError,
        errors.TaskLoadError,
        errors.TaskOutputError,
        errors.OutputPathError,
        errors.StateError,
    ):
        assert issubclass(cls, UserError)
    assert issubclass(errors.StateLockedError, errors.StateError)
    assert not issubclass(errors.ItemTimeoutError, UserError)
    assert issubclass(errors.ItemTimeoutError, RowpilotError)
