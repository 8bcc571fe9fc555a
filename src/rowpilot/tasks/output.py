"""What a task returns, checked and encoded for the registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any, TypeVar

from pydantic import BaseModel

from rowpilot.engine.items import Encoded, encode_output, encode_output_parts, is_vector
from rowpilot.errors import OutputCollisionError, TaskOutputError

_T = TypeVar("_T")


def _model_fields(model: BaseModel, *, task: str, key: str) -> dict[str, Any]:
    try:
        return model.model_dump(mode="json")
    except Exception as exc:  # pydantic's serialisation errors have no common public base
        raise TaskOutputError(
            f"task {task} returned a model that cannot be stored for key {key!r}: {exc}",
            key=key,
            hint="give the model JSON-compatible fields",
        ) from exc


def output_json(
    value: Any,
    *,
    task: str,
    key: str,
    prefix: str = "",
    taken: Mapping[str, str] | None = None,
) -> str:
    """Check what a task returned and encode it (vectors in base64: a self-contained JSON);
    anything but a dict or model is an error.
    """
    checked = _checked(value, task=task, key=key, prefix=prefix, taken=taken)
    return _encoded(checked, encode_output, task=task, key=key)


def _checked(
    value: Any, *, task: str, key: str, prefix: str, taken: Mapping[str, str] | None
) -> dict[str, Any]:
    """The task's value as a dict of prefixed fields; anything but a dict or model is an
    error.

    Field names get ``prefix``; a name in ``taken`` (an input column, the key column among
    them, or a field the exports keep for themselves; the value says which) is an
    OutputCollisionError: in a table it would overwrite that.
    """
    if isinstance(value, BaseModel):
        value = _model_fields(value, task=task, key=key)
    if not isinstance(value, dict):
        raise TaskOutputError(
            f"task {task} returned a {type(value).__name__} for key {key!r}, not a dict",
            key=key,
            hint="return a dict such as {'label': ...} or a pydantic model "
            "({} if there is no output)",
        )
    if not all(isinstance(name, str) for name in value):
        raise TaskOutputError(
            f"task {task} returned a dict with non-text field names for key {key!r}",
            key=key,
            hint="use str keys; they become the output column names",
        )
    if prefix:
        value = {prefix + name: field for name, field in value.items()}
    if taken and not taken.keys().isdisjoint(value):  # a set operation: on every item
        clash = next(name for name in value if name in taken)
        raise OutputCollisionError(
            f"task {task} returned the field {clash!r} for key {key!r}, and that name is "
            f"{taken[clash]}: the output would overwrite it",
            key=key,
            column=clash,
        )
    fields: dict[str, Any] = value
    return fields


def output_parts(
    value: Any,
    *,
    task: str,
    key: str,
    prefix: str = "",
    taken: Mapping[str, str] | None = None,
) -> Encoded:
    """``output_json``'s checks, encoded as the registry stores an item's output: the JSON
    and its vectors' raw float32 bytes (``encode_output_parts``)."""
    checked = _checked(value, task=task, key=key, prefix=prefix, taken=taken)
    return _encoded(checked, encode_output_parts, task=task, key=key)


def _encoded(value: dict[str, Any], encode: Callable[[Any], _T], *, task: str, key: str) -> _T:
    try:
        return encode(value)
    except (TypeError, ValueError) as exc:
        raise TaskOutputError(
            f"task {task} returned a value that cannot be stored for key {key!r}: {exc}",
            key=key,
            hint="return JSON-compatible values (str, numbers, bools, lists, dicts)",
        ) from exc


class MatrixRows(list[dict[str, Any]]):
    """A group's outputs, one vector field a row, that are the rows of one float matrix (as
    the local model computes them): ``group_parts`` encodes the matrix as it is instead of
    stacking the rows again. Still a list of one dict a row for any other reader."""

    def __init__(self, field: str, matrix: Any) -> None:
        super().__init__({field: row} for row in matrix)
        self.field = field
        self.matrix = matrix


def group_parts(
    values: list[Any],
    *,
    task: str,
    prefix: str = "",
    taken: Mapping[str, str] | None = None,
) -> list[Encoded]:
    """``output_parts`` for each of a group's values (a grouped task's ``batch_call``).

    A group of embeddings, every value a dict of the same fields each holding a vector of
    one length, is checked and encoded once: the rows share the JSON (each vector's place)
    and their raw bytes are rows of one float32 matrix. Any other group goes row by row.
    """
    at_once = _vector_group(values, task=task, prefix=prefix, taken=taken)
    if at_once is not None:
        return at_once
    return [output_parts(value, task=task, key="", prefix=prefix, taken=taken) for value in values]


def _vector_group(
    values: list[Any], *, task: str, prefix: str, taken: Mapping[str, str] | None
) -> list[Encoded] | None:
    if not values or type(values[0]) is not dict or not values[0]:
        return None
    matrix = _whole_matrix(values)
    if matrix is None:
        names = tuple(values[0])
        if any(type(value) is not dict or tuple(value) != names for value in values):
            return None
        columns = [[value[name] for value in values] for name in names]
        if not all(_same_length_vectors(column) for column in columns):
            return None
        import numpy as np

        stacked = [np.stack(column).astype("<f4", copy=False) for column in columns]
        matrix = np.concatenate(stacked, 1)
    if matrix.shape[1] == 0:
        return None  # empty vectors: nothing to gain
    text, first = output_parts(values[0], task=task, key="", prefix=prefix, taken=taken)
    raw = matrix.tobytes()
    width = matrix.shape[1] * 4
    encoded: list[Encoded] = [
        (text, raw[start : start + width]) for start in range(0, len(raw), width)
    ]
    assert encoded[0][1] == first  # the shared JSON's places are the matrix's columns
    return encoded


def _whole_matrix(values: list[Any]) -> Any:
    """A ``MatrixRows`` group's matrix as little-endian float32 (a float matrix of a row
    an output), else None. Its rows are the dicts' vectors: made together, handed straight
    to the encoder (the first row's bytes are checked against its dict's)."""
    if type(values) is not MatrixRows:
        return None
    matrix = values.matrix
    kind = getattr(getattr(matrix, "dtype", None), "kind", None)
    if kind != "f" or matrix.ndim != 2 or len(matrix) != len(values):
        return None
    return matrix.astype("<f4", copy=False)


def _same_length_vectors(column: list[Any]) -> bool:
    import numpy as np

    if set(map(type, column)) == {np.ndarray}:  # the usual case, checked at C speed
        shapes = set(map(attrgetter("shape"), column))
        kinds = {dtype.kind for dtype in set(map(attrgetter("dtype"), column))}
        return len(shapes) == 1 and len(next(iter(shapes))) == 1 and kinds == {"f"}
    length = len(column[0]) if is_vector(column[0]) else -1
    return all(is_vector(value) and len(value) == length for value in column)
