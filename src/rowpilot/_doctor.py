"""``rowpilot doctor``: what rowpilot sees of the machine, the provider keys, the Google
Sheets credentials, and a job.

It runs nothing and writes nothing: it reads the machine, the environment and the
``.env`` file (for each key only *whether* it is set, never its value), where Google
Sheets credentials would be taken from (the path and how it was found, never the file's
content, which is not even opened), the job file, and
the newest run log in the job's state directory, if there is one. A job's task is loaded
(imported), as ``rowpilot run`` would, to tell how it would be sized; a task that cannot
be loaded is reported, not raised.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from rowpilot._config import JobConfig, build_config, read_job_file
from rowpilot.engine.machine import read_machine
from rowpilot.errors import ConfigError, RowpilotError
from rowpilot.llm.limits import Limits

EXTRAS = ("lancedb", "ray", "gspread")
_LOG_EVENTS = {"workers.chosen", "workers.adjusted", "admission.paused"}


def diagnose(
    job: Path | None = None,
    env_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The doctor's findings as plain data (what ``--json`` prints); ``overrides`` are
    flags over the job file's settings (``--shard``)."""
    settings = {**read_job_file(job), **(overrides or {})} if job is not None else {}
    config = build_config(settings) if job is not None else None
    if config is not None and env_file is None:
        env_file = config.env_file
    report: dict[str, Any] = {
        "machine": _machine(),
        "keys": _keys(env_file, config.providers if config is not None else {}),
        "sheets": _sheets(config.credentials if config is not None else None),
    }
    if config is not None and job is not None:
        report["job"] = _job(job, config)
    return report


def _machine() -> dict[str, Any]:
    machine = read_machine()
    return {
        "os": machine.os,
        "cpus": machine.cpus,
        "memory_total_mb": _round(machine.total_mb),
        "memory_available_mb": _round(machine.available_mb),
        "python": platform.python_version(),
        "rowpilot": _version(),
        "extras": {name: importlib.util.find_spec(name) is not None for name in EXTRAS},
    }


def _version() -> str:
    try:
        return importlib.metadata.version("rowpilot")
    except importlib.metadata.PackageNotFoundError:
        from rowpilot import __version__

        return __version__


# -- keys ---------------------------------------------------------------------------------


