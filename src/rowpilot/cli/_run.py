"""``rowpilot run`` and ``rowpilot estimate``: a job from a TOML file or flags."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from rowpilot import _settings
from rowpilot._config import JobConfig, build_config, read_job_file
from rowpilot._result import Result
from rowpilot._secrets import REDACTED, redact_args
from rowpilot.cli._app import _example, _exit, app
from rowpilot.cli._options import SampleOption, SchemaFile, SettingsCommand, option
from rowpilot.engine.job import run_sync
from rowpilot.errors import ConfigError
from rowpilot.state.registry import Registry

# -- run ------------------------------------------------------------------------------


@app.command(
    cls=SettingsCommand,
    epilog=_example(
        "rowpilot run reviews.csv --task tasks.py:classify --key id --workers 16 -o out.csv",
        "rowpilot run job.toml --limit 10",
        "rowpilot run big.jsonl --task tasks.py:fetch --workers auto --max-memory 2000",
    ),
)
def run(
    job_or_source: Annotated[
        str,
        typer.Argument(
            help="A TOML job file, or the input (CSV, TSV, JSONL, Parquet, Excel, gsheet://...).",
            show_default=False,
        ),
    ],
    task: Annotated[str | None, option("task", "run")] = None,
    source: Annotated[str | None, option("source", "run")] = None,
    key: Annotated[str | None, option("key", "run")] = None,
    workers: Annotated[str | None, option("workers", "run")] = None,
    max_workers: Annotated[int | None, option("max_workers", "run")] = None,
    executor: Annotated[str | None, option("executor", "run")] = None,
    ray_address: Annotated[str | None, option("ray_address", "run")] = None,
    ray_workers: Annotated[int | None, option("ray_workers", "run")] = None,
    max_memory: Annotated[float | None, option("max_memory", "run")] = None,
    limit: Annotated[int | None, option("limit", "run")] = None,
    rows: Annotated[str | None, option("rows", "run")] = None,
    shard: Annotated[str | None, option("shard", "run")] = None,
    shard_limits: Annotated[str | None, option("shard_limits", "run")] = None,
    force: Annotated[bool, option("force", "run")] = False,
    force_before: Annotated[
        float | None,
        typer.Option(
            "--force-before", hidden=True, help="Redo items finished before this UNIX time."
        ),
    ] = None,
    retry_failed: Annotated[bool, option("retry_failed", "run")] = False,
    timeout: Annotated[float | None, option("timeout", "run")] = None,
    max_attempts: Annotated[int | None, option("max_attempts", "run")] = None,
    retry_delay: Annotated[float | None, option("retry_delay", "run")] = None,
    retry_on: Annotated[list[str] | None, option("retry_on", "run")] = None,
    task_version: Annotated[str | None, option("task_version", "run")] = None,
    state: Annotated[Path | None, option("state", "run")] = None,
    name: Annotated[str | None, option("name", "run")] = None,
    output: Annotated[str | None, option("output", "run")] = None,
    json_dir: Annotated[Path | None, option("json_dir", "run")] = None,
    failures: Annotated[Path | None, option("failures", "run")] = None,
    encoding: Annotated[str | None, option("encoding", "run")] = None,
    format: Annotated[str | None, option("format", "run")] = None,
    duplicates: Annotated[str | None, option("duplicates", "run")] = None,
    trust_quotes: Annotated[bool, option("trust_quotes", "run")] = False,
    follow_symlinks: Annotated[bool, option("follow_symlinks", "run")] = False,
    credentials: Annotated[Path | None, option("credentials", "run")] = None,
    write_back: Annotated[bool, option("write_back", "run")] = False,
    write_batch: Annotated[int | None, option("write_batch", "run")] = None,
    write_interval: Annotated[float | None, option("write_interval", "run")] = None,
    sheets_write_rpm: Annotated[float | None, option("sheets_write_rpm", "run")] = None,
    sheet: Annotated[str | None, option("sheet", "run")] = None,
    header_row: Annotated[int | None, option("header_row", "run")] = None,
    output_prefix: Annotated[str | None, option("output_prefix", "run")] = None,
    keep_going: Annotated[bool, option("keep_going", "run")] = False,
    grace: Annotated[float | None, option("grace", "run")] = None,
    progress: Annotated[bool | None, option("progress", "run")] = None,
    model: Annotated[str | None, option("model", "run")] = None,
    base_url: Annotated[str | None, option("base_url", "run")] = None,
    prompt: Annotated[str | None, option("prompt", "run")] = None,
    system: Annotated[str | None, option("system", "run")] = None,
    labels: Annotated[list[str] | None, option("labels", "run")] = None,
    text_column: Annotated[str | None, option("text_column", "run")] = None,
    schema: Annotated[SchemaFile | None, option("schema", "run")] = None,
    batch_size: Annotated[str | None, option("batch_size", "run")] = None,
    max_tokens: Annotated[str | None, option("max_tokens", "run")] = None,
    params: Annotated[list[str] | None, option("params", "run")] = None,
    call_timeout: Annotated[float | None, option("call_timeout", "run")] = None,
    batch_api: Annotated[bool, option("batch_api", "run")] = False,
    batch_fallback: Annotated[str | None, option("batch_fallback", "run")] = None,
    detach: Annotated[bool, option("detach", "run")] = False,
    dashboard: Annotated[bool, option("dashboard", "run")] = False,
    batch_poll: Annotated[float | None, option("batch_poll", "run")] = None,
    budget: Annotated[float | None, option("budget", "run")] = None,
    rpm: Annotated[float | None, option("rpm", "run")] = None,
    tpm: Annotated[float | None, option("tpm", "run")] = None,
    max_concurrent: Annotated[int | None, option("max_concurrent", "run")] = None,
    cache: Annotated[bool | None, option("cache", "run")] = None,
    env_file: Annotated[Path | None, option("env_file", "run")] = None,
    estimate: Annotated[
        bool,
        typer.Option(
            "--estimate",
            help="Run a sample first, print the projected cost and time, and ask to go on.",
            rich_help_panel=_settings.PROMPT_PANEL,
        ),
    ] = False,
    sample: SampleOption = 20,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            "-y",
            help="Go on after --estimate without asking.",
            rich_help_panel=_settings.PROMPT_PANEL,
        ),
    ] = False,
) -> None:
    """Run a task (or a prompt) over every row; run the same command again to resume."""
    flags = {
        k: v for k, v in locals().items() if k not in ("job_or_source", "estimate", "sample", "yes")
    }
    settings = _settings_from(job_or_source, _llm_flags(flags))
    if settings.pop("force", False):
        settings["force_before"] = time.time()
    settings["command"] = _resume_command(settings.get("force_before"))
    config = build_config(settings)
    if estimate and not _estimated_and_confirmed(config, sample, yes):
        return
    result = run_sync(config)
    _report(result, config)
    if result.summary.status == "interrupted":
        command = settings["command"]
        again = " (give the [REDACTED] secrets again)" if REDACTED in command else ""
        print(f"to resume, run: {command}{again}")
        # Everything is committed and closed; a sync task cancelled mid-call still holds
        # its thread, and a normal exit would wait for it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(result.summary.exit_code)
    _exit(result.summary.exit_code)


def _run_and_report(settings: dict[str, Any]) -> None:
    """Run a built-in command's job (unset settings left out), print, exit with its code."""
    settings = {k: v for k, v in settings.items() if v is not None}
    settings["command"] = _resume_command(None)
    config = build_config(settings)
    result = run_sync(config)
    _report(result, config)
    _exit(result.summary.exit_code)


