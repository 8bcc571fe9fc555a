"""``rowpilot run`` and ``rowpilot estimate``: a job from a TOML file or flags."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from rowpilot._config import JobConfig, build_config, read_job_file
from rowpilot._engine import run_sync
from rowpilot._registry import Registry
from rowpilot._result import Result
from rowpilot._secrets import REDACTED, redact_args
from rowpilot.cli._app import _example, _exit, app
from rowpilot.cli._options import (
    _LLM,
    BaseUrlOption,
    BatchSizeOption,
    BudgetOption,
    CallTimeoutOption,
    EnvFileOption,
    FollowSymlinksOption,
    LabelsOption,
    MaxConcurrentOption,
    MaxTokensOption,
    ModelOption,
    NoCacheOption,
    OutputPrefixOption,
    ParamOption,
    RpmOption,
    SampleOption,
    TextColumnOption,
    TpmOption,
    TrustQuotesOption,
)
from rowpilot.errors import ConfigError

# -- run ------------------------------------------------------------------------------


@app.command(
    epilog=_example(
        "rowpilot run reviews.csv --task tasks.py:classify --key id --workers 16 -o out.csv",
        "rowpilot run job.toml --limit 10",
        "rowpilot run big.jsonl --task tasks.py:fetch --workers auto --max-memory 2000",
    )
)
def run(
    job_or_source: Annotated[
        str,
        typer.Argument(
            help="A TOML job file, or the input (CSV, TSV, JSONL, Parquet).", show_default=False
        ),
    ],
    task: Annotated[
        str | None,
        typer.Option("--task", "-t", help="module:function or path/to/file.py:function."),
    ] = None,
    key: Annotated[str | None, typer.Option(help="Key column (default: the row number).")] = None,
    workers: Annotated[
        str | None,
        typer.Option(
            "--workers",
            "-w",
            help="Items at once, or auto: sized from the CPUs, memory, rate limits and "
            "throughput, and adjusted during the run (default: 8).",
        ),
    ] = None,
    max_workers: Annotated[
        int | None, typer.Option(help="The most workers auto may use (default: 256).")
    ] = None,
    max_memory: Annotated[
        float | None,
        typer.Option(
            help="MB of resident memory above which no new item is admitted (in-flight ones "
            "go on; with nothing in flight, one at a time)."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N selected rows.")] = None,
    rows: Annotated[str | None, typer.Option(help="Row range A:B (0-based, B excluded).")] = None,
    shard: Annotated[
        str | None, typer.Option(help="Shard K/N (1-based), split by key hash.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Redo every selected item.")] = False,
    force_before: Annotated[
        float | None,
        typer.Option(
            "--force-before", hidden=True, help="Redo items finished before this UNIX time."
        ),
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Retry items that failed in earlier runs.")
    ] = False,
    timeout: Annotated[float | None, typer.Option(help="Seconds per attempt.")] = None,
    max_attempts: Annotated[
        int | None, typer.Option(help="Attempts per item (default: 3).")
    ] = None,
    retry_delay: Annotated[
        float | None,
        typer.Option(help="Seconds of backoff before the first retry; doubles each time (0.5)."),
    ] = None,
    retry_on: Annotated[
        list[str] | None,
        typer.Option(
            help="Exception type to retry (repeatable; default: timeouts and connection errors; "
            "Exception retries all)."
        ),
    ] = None,
    task_version: Annotated[
        str | None, typer.Option(help="Version of the task (default: a hash of its source).")
    ] = None,
    state: Annotated[
        Path | None, typer.Option(help="State directory (default: .rowpilot/<job name>).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Job name (names the state directory).")] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the enriched table (.csv, .jsonl, .parquet)."),
    ] = None,
    json_dir: Annotated[Path | None, typer.Option(help="Write one JSON file per key here.")] = None,
    failures: Annotated[Path | None, typer.Option(help="Write failed items as JSONL.")] = None,
    encoding: Annotated[str | None, typer.Option(help="Input encoding (default: utf-8).")] = None,
    format: Annotated[
        str | None, typer.Option(help="Input format: csv, tsv, jsonl, parquet.")
    ] = None,
    dedupe: Annotated[str | None, typer.Option(help="'first': keep each key's first row.")] = None,
    trust_quotes: TrustQuotesOption = False,
    follow_symlinks: FollowSymlinksOption = False,
    output_prefix: OutputPrefixOption = None,
    keep_going: Annotated[
        bool,
        typer.Option(
            "--keep-going",
            help="Do not stop when the first items all fail alike (only those rows are bad).",
        ),
    ] = False,
    grace: Annotated[
        float | None,
        typer.Option(help="Seconds in-flight items get to finish after Ctrl-C (default: 30)."),
    ] = None,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress", help="Show progress (default: a bar on a terminal)."
        ),
    ] = None,
    model: ModelOption = None,
    base_url: BaseUrlOption = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            help="Prompt template with {column} fields: a prompt task, no code.",
            rich_help_panel=_LLM,
        ),
    ] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.", rich_help_panel=_LLM)] = None,
    labels: LabelsOption = None,
    text_column: TextColumnOption = None,
    schema: Annotated[
        Path | None,
        typer.Option(help="JSON Schema file of each row's answer.", rich_help_panel=_LLM),
    ] = None,
    batch_size: BatchSizeOption = None,
    max_tokens: MaxTokensOption = None,
    param: ParamOption = None,
    call_timeout: CallTimeoutOption = None,
    budget: BudgetOption = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    max_concurrent: MaxConcurrentOption = None,
    no_cache: NoCacheOption = False,
    env_file: EnvFileOption = None,
    estimate: Annotated[
        bool,
        typer.Option(
            "--estimate",
            help="Run a sample first, print the projected cost and time, and ask to go on.",
            rich_help_panel=_LLM,
        ),
    ] = False,
    sample: SampleOption = 20,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", "-y", help="Go on after --estimate without asking.", rich_help_panel=_LLM
        ),
    ] = False,
) -> None:
    """Run a task (or a prompt) over every row; run the same command again to resume."""
    flags = {
        k: v for k, v in locals().items() if k not in ("job_or_source", "estimate", "sample", "yes")
    }
    if workers is not None:
        flags["workers"] = _workers(workers)
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
        from rowpilot._labels import label_summary

        registry = Registry(result.state)
        try:
            summary = label_summary(registry.records(status="done"), config.labels)
        finally:
            registry.close()
        for line in summary.lines():
            print(line)


def _llm_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """Flags of prompt tasks, turned into settings."""
    flags["cache"] = False if flags.pop("no_cache", False) else None
    if flags.get("batch_size") is not None:
        flags["batch_size"] = _batch_size(flags["batch_size"])
    params = flags.pop("param", None)
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


def _count_or_auto(text: str, flag: str, hint: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a number", hint=hint) from None


def _workers(text: str) -> int | str:
    return _count_or_auto(text, "--workers", "give items at once, or auto")


def _batch_size(text: str) -> int | str:
    return _count_or_auto(text, "--batch-size", "give rows per request, or auto")


def _param(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"--param {text!r} is not name=value", hint="e.g. --param temperature=0")
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
    epilog=_example(
        "rowpilot estimate job.toml --sample 20",
        "rowpilot estimate job.toml --sample 50 --workers 16",
        "rowpilot estimate brands.toml --sample 5 --base-url http://127.0.0.1:8900/v1",
    )
)
def estimate(
    job: Annotated[
        str, typer.Argument(help="A TOML job file: a prompt task, or a Python task's steps.")
    ],
    sample: Annotated[
        int, typer.Option(help="Items to run for real (journaled, not paid again).")
    ] = 20,
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", help="Workers to project for.")
    ] = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    base_url: BaseUrlOption = None,
    limit: Annotated[int | None, typer.Option(help="Project the first N rows only.")] = None,
    state: Annotated[
        Path | None,
        typer.Option(help="State directory (default: the job's); the sample stays done there."),
    ] = None,
) -> None:
    """Run a sample of a prompt job or of a Python task (its ctx.llm and ctx.call steps),
    then project the whole job's cost and time."""
    flags = {"workers": workers, "rpm": rpm, "tpm": tpm, "base_url": base_url, "limit": limit}
    settings = _settings_from(job, {**flags, "state": state})
    settings["command"] = _resume_command(None)
    settings.setdefault("progress", False)
    _sample(build_config(settings), sample)
