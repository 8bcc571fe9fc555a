"""The ``rowpilot`` command: thin commands over the library.

Every command's help ends with an example; tests/test_cli_docs.py keeps it that way.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer

from rowpilot import _state
from rowpilot._atomic import check_writable
from rowpilot._config import JobConfig, build_config, read_job_file
from rowpilot._dedupe import write_frame
from rowpilot._engine import STATE_ROOT, run_sync, state_directory
from rowpilot._events import NOTICES
from rowpilot._exports import (
    ExportRecord,
    failure_entry,
    table_format,
    write_json_dir,
    write_table,
)
from rowpilot._items import Keyer, Selection, parse_rows, parse_shard
from rowpilot._lock import is_locked
from rowpilot._registry import Registry
from rowpilot._result import Result
from rowpilot._secrets import REDACTED, redact_args
from rowpilot.errors import ConfigError, RowpilotError, UserError
from rowpilot.sources import open_source

app = typer.Typer(
    name="rowpilot",
    help="Run a task over every row of a dataset, in parallel, durably and resumably. "
    "Add --debug anywhere for tracebacks.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)

Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
_LLM = "Prompt tasks"
SourceArgument = Annotated[str, typer.Argument(help="The input (CSV, TSV, JSONL, Parquet).")]
ProgressOption = Annotated[
    bool | None, typer.Option("--progress/--no-progress", help="Show progress.")
]
ModelOption = Annotated[
    str | None,
    typer.Option(help="provider/model, e.g. openai/gpt-4o-mini.", rich_help_panel=_LLM),
]
ThresholdOption = Annotated[
    float | None,
    typer.Option(help="Similarity from which a label applies, or rows are duplicates (-1..1)."),
]
BaseUrlOption = Annotated[
    str | None,
    typer.Option(
        help="Another address for the model's provider, e.g. http://127.0.0.1:8900/v1 "
        "(rowpilot simulate).",
        rich_help_panel=_LLM,
    ),
]
LabelsOption = Annotated[
    list[str] | None,
    typer.Option(
        help="Labels to decide per row, one true/false column each: --labels a b c.",
        rich_help_panel=_LLM,
    ),
]
TextColumnOption = Annotated[
    str | None, typer.Option(help="The column --labels reads.", rich_help_panel=_LLM)
]
BatchSizeOption = Annotated[
    str | None,
    typer.Option(help="Rows per request (N or auto) (default: 1).", rich_help_panel=_LLM),
]
MaxTokensOption = Annotated[
    int | None,
    typer.Option(help="Answer tokens per row at most (default: 512).", rich_help_panel=_LLM),
]
ParamOption = Annotated[
    list[str] | None,
    typer.Option(help="Model parameter name=value (repeatable).", rich_help_panel=_LLM),
]
BudgetOption = Annotated[
    float | None,
    typer.Option(help="USD this run may spend; it stops before passing it.", rich_help_panel=_LLM),
]
RpmOption = Annotated[
    float | None,
    typer.Option(help="Requests/min of the model (default: learned).", rich_help_panel=_LLM),
]
TpmOption = Annotated[
    float | None,
    typer.Option(help="Tokens/min of the model (default: learned).", rich_help_panel=_LLM),
]
MaxConcurrentOption = Annotated[
    int | None, typer.Option(help="Requests in flight at most.", rich_help_panel=_LLM)
]
NoCacheOption = Annotated[
    bool,
    typer.Option(
        "--no-cache", help="Pay again instead of reusing journaled answers.", rich_help_panel=_LLM
    ),
]
CallTimeoutOption = Annotated[
    float | None,
    typer.Option(
        help="Seconds one LLM request may take before it is dropped and retried (default: 60).",
        rich_help_panel=_LLM,
    ),
]
TrustQuotesOption = Annotated[
    bool,
    typer.Option(
        "--trust-quotes",
        help="CSV: read quoted values that span lines as they are, even where their lines look "
        "like rows or the file's quotes do not pair up (a quote never closed, or followed by a "
        "stray character, is still an error).",
    ),
]
FollowSymlinksOption = Annotated[
    bool,
    typer.Option(
        "--follow-symlinks",
        help="Folder: also read files whose symlinks lead outside the folder.",
    ),
]
OutputPrefixOption = Annotated[
    str | None,
    typer.Option(
        help="Put this before every output field name (e.g. out_), so outputs named like "
        "input columns do not clash with them.",
    ),
]
EnvFileOption = Annotated[
    Path | None, typer.Option(help="File of API keys (default: ./.env).", rich_help_panel=_LLM)
]
SampleOption = Annotated[
    int, typer.Option(help="Items the estimate runs for real.", rich_help_panel=_LLM)
]


def _example(*lines: str) -> str:
    return "[bold]Example[/bold]\n\n" + "\n\n".join(f"  $ {line}" for line in lines)


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


# -- label, estimate ----------------------------------------------------------------------


@app.command(
    epilog=_example(
        "rowpilot label data.csv --text-column text --labels racist sexist homophobic "
        "--batch-size 10 --workers 3 -o enriched.csv",
        "rowpilot label tickets.jsonl --key id --text-column body --labels bug billing "
        "--model anthropic/claude-haiku-4-5 --budget 2",
    )
)
def label(
    source: SourceArgument,
    text_column: Annotated[str, typer.Option(help="The column that holds the text.")],
    labels: Annotated[list[str], typer.Option(help="Labels to decide per row: --labels a b c.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the enriched table (.csv, .jsonl, .parquet)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="provider/model (default: openai/gpt-4o-mini with an OPENAI_API_KEY, else "
            "local/wordllama)."
        ),
    ] = None,
    base_url: BaseUrlOption = None,
    threshold: ThresholdOption = None,
    key: Annotated[str | None, typer.Option(help="Key column (default: the row number).")] = None,
    batch_size: Annotated[str, typer.Option(help="Rows per request (N or auto).")] = "10",
    workers: Annotated[int, typer.Option("--workers", "-w", help="Requests at once.")] = 4,
    instructions: Annotated[
        str | None, typer.Option(help="System prompt (default: label each text).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N rows.")] = None,
    budget: BudgetOption = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    no_cache: NoCacheOption = False,
    env_file: EnvFileOption = None,
    state: Annotated[
        Path | None, typer.Option(help="State directory (default: .rowpilot/<input>-labels).")
    ] = None,
    progress: ProgressOption = None,
) -> None:
    """Add one true/false column per label to a table of texts, several rows per request.

    Without --model it uses openai/gpt-4o-mini when an OPENAI_API_KEY is set (or in .env),
    else the bundled local model local/wordllama (similarity to each label, no API).
    """
    if model is None:
        model = _default_label_model(env_file)
    settings = _llm_flags(
        {
            "source": source,
            "text_column": text_column,
            "labels": labels,
            "output": output,
            "model": model,
            "base_url": base_url,
            "threshold": threshold,
            "key": key,
            "batch_size": batch_size,
            "workers": workers,
            "system": instructions,
            "limit": limit,
            "budget": budget,
            "rpm": rpm,
            "tpm": tpm,
            "no_cache": no_cache,
            "env_file": env_file,
            "state": state,
            "progress": progress,
            "name": f"{Path(source).stem}-labels",
        }
    )
    _run_and_report(settings)


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


def _default_label_model(env_file: Path | None) -> str:
    from rowpilot._api import default_label_model

    model = default_label_model(env_file)
    if model.startswith("local/"):
        print(
            f"rowpilot: no --model and no OPENAI_API_KEY: labelling with the local model {model} "
            "(similarity to each label; no API, no cost)",
            file=sys.stderr,
        )
    return model


@app.command(
    epilog=_example(
        "rowpilot embed docs.csv --key id --text-column body -o vectors.parquet",
        "rowpilot embed docs.csv --key id --text-column body --to lancedb://./vectors/docs",
    )
)
def embed(
    source: SourceArgument,
    text_column: Annotated[str, typer.Option(help="The column that holds the text.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the table with its embedding column."),
    ] = None,
    to: Annotated[
        str | None, typer.Option("--to", help="A vector store: lancedb://PATH/TABLE.")
    ] = None,
    key: Annotated[str | None, typer.Option(help="Key column (default: the row number).")] = None,
    embed_batch: Annotated[int, typer.Option(help="Texts the model embeds at once.")] = 512,
    insert_batch: Annotated[int, typer.Option(help="Vectors per vector-store write.")] = 1000,
    workers: Annotated[int, typer.Option("--workers", "-w", help="Batches at once.")] = 1,
    model: Annotated[str, typer.Option(help="The embedding model.")] = "local/wordllama",
    limit: Annotated[int | None, typer.Option(help="Only the first N rows.")] = None,
    state: Annotated[
        Path | None, typer.Option(help="State directory (default: .rowpilot/<input>-embed).")
    ] = None,
    progress: ProgressOption = None,
) -> None:
    """Embed a text column with the bundled local model (256 numbers per row, no API)."""
    from rowpilot._local_tasks import check_local_model

    check_local_model(model)
    settings = {
        "source": source,
        "embed": True,
        "text_column": text_column,
        "output": output,
        "vectors": to,
        "key": key,
        "embed_batch": embed_batch,
        "insert_batch": insert_batch,
        "workers": workers,
        "limit": limit,
        "state": state,
        "progress": progress,
        "name": f"{Path(source).stem}-embed",
    }
    _run_and_report(settings)


@app.command(
    epilog=_example(
        "rowpilot dedupe companies.csv --key id --text-column name -o clusters.csv",
        "rowpilot dedupe people.jsonl --text-column name --threshold 0.9 -o people.parquet",
    )
)
def dedupe(
    source: SourceArgument,
    text_column: Annotated[str, typer.Option(help="The column to compare (names, titles).")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Write the rows with cluster and canonical_key.")
    ],
    key: Annotated[str | None, typer.Option(help="Key column (default: the row number).")] = None,
    threshold: ThresholdOption = None,
    workers: Annotated[int, typer.Option("--workers", "-w", help="Batches at once.")] = 1,
    state: Annotated[
        Path | None, typer.Option(help="State directory (default: .rowpilot/<input>-dedupe).")
    ] = None,
    progress: ProgressOption = None,
) -> None:
    """Group near-duplicate texts: a cluster number and a canonical key per row."""
    from rowpilot._api import dedupe as dedupe_rows

    check_writable(output, what="output")
    frame, report = dedupe_rows(
        source,
        text_column=text_column,
        key=key,
        threshold=threshold,
        workers=workers,
        state=state,
        progress=progress,
        summary=False,
    )
    write_frame(frame, output)
    for line in report.lines():
        print(line)
    print(f"table: {output} ({len(frame):,} rows)")


# -- status, export, failures -----------------------------------------------------------


@app.command(
    epilog=_example(
        "rowpilot status",
        "rowpilot status .rowpilot/diseases",
        "rowpilot status .rowpilot/job/shard-* --json",
    )
)
def status(
    states: Annotated[
        list[str] | None,
        typer.Argument(help="State directories or job files (default: every job in .rowpilot/)."),
    ] = None,
    as_json: Json = False,
) -> None:
    """Show how far each job (or shard) is, and the total."""
    folders = [_state_dir(s) for s in states] if states else _state.find_states(STATE_ROOT)
    if not folders:
        raise ConfigError(
            f"no job states in {STATE_ROOT}/", hint="run a job here first, or name a state folder"
        )
    found, broken = _statuses(folders)
    if broken and not found:
        raise broken[0]
    for error in broken:  # one unreadable state must not hide the others
        print(f"rowpilot: error: {error}", file=sys.stderr)
    if as_json:
        views = [{**vars(f), "pending": f.pending} for f in found]
        print(json.dumps({"states": views, "total": _status_total(found)}, indent=2, default=str))
        _exit(2 if broken else 0)
        return
    for f in found:
        print(_status_line(f))
        if f.spending.get("calls"):
            spent = f.spending
            print(
                f"  cost ${spent['cost_usd']:,.4f}: {int(spent['calls']):,} calls, "
                f"{int(spent['input_tokens']):,} input and {int(spent['output_tokens']):,} "
                "output tokens"
            )
    if len(found) > 1:
        total = _status_total(found)
        print(
            f"TOTAL  done {total['done']:,}  failed {total['failed']:,}"
            + (f"  of {total['total']:,}" if total["total"] is not None else "")
        )
    if broken:
        _exit(2)


def _statuses(folders: list[Path]) -> tuple[list[_state.StateStatus], list[RowpilotError]]:
    found: list[_state.StateStatus] = []
    broken: list[RowpilotError] = []
    for folder in folders:
        try:
            found.append(_state.status(folder))
        except UserError as error:
            broken.append(error)
    return found, broken


def _status_line(f: _state.StateStatus) -> str:
    of = f" of {f.total:,}" if f.total is not None else ""
    last = f.last_run["status"] if f.last_run else "none"
    running = "  RUNNING" if f.running else ""
    stale = f"  stale {f.stale:,}" if f.stale else ""
    counts = f"done {f.done:,}  failed {f.failed:,}{stale}{of}"
    return f"{f.state}  {counts}  runs {f.runs}  last run {last}{running}"


def _status_total(found: list[_state.StateStatus]) -> dict[str, Any]:
    totals = [f.total for f in found]
    return {
        "done": sum(f.done for f in found),
        "failed": sum(f.failed for f in found),
        "total": None if None in totals else sum(t for t in totals if t is not None),
    }


IncludeStaleOption = Annotated[
    bool,
    typer.Option(
        "--include-stale",
        help="Also the items an older version of the task produced (they count as pending).",
    ),
]


@app.command(
    epilog=_example(
        "rowpilot export .rowpilot/reviews -o enriched.parquet",
        "rowpilot export job.toml --json-dir results/",
        "rowpilot export .rowpilot/reviews -o so-far.csv --partial",
    )
)
def export(
    state: Annotated[str, typer.Argument(help="State directory or job file.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Table to write.")] = None,
    json_dir: Annotated[Path | None, typer.Option(help="Write one JSON file per key here.")] = None,
    done_only: Annotated[bool, typer.Option("--done-only", help="Leave failed items out.")] = False,
    include_stale: IncludeStaleOption = False,
    partial: Annotated[
        bool,
        typer.Option("--partial", help="Export while a run is still going (what is done so far)."),
    ] = False,
) -> None:
    """Write the enriched table or per-key JSON files from the registry.

    While a run of the job is still going, it refuses (exit 1) unless --partial."""
    if output is None and json_dir is None:
        raise ConfigError("nothing to export", hint="pass -o FILE and/or --json-dir DIR")
    if output is not None:
        check_writable(output, what="output")
        table_format(output)
    folder = _state_dir(state)
    if not _export_allowed(folder, partial):
        _exit(1)
    registry = Registry(folder)
    try:
        _check_job_key(state, registry)
        records = functools.partial(registry.records, include_stale=include_stale)
        if output is not None:
            count = write_table(output, records, registry.input_columns(), done_only=done_only)
            print(f"wrote {count:,} rows to {output}")
        if json_dir is not None:
            report = write_json_dir(json_dir, functools.partial(records, status="done"))
            print(f"{json_dir}: {report.written:,} written, {report.unchanged:,} unchanged")
    finally:
        registry.close()


def _export_allowed(folder: Path, partial: bool) -> bool:
    """A live run's state is a moving target: an export of it is partial, and says so."""
    if not is_locked(folder):
        return True
    now = _state.status(folder)
    of = f" of {now.total:,}" if now.total is not None else ""
    print(
        f"rowpilot: the run in {folder} is still going: {now.done:,}{of} done"
        + (
            "; exporting what is done so far (--partial)"
            if partial
            else " (hint: wait for it to end, or pass --partial to export what is done so far)"
        ),
        file=sys.stderr,
    )
    return partial