def _report(result: Result, config: JobConfig) -> None:
    for line in [*result.summary.lines(), *result.written]:
        print(line)
    if config.labels and (result.summary.done or result.summary.skipped):  # the job's labels
        from rowpilot.llm.labels import label_summary

        registry = Registry(result.state)
        try:
            summary = label_summary(registry.records(status="done"), config.labels)
        finally:
            registry.close()
        for line in summary.lines():
            print(line)


def _llm_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """Flags of prompt tasks, turned into settings."""
    if flags.get("workers") is not None:
        flags["workers"] = _workers(flags["workers"])
    if flags.get("batch_size") is not None:
        flags["batch_size"] = _batch_size(flags["batch_size"])
    if flags.get("max_tokens") is not None:
        flags["max_tokens"] = _max_tokens(flags["max_tokens"])
    params = flags.pop("params", None)
    if params:
        flags["params"] = dict(_param(text) for text in params)
    schema = flags.pop("schema", None)
    if schema is not None:
        flags["output_schema"] = _json_schema_file(schema)
    if flags.get("labels"):
        flags["labels"] = [label for text in flags["labels"] for label in _labels_in(text)]
    return flags


def _labels_in(text: str) -> list[str]:
    """``a,b,c`` is three labels; ``name: a description, with commas`` is one."""
    if ":" in text:
        return [text.strip()]
    return [label.strip() for label in text.split(",") if label.strip()]


def _count_or_auto(text: str, flag: str, hint: str) -> int | Literal["auto"]:
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a number", hint=hint) from None


def _workers(text: str) -> int | Literal["auto"]:
    return _count_or_auto(text, "--workers", "give task calls at once, or auto")


def _batch_size(text: str) -> int | Literal["auto"]:
    return _count_or_auto(text, "--batch-size", "give rows per request, or auto")


