"""Job settings: one validated model, filled from a TOML job file and overridden by flags.

A job file has four tables; relative paths in it are relative to the file:

    name = "diseases"            # optional; names the default state directory

    [source]
    path = "diseases.csv"        # CSV, TSV, JSONL or Parquet
    key = "cui"                  # optional; default: the row number
    encoding = "utf-8"           # optional
    format = "csv"               # optional; default: from the suffix
    dedupe = "first"             # optional; keep each key's first row

    [task]
    function = "tasks.py:analyse"
    version = "v2"               # optional; default: a hash of the function's source

    [run]
    workers = 8
    timeout = 60                 # seconds per attempt
    max_attempts = 3
    retry_on = ["TimeoutError", "ConnectionError"]
    rows = "0:1516"
    shard = "1/10"
    limit = 100
    state = ".rowpilot/diseases"

    [output]
    path = "enriched.csv"        # .csv, .jsonl or .parquet
    json_dir = "results"         # one JSON file per key
    failures = "failures.jsonl"
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rowpilot.errors import ConfigError

_SECTIONS: dict[str, dict[str, str]] = {
    "source": {
        "path": "source",
        "key": "key",
        "encoding": "encoding",
        "format": "format",
        "dedupe": "dedupe",
    },
    "task": {"function": "task", "version": "task_version"},
    "run": {
        name: name
        for name in (
            "workers",
            "timeout",
            "max_attempts",
            "retry_on",
            "retry_delay",
            "max_retry_delay",
            "rows",
            "shard",
            "limit",
            "state",
            "grace",
            "force",
            "retry_failed",
        )
    },
    "output": {"path": "output", "json_dir": "json_dir", "failures": "failures"},
}
_PATH_FIELDS = {"source", "state", "output", "json_dir", "failures"}


class JobConfig(BaseModel):
    """Every setting of a job. The CLI and ``rowpilot.run`` both build one of these."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)

    source: Any
    task: str | Callable[..., Any]
    name: str | None = None
    key: str | None = None
    format: str | None = None
    encoding: str | None = None
    dedupe: Literal["first"] | None = None
    task_version: str | None = None
    workers: int = Field(8, ge=1, le=10_000)
    timeout: float | None = Field(None, gt=0)
    max_attempts: int = Field(3, ge=1)
    retry_on: list[str] | None = None
    retry_delay: float = Field(0.5, ge=0)
    max_retry_delay: float = Field(30.0, ge=0)
    rows: str | None = None
    shard: str | None = None
    limit: int | None = Field(None, ge=0)
    force: bool = False
    force_before: float | None = None
    retry_failed: bool = False
    state: Path | None = None
    output: Path | None = None
    json_dir: Path | None = None
    failures: Path | None = None
    grace: float = Field(30.0, ge=0)
    progress: bool | None = None
    command: str | None = None


def build_config(settings: Mapping[str, Any]) -> JobConfig:
    """Validate settings; a bad value is a ConfigError naming the setting."""
    try:
        return JobConfig(**settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(part) for part in first["loc"]) or "settings"
        raise ConfigError(
            f"{name}: {first['msg']}", hint="see `rowpilot run --help` for the settings"
        ) from None


def read_job_file(path: Path) -> dict[str, Any]:
    """Flatten a TOML job file into settings, resolving paths against its folder."""
    if not path.is_file():
        raise ConfigError(f"job file {path} does not exist", hint="check the path")
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", hint="fix the job file") from None
    settings: dict[str, Any] = {"name": document.pop("name", path.stem)}
    for section, table in document.items():
        settings.update(_section(path, section, table))
    return _resolve_paths(settings, path.parent)


def _section(path: Path, section: str, table: Any) -> dict[str, Any]:
    fields = _SECTIONS.get(section)
    if fields is None or not isinstance(table, dict):
        raise ConfigError(
            f"{path}: unknown table [{section}]",
            hint="the tables are [source], [task], [run] and [output]",
        )
    unknown = set(table) - set(fields)
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting {section}.{sorted(unknown)[0]}",
            hint=f"[{section}] takes {', '.join(sorted(fields))}",
        )
    return {fields[name]: value for name, value in table.items()}


def _resolve_paths(settings: dict[str, Any], base: Path) -> dict[str, Any]:
    for name in _PATH_FIELDS & settings.keys():
        settings[name] = os.path.normpath(base / settings[name])
    task = settings.get("task")
    if isinstance(task, str):
        target, sep, function = task.rpartition(":")
        if sep and (target.endswith(".py") or "/" in target):
            settings["task"] = f"{os.path.normpath(base / target)}:{function}"
    return settings
