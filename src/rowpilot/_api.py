"""The library face: ``rowpilot.run(task, source, ...)``, the same engine as the CLI."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from rowpilot._config import build_config
from rowpilot._engine import run_sync
from rowpilot._result import Result

PathLike = str | os.PathLike[str]


def run(
    task: Callable[..., Any] | str,
    source: PathLike | Iterable[Mapping[str, Any]] | Any,
    *,
    key: str | None = None,
    workers: int = 8,
    state: PathLike | None = None,
    name: str | None = None,
    limit: int | None = None,
    rows: str | tuple[int | None, int | None] | None = None,
    shard: str | tuple[int, int] | None = None,
    force: bool = False,
    retry_failed: bool = False,
    timeout: float | None = None,
    max_attempts: int = 3,
    retry_on: list[str] | None = None,
    task_version: str | None = None,
    output: PathLike | None = None,
    json_dir: PathLike | None = None,
    failures: PathLike | None = None,
    encoding: str | None = None,
    format: str | None = None,
    dedupe: Literal["first"] | None = None,
    grace: float = 30.0,
    progress: bool | None = False,
) -> Result:
    """Run ``task`` over every row of ``source``; resume where an earlier run stopped.

    ``task`` is a function ``(row) -> dict`` or ``(row, ctx) -> dict`` (sync or async),
    or a ``"module:function"`` / ``"file.py:function"`` string. ``source`` is a path to a
    CSV, JSONL or Parquet file, a pandas DataFrame, or any iterable of dicts. Rows are
    keyed by ``key`` (a column) or else by row number. Running the same call again skips
    done and unchanged rows. Example::

        result = rowpilot.run(classify, "reviews.csv", key="id", workers=16)
        df = result.to_pandas()
    """
    settings: dict[str, Any] = {
        "task": task,
        "source": source,
        "key": key,
        "workers": workers,
        "name": name,
        "limit": limit,
        "rows": _range_text(rows, ":"),
        "shard": _range_text(shard, "/"),
        "force": force,
        "retry_failed": retry_failed,
        "timeout": timeout,
        "max_attempts": max_attempts,
        "retry_on": retry_on,
        "task_version": task_version,
        "encoding": encoding,
        "format": format,
        "dedupe": dedupe,
        "grace": grace,
        "progress": progress,
    }
    for field, value in (
        ("state", state),
        ("output", output),
        ("json_dir", json_dir),
        ("failures", failures),
    ):
        if value is not None:
            settings[field] = Path(value)
    return run_sync(build_config(settings))


def _range_text(value: str | tuple[Any, Any] | None, separator: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    first, second = value
    return f"{'' if first is None else first}{separator}{'' if second is None else second}"