def _max_tokens(text: str) -> int:
    """--max-tokens: a positive integer (read here, so a bad one is a one-line error)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(
            f"--max-tokens {text!r} is not a positive integer",
            hint="give the answer tokens per row at most, e.g. --max-tokens 64, or leave it "
            "out to take the output schema's bound",
        )
    return value


def _param(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(
            f"--params {text!r} is not name=value", hint="e.g. --params temperature=0"
        )
    try:
        return name.strip(), json.loads(value)
    except json.JSONDecodeError:
        return name.strip(), value  # a bare word stays text


def _json_schema_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read schema file {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"schema file {path} is not JSON: {exc}", file=str(path)) from None


def _estimated_and_confirmed(config: JobConfig, sample: int, yes: bool) -> bool:
    """Run the sample and print the projection; True when the user wants the rest run."""
    if not yes and not sys.stdin.isatty():  # asked before the sample is paid for
        raise ConfigError(
            "--estimate asks whether to go on, and there is no terminal to ask at",
            hint="pass --yes to go on without asking, or run `rowpilot estimate` to only estimate",
        )
    projection = _sample(config, sample)
    if projection.remaining == 0:
        return True  # nothing more to pay for: the run just writes the outputs
    if yes:
        return True
    go_on = typer.confirm(
        f"run the remaining {projection.remaining:,} items (about ${projection.cost:,.2f})?"
    )
    if not go_on:
        print("not run; the sample's items are done and kept")
    return go_on


def _sample(config: JobConfig, sample: int) -> Any:
    import asyncio

    from rowpilot._estimate import sample_and_project

    result, projection = asyncio.run(sample_and_project(config, sample))
    print(
        f"sample: {result.summary.done:,} done, {result.summary.failed:,} failed, "
        f"${result.summary.cost_usd:,.4f}"
    )
    for line in projection.lines():
        print(line)
    return projection


_CHOSEN_FALSE = frozenset({"progress", "cache"})


def _settings_from(job_or_source: str, flags: dict[str, Any]) -> dict[str, Any]:
    if job_or_source.endswith(".toml"):
        settings = read_job_file(Path(job_or_source))
    elif flags.get("source") is not None:
        raise ConfigError(
            f"two inputs given: {job_or_source} and --source {flags['source']}",
            hint="--source replaces a job file's source; give a job file, or the input once",
        )
    else:
        settings = {"source": job_or_source}
    # An unset flag is None (or False/[] for switches and lists) and leaves the job file's
    # value; --no-progress and --no-cache are the Falses that are a choice.
    given = {
        k: v
        for k, v in flags.items()
        if v is not None and v != [] and (v is not False or k in _CHOSEN_FALSE)
    }
    settings.update(given)
    return settings


def _resume_command(force_before: float | None) -> str:
    # The same command resumes, except that --force must not restart the redo from scratch.
    args = [arg for arg in sys.argv[1:] if arg not in ("--force", "--debug")]
    if force_before is not None and "--force-before" not in args:
        args += ["--force-before", f"{force_before:.6f}"]
    # Stored in the runs table and the lock file, and printed: never with a secret in it.
    return shlex.join(["rowpilot", *redact_args(args)])


@app.command(
    cls=SettingsCommand,
    epilog=_example(
        "rowpilot estimate job.toml --sample 20",
        "rowpilot estimate job.toml --sample 50 --workers 16",
        "rowpilot estimate brands.toml --sample 5 --base-url http://127.0.0.1:8900/v1",
    ),
)
def estimate(
    job: Annotated[
        str, typer.Argument(help="A TOML job file: a prompt task, or a Python task's steps.")
    ],
    sample: Annotated[
        int, typer.Option(help="Items to run for real (journaled, not paid again).")
    ] = 20,
    workers: Annotated[str | None, option("workers", "estimate")] = None,
    rpm: Annotated[float | None, option("rpm", "estimate")] = None,
    tpm: Annotated[float | None, option("tpm", "estimate")] = None,
    base_url: Annotated[str | None, option("base_url", "estimate")] = None,
    max_tokens: Annotated[str | None, option("max_tokens", "estimate")] = None,
    limit: Annotated[int | None, option("limit", "estimate")] = None,
    state: Annotated[Path | None, option("state", "estimate")] = None,
) -> None:
    """Run a sample of a prompt job or of a Python task (its ctx.llm and ctx.call steps),
    then project the whole job's cost and time. The sample's items stay done in the job's
    state."""
    flags = {
        "workers": workers,
        "rpm": rpm,
        "tpm": tpm,
        "base_url": base_url,
        "max_tokens": max_tokens,
        "limit": limit,
    }
    settings = _settings_from(job, _llm_flags({**flags, "state": state}))
    settings["command"] = _resume_command(None)
    settings.setdefault("progress", False)
    _sample(build_config(settings), sample)