def _check_job_key(state_or_job: str, registry: Registry) -> None:
    """A job file says how it keys its rows: its state must have been keyed the same."""
    if state_or_job.endswith(".toml"):
        settings = read_job_file(Path(state_or_job))
        _state.check_key_definition(registry, _effective_key(settings))


def _effective_key(settings: dict[str, Any]) -> str | None:
    """The key column a job's settings give (a folder's default, ``path``, included)."""
    key = settings.get("key")
    if key is None and settings.get("source") and Path(settings["source"]).is_dir():
        return "path"
    return str(key) if key is not None else None


@app.command(
    epilog=_example("rowpilot failures .rowpilot/reviews", "rowpilot failures job.toml --traceback")
)
def failures(
    state: Annotated[str, typer.Argument(help="State directory or job file.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write JSONL here.")] = None,
    with_traceback: Annotated[
        bool, typer.Option("--traceback", help="Include tracebacks.")
    ] = False,
    include_stale: IncludeStaleOption = False,
) -> None:
    """List failed items as JSONL: key, row, error type, error, attempts."""
    registry = Registry(_state_dir(state))
    try:
        lines = [
            _failure_line(record, trace, with_traceback)
            for record, trace in registry.failures(include_stale=include_stale)
        ]
    finally:
        registry.close()
    text = "".join(line + "\n" for line in lines)
    if output is None:
        sys.stdout.write(text)
    else:
        from rowpilot._atomic import write_text_atomic

        write_text_atomic(output, text)
        print(f"wrote {len(lines):,} failures to {output}", file=sys.stderr)