def _keys(env_file: Path | None, custom: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each provider's key: set or not, and where. Only names and booleans leave here."""
    from rowpilot.llm.providers import KNOWN_PROVIDERS

    wanted: dict[str, str] = {}
    for name, spec in KNOWN_PROVIDERS.items():
        if spec.api_key_env is not None:
            wanted.setdefault(spec.api_key_env, name)
    for name, entry in custom.items():
        variable = entry.get("api_key_env")
        if isinstance(variable, str) and variable:
            wanted.setdefault(variable, name)
    path = env_file if env_file is not None else Path(".env")
    in_file = _names_set_in(path)
    found = []
    for variable, provider in wanted.items():
        source = None
        if os.environ.get(variable):
            source = "environment"
        elif variable in in_file:
            source = f"env file {path}"
        found.append(
            {"name": variable, "provider": provider, "set": source is not None, "source": source}
        )
    return found


def _sheets(given: Path | None) -> dict[str, Any]:
    """Where Google Sheets credentials would come from: the path and how, or None."""
    from rowpilot._gsheet import find_credentials, gspread_folder

    found = find_credentials(given)
    if found is None:
        return {"found": False, "from": None, "path": None, "looked_in": str(gspread_folder())}
    return {
        "found": True,
        "from": found.how,
        "path": str(found.path),
        "exists": found.path.is_file(),
    }


def _names_set_in(path: Path) -> set[str]:
    """Names the env file gives a non-empty value; the values are dropped at once."""
    if not path.is_file():
        return set()
    from dotenv import dotenv_values

    return {name for name, value in dotenv_values(path).items() if value}


# -- a job --------------------------------------------------------------------------------


def _job(path: Path, config: JobConfig) -> dict[str, Any]:
    from rowpilot.engine.job import shard_pacing, state_directory

    state = state_directory(config, config.name or "job")  # a job file names its job
    found: dict[str, Any] = {
        "file": str(path),
        "max_memory_mb": config.max_memory,
        "limits": dict(config.limits),
        "shard": config.shard,
        "shard_limits": config.shard_limits,
        "limits_share": config.limits_share,
        "shard_pacing": shard_pacing(config),
        "state": str(state),
        "state_exists": state.is_dir(),
        "last_run": _last_run(state),
    }
    found.update(_task(config))
    return found


@contextlib.contextmanager
def _no_bytecode_written() -> Iterator[None]:
    """Importing the job's tasks.py writes no ``__pycache__`` beside it."""
    before = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = before


def _task(config: JobConfig) -> dict[str, Any]:
    """What the job's task is, its limits, and the workers a run would start with, and
    why, computed as the engine does."""
    from rowpilot.engine.job import auto_workers
    from rowpilot.executors.choice import choose_executor
    from rowpilot.tasks.factory import build_task

    limits: dict[str, dict[str, Any]] = {name: dict(table) for name, table in config.limits.items()}
    try:
        with _no_bytecode_written():  # doctor only looks: the job's folder stays as it was
            task = build_task(config)
    except RowpilotError as error:
        return {
            "task": str(config.task or config.model),
            "limits": limits,
            "task_error": str(error),
            "workers": config.workers,
            "workers_why": None,
        }
    known = task.limits()
    if known is not None:
        limits[config.model or task.name] = {
            "rpm": known.rpm,
            "tpm": known.tpm,
            "max_concurrent": known.max_concurrent,
        }
    rows = task.rows_per_worker
    per = f", each carrying up to {rows} rows" if rows > 1 else ""
    found = {
        "task": task.describe(),
        "limits": limits,
        "task_kind": task.sizing,
        "chosen": task.choices(),
    }
    try:
        executor = choose_executor(config, task)
    except RowpilotError as error:
        return {**found, "executor_error": str(error), "workers": config.workers}
    found.update(executor=executor.kind, executor_why=executor.why)
    if executor.remote:
        return {**found, "workers": executor.workers or "per CPU", "workers_why": executor.why}
    auto = auto_workers(config, task)
    if auto is None:
        return {**found, "workers": config.workers, "workers_why": f"given{per}"}
    return {
        **found,
        "workers": "auto",
        "workers_start": auto.workers,
        "workers_max": auto.ceiling,
        "workers_why": auto.why + per,
    }


def _last_run(state: Path) -> dict[str, Any] | None:
    """The sizing the newest run logged: its start, its changes, its memory pauses."""
    logs = sorted((state / "logs").glob("*.jsonl")) if (state / "logs").is_dir() else []
    if not logs:
        return None
    events = list(_events(logs[-1]))
    chosen = next((e for e in events if e["event"] == "workers.chosen"), None)
    adjusted = [e for e in events if e["event"] == "workers.adjusted"]
    return {
        "log": str(logs[-1]),
        "workers_start": chosen.get("workers") if chosen else None,
        "workers_why": chosen.get("why") if chosen else None,
        "adjustments": len(adjusted),
        "workers_end": adjusted[-1].get("new") if adjusted else None,
        "admission_pauses": sum(1 for e in events if e["event"] == "admission.paused"),
    }


def _events(path: Path) -> Iterable[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return
    for line in lines:
        if not any(f'"{name}"' in line for name in _LOG_EVENTS):
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if isinstance(event, dict):
            yield event


# -- text ---------------------------------------------------------------------------------


def lines(report: Mapping[str, Any]) -> list[str]:
    """The findings as text, one setting a line."""
    m = report["machine"]
    extras = ", ".join(
        f"{name} {'installed' if ok else 'not installed'}" for name, ok in m["extras"].items()
    )
    out = [
        "machine",
        f"  os           {m['os']}",
        f"  cpus         {m['cpus']}",
        f"  memory       {_mb(m['memory_available_mb'])} available of {_mb(m['memory_total_mb'])}",
        f"  python       {m['python']}",
        f"  rowpilot     {m['rowpilot']}",
        f"  extras       {extras}",
        "provider keys (names only; values are never shown)",
    ]
    width = max((len(key["name"]) for key in report["keys"]), default=0)
    for key in report["keys"]:
        status = f"set (from {key['source']})" if key["set"] else "not set"
        out.append(f"  {key['name']:<{width}}  {status}")
    out.append(_sheets_line(report["sheets"]))
    job = report.get("job")
    if job is not None:
        out += _job_lines(job)
    return out


def _sheets_line(sheets: Mapping[str, Any]) -> str:
    if not sheets["found"]:
        return (
            "google sheets credentials  not found (--credentials, GOOGLE_APPLICATION_CREDENTIALS, "
            f"or {sheets['looked_in']})"
        )
    missing = "" if sheets["exists"] else ", but there is no such file"
    return f"google sheets credentials  {sheets['path']} (from {sheets['from']}{missing})"


def _job_lines(job: Mapping[str, Any]) -> list[str]:
    out = [f"job {job['file']}", f"  task         {job['task']}"]
    if job.get("task_error"):
        out.append(f"  task error   {job['task_error']}")
    for name, why in job.get("chosen", {}).items():
        out.append(f"  {name:<12} {why}")
    if job.get("executor_error"):
        out.append(f"  executor     error: {job['executor_error']}")
    elif job.get("executor"):
        out.append(f"  executor     {job['executor']}: {job['executor_why']}")
    if job["workers"] == "auto" and "workers_start" not in job:
        out.append("  workers      auto: the start depends on the task, which did not load")
    elif job["workers"] == "auto":
        out.append(
            f"  workers      auto: starts at {job['workers_start']}, at most "
            f"{job['workers_max']}, adjusted during the run; {job['workers_why']}"
        )
    else:
        why = f" ({job['workers_why']})" if job.get("workers_why") else ""
        out.append(f"  workers      {job['workers']}{why}")
    memory = job["max_memory_mb"]
    out.append(
        f"  max memory   {_mb(memory)} resident, then admission pauses"
        if memory is not None
        else "  max memory   not set"
    )
    share = job["limits_share"]
    if job["shard_pacing"] is not None:
        out.append(f"  limits       {job['shard_pacing']}")
    if not job["limits"]:
        out.append("  limits       none given")
    for name, limits in job["limits"].items():
        given = ", ".join(f"{k} {_limit_text(k, v, share)}" for k, v in limits.items())
        out.append(f"  limits       {name}: {given}")
    exists = "exists" if job["state_exists"] else "not created yet"
    out.append(f"  state        {job['state']} ({exists})")
    last = job.get("last_run")
    if last is not None and last["workers_start"] is not None:
        end = f", ended at {last['workers_end']}" if last["workers_end"] is not None else ""
        out.append(
            f"  last run     started at {last['workers_start']} workers ({last['workers_why']}); "
            f"{last['adjustments']} adjustment(s){end}; "
            f"{last['admission_pauses']} memory pause(s)"
        )
    elif last is not None:
        out.append(f"  last run     fixed workers; {last['admission_pauses']} memory pause(s)")
    return out


def _limit_text(name: str, value: float | None, share: float = 1.0) -> str:
    """A limit as given, and a shard's part of it, by the rule its resources pace by."""
    part = f"1/{round(1 / share)}"
    if value is None:
        if name == "max_concurrent":
            return "none"
        return "from the rate-limit headers" + (f" ({part} of them)" if share < 1 else "")
    shared = _shared(name, value, share) if share < 1 else None
    return f"{value:g}" if shared is None else f"{shared:g} ({part} of {value:g})"


def _shared(name: str, value: float, share: float) -> float | None:
    """``Limits.shared`` of one limit; None for a setting that is not a limit
    (``max_attempts``) or a value that is not one (the run says why)."""
    rates = ("rpm", "tpm", "input_tpm", "output_tpm")
    if name not in (*rates, "max_concurrent"):
        return None
    try:
        given = Limits(
            max_concurrent=int(value) if name == "max_concurrent" else None,
            **{rate: float(value) for rate in rates if rate == name},
        )
    except (ConfigError, TypeError, ValueError):
        return None
    shared = getattr(given.shared(share), name)
    return None if shared is None else float(shared)


def _mb(value: float | None) -> str:
    return "unknown" if value is None else f"{value:,.0f} MB"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