def _failure_line(record: ExportRecord, trace: str | None, with_traceback: bool) -> str:
    entry = failure_entry(record)
    if with_traceback:
        entry["traceback"] = trace
    return json.dumps(entry, ensure_ascii=False)


# -- merge, verify ----------------------------------------------------------------------


@app.command(
    epilog=_example("rowpilot merge .rowpilot/diseases/shard-* --into .rowpilot/diseases-all")
)
def merge(
    shards: Annotated[list[Path], typer.Argument(help="State directories to combine.")],
    into: Annotated[Path, typer.Option(help="State directory to merge into (created if new).")],
    as_json: Json = False,
) -> None:
    """Combine the registries of shards (or row ranges) into one.

    The merge builds a new registry beside the destination and moves it into place only
    when it is whole: a merge that is killed leaves the destination as it was."""
    report = _state.merge(shards, into)
    if as_json:
        print(json.dumps(vars(report), indent=2))
        return
    for source, count in report.per_source.items():
        print(f"{source}: {count:,} items")
    print(
        f"merged into {report.into}: {report.items:,} items, {report.conflicts:,} keys in "
        "more than one source (kept the done, newest outcome)"
    )


@app.command(
    epilog=_example(
        "rowpilot verify job.toml",
        "rowpilot verify .rowpilot/diseases-all --source diseases.csv --key cui",
    )
)
def verify(
    state_or_job: Annotated[str, typer.Argument(help="State directory or job file.")],
    source: Annotated[str | None, typer.Option(help="The input (default: the job file's).")] = None,
    key: Annotated[str | None, typer.Option(help="Key column.")] = None,
    rows: Annotated[str | None, typer.Option(help="Row range A:B the job covered.")] = None,
    shard: Annotated[str | None, typer.Option(help="Shard K/N the job covered.")] = None,
    limit: Annotated[int | None, typer.Option(help="The job's --limit.")] = None,
    dedupe: Annotated[
        str | None, typer.Option(help="'first': the job kept each key's first row.")
    ] = None,
    encoding: Annotated[str | None, typer.Option(help="Input encoding.")] = None,
    format: Annotated[str | None, typer.Option(help="Input format.")] = None,
    as_json: Json = False,
) -> None:
    """Check the registry against the source; exit 1 unless every row is done, once."""
    settings: dict[str, Any] = (
        read_job_file(Path(state_or_job)) if state_or_job.endswith(".toml") else {}
    )
    overrides = {
        "source": source,
        "key": key,
        "rows": rows,
        "shard": shard,
        "limit": limit,
        "dedupe": dedupe,
        "encoding": encoding,
        "format": format,
    }
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if "source" not in settings:
        raise ConfigError("verify needs the source", hint="pass --source FILE or a job file")
    if settings.get("dedupe") not in (None, "first"):
        raise ConfigError(f"--dedupe {settings['dedupe']!r} is unknown", hint="use --dedupe first")
    opened = open_source(
        settings["source"],
        format=settings.get("format"),
        encoding=settings.get("encoding"),
        trust_quotes=bool(settings.get("trust_quotes")),
        follow_symlinks=bool(settings.get("follow_symlinks")),
    )
    selection = Selection(
        rows=parse_rows(settings["rows"]) if settings.get("rows") else None,
        shard=parse_shard(settings["shard"]) if settings.get("shard") else None,
        limit=settings.get("limit"),
    )
    report = _state.verify(
        _state_dir(state_or_job),
        opened,
        Keyer(opened, settings.get("key")),
        selection,
        dedupe=settings.get("dedupe") == "first",
    )
    _print_verify(report, as_json)
    _exit(0 if report.complete else 1)


def _print_verify(report: _state.VerifyReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
        return
    print(
        f"expected {report.expected:,}  done {report.done:,}  failed {report.failed:,}  "
        f"missing {report.missing:,}  stale {report.stale:,}  not in source {report.extra:,}"
    )
    if report.dropped:
        print(f"  {report.dropped:,} rows repeat an earlier row's key (left out: --dedupe first)")
    for kind, keys in report.examples.items():
        if keys:
            print(f"  {kind}: {', '.join(repr(k) for k in keys)}")
    if report.duplicates:
        print(f"  duplicates in the source: {report.duplicates}")
    print("complete" if report.complete else "INCOMPLETE")


def _state_dir(state_or_job: str) -> Path:
    """A state directory, or the one a job file's settings point at (named as a run of
    that job would name it: rowpilot._engine.state_directory)."""
    if not state_or_job.endswith(".toml"):
        return Path(state_or_job)
    settings = read_job_file(Path(state_or_job))
    if "prompt" not in settings and "labels" not in settings and "embed" not in settings:
        settings.setdefault("task", "x:y")  # only the name and the shard matter here
    config = build_config(settings)
    return state_directory(config, config.name or "job")


# -- doctor -----------------------------------------------------------------------------


@app.command(
    epilog=_example(
        "rowpilot doctor",
        "rowpilot doctor job.toml --json",
    )
)
def doctor(
    job: Annotated[
        Path | None, typer.Argument(help="A TOML job file: show the settings it would run with.")
    ] = None,
    env_file: EnvFileOption = None,
    as_json: Json = False,
) -> None:
    """Show the machine, which provider keys are set (never their values), and the workers,
    memory cap, limits and state directory a job would run with; runs nothing."""
    from rowpilot._doctor import diagnose, lines

    report = diagnose(job, env_file)
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return
    for line in lines(report):
        print(line)


# -- simulate ---------------------------------------------------------------------------


@app.command(
    epilog=_example(
        "rowpilot simulate --port 8900 --rpm 6000 --tpm 2000000 --latency-ms 300",
        "rowpilot simulate --error-503 0.02 --hang 0.01 --api-key sk-sim-local",
        "rowpilot simulate --rpm 500 --search-rpm 100 --search-latency-ms 400",
    )
)
def simulate(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 picks a free one).")] = 8900,
    api_key: Annotated[str | None, typer.Option(help="Require this key (default: any).")] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated model names.")] = None,
    latency_ms: Annotated[float | None, typer.Option(help="Median latency in ms.")] = None,
    latency_jitter: Annotated[
        float | None, typer.Option(help="Lognormal sigma of latency.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for latency and faults.")] = None,
    rpm: Annotated[float | None, typer.Option(help="Requests per minute, per model.")] = None,
    tpm: Annotated[float | None, typer.Option(help="Tokens per minute, per model.")] = None,
    max_concurrent: Annotated[int | None, typer.Option(help="Requests in flight at most.")] = None,
    error_500: Annotated[float | None, typer.Option(help="Share of requests answered 500.")] = None,
    error_503: Annotated[float | None, typer.Option(help="Share answered 503.")] = None,
    hang: Annotated[float | None, typer.Option(help="Share that hang, then drop.")] = None,
    reset: Annotated[float | None, typer.Option(help="Share whose connection is reset.")] = None,
    malformed: Annotated[float | None, typer.Option(help="Share with a non-JSON body.")] = None,
    bad_content: Annotated[
        float | None, typer.Option(help="Share whose JSON answer is not JSON.")
    ] = None,
    missing_field: Annotated[
        float | None, typer.Option(help="Share whose JSON answer misses a field or row.")
    ] = None,
    refuse_word: Annotated[
        str | None, typer.Option(help="Refuse (content filter) every prompt with this word.")
    ] = None,
    search_rpm: Annotated[
        float | None, typer.Option(help="Requests per minute of POST /search, its own limit.")
    ] = None,
    search_latency_ms: Annotated[
        float | None, typer.Option(help="Median latency of POST /search (default: --latency-ms).")
    ] = None,
) -> None:
    """Serve a local OpenAI/Anthropic-compatible API and a search API (POST /search) to
    rehearse jobs against (no cost)."""
    options = dict(locals())
    from rowpilot._simulator import SimulatorConfig, serve_forever

    serve_forever(SimulatorConfig.from_options(**options))


# -- entry point ------------------------------------------------------------------------


def _exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    if code:
        raise SystemExit(code)


def _spread_labels(args: list[str]) -> list[str]:
    """``--labels a b c`` as click reads it: ``--labels a --labels b --labels c``."""
    spread: list[str] = []
    in_labels = False
    for arg in args:
        if arg == "--labels":
            in_labels = True
            continue
        if in_labels and not arg.startswith("-"):
            spread += ["--labels", arg]
            continue
        in_labels = False
        spread.append(arg)
    return spread


def command() -> Any:
    """The click command behind ``app``, with flags shown without a type: typer labels a
    switch such as --force or --help ``<bool>``, which reads as a value to pass."""
    root = typer.main.get_command(app)
    for sub in getattr(root, "commands", {}).values():
        for param in sub.params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
        sub.get_help_option = _without_type(sub.get_help_option)
    return root


def _without_type(get_help_option: Any) -> Any:
    def wrapped(ctx: Any) -> Any:
        option = get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    return wrapped


def _print_warnings() -> None:
    """The engine's warnings (rowpilot._events.warn) as ``rowpilot: warning: ...`` lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("rowpilot: warning: %(message)s"))
    NOTICES.handlers[:] = [handler]
    NOTICES.propagate = False


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors (exit 2 for user errors) unless --debug."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("ROWPILOT_DEBUG") == "1"
    args = _spread_labels([a for a in args if a != "--debug"])
    _print_warnings()
    try:
        command().main(args=args, prog_name="rowpilot")
    except RowpilotError as exc:
        if debug:
            traceback.print_exc()
        print(f"rowpilot: error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


__all__ = ["app", "main"]
