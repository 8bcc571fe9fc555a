"""``rowpilot compare``: a prompt job's sample with each of several models, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rowpilot.cli._app import _example, _exit, app
from rowpilot.cli._options import SchemaFile, SettingsCommand, option
from rowpilot.cli._run import _llm_flags, _settings_from
from rowpilot.comparison import CompareRequest, compare_job
from rowpilot.comparison.agreement import NUMBER_TOLERANCE

_COMPARE_PANEL = "Comparison"
_COMPARISON_ONLY = frozenset(
    {"job_or_source", "models", "sample", "reference", "compare_output", "tolerance", "budget"}
)


@app.command(
    cls=SettingsCommand,
    epilog=_example(
        "rowpilot compare job.toml --models openai/gpt-4o-mini anthropic/claude-haiku-4-5 "
        "--sample 200",
        "rowpilot compare job.toml --models openai/gpt-4o-mini openai/gpt-4.1-mini "
        "--reference label -o compare.csv --budget 0.50",
    ),
)
def compare(
    job_or_source: Annotated[
        str,
        typer.Argument(
            help="A TOML job file of a prompt job, or the input with the job's flags.",
            show_default=False,
        ),
    ],
    models: Annotated[
        list[str],
        typer.Option(
            "--models",
            help="The models to compare, provider/model each, after the job: --models M1 M2 "
            "... (the first is the baseline of agreement where no --reference is given).",
            rich_help_panel=_COMPARE_PANEL,
            show_default=False,
        ),
    ],
    sample: Annotated[
        int,
        typer.Option(
            help="Rows of the stable sample (the rows with the smallest key hashes).",
            rich_help_panel=_COMPARE_PANEL,
        ),
    ] = 200,
    reference: Annotated[
        list[str] | None,
        typer.Option(
            "--reference",
            help="An input column holding the right answers: COLUMN for a job of one output "
            "field, FIELD=COLUMN otherwise (repeatable).",
            rich_help_panel=_COMPARE_PANEL,
            show_default=False,
        ),
    ] = None,
    compare_output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write the answers side by side as CSV: key, inputs, then MODEL:FIELD columns.",
            rich_help_panel=_COMPARE_PANEL,
            show_default=False,
        ),
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option(
            help="Numbers agree within this share of the larger (0.5: within a factor of 2).",
            rich_help_panel=_COMPARE_PANEL,
        ),
    ] = NUMBER_TOLERANCE,
    budget: Annotated[float | None, option("budget", "compare")] = None,
    source: Annotated[str | None, option("source", "compare")] = None,
    key: Annotated[str | None, option("key", "compare")] = None,
    encoding: Annotated[str | None, option("encoding", "compare")] = None,
    format: Annotated[str | None, option("format", "compare")] = None,
    duplicates: Annotated[str | None, option("duplicates", "compare")] = None,
    trust_quotes: Annotated[bool, option("trust_quotes", "compare")] = False,
    credentials: Annotated[Path | None, option("credentials", "compare")] = None,
    sheet: Annotated[str | None, option("sheet", "compare")] = None,
    header_row: Annotated[int | None, option("header_row", "compare")] = None,
    rows: Annotated[str | None, option("rows", "compare")] = None,
    limit: Annotated[int | None, option("limit", "compare")] = None,
    state: Annotated[Path | None, option("state", "compare")] = None,
    name: Annotated[str | None, option("name", "compare")] = None,
    progress: Annotated[bool | None, option("progress", "compare")] = None,
    base_url: Annotated[str | None, option("base_url", "compare")] = None,
    prompt: Annotated[str | None, option("prompt", "compare")] = None,
    system: Annotated[str | None, option("system", "compare")] = None,
    schema: Annotated[SchemaFile | None, option("schema", "compare")] = None,
    labels: Annotated[list[str] | None, option("labels", "compare")] = None,
    text_column: Annotated[str | None, option("text_column", "compare")] = None,
    max_tokens: Annotated[str | None, option("max_tokens", "compare")] = None,
    params: Annotated[list[str] | None, option("params", "compare")] = None,
    batch_size: Annotated[str | None, option("batch_size", "compare")] = None,
    call_timeout: Annotated[float | None, option("call_timeout", "compare")] = None,
    workers: Annotated[str | None, option("workers", "compare")] = None,
    timeout: Annotated[float | None, option("timeout", "compare")] = None,
    max_attempts: Annotated[int | None, option("max_attempts", "compare")] = None,
    rpm: Annotated[float | None, option("rpm", "compare")] = None,
    tpm: Annotated[float | None, option("tpm", "compare")] = None,
    max_concurrent: Annotated[int | None, option("max_concurrent", "compare")] = None,
    cache: Annotated[bool | None, option("cache", "compare")] = None,
    env_file: Annotated[Path | None, option("env_file", "compare")] = None,
    output_prefix: Annotated[str | None, option("output_prefix", "compare")] = None,
    keep_going: Annotated[bool, option("keep_going", "compare")] = False,
) -> None:
    """Run a prompt job's stable sample with each model; print each one's cost (online and
    batch), latency, invalid answers and agreement. A re-run pays nothing."""
    flags = {k: v for k, v in locals().items() if k not in _COMPARISON_ONLY}
    settings = _settings_from(job_or_source, _llm_flags(flags))
    request = CompareRequest(
        models=tuple(models),
        sample=sample,
        reference=tuple(reference or ()),
        output=compare_output,
        budget=budget if budget is not None else settings.get("budget"),
        tolerance=tolerance,
    )
    comparison = compare_job(settings, request)
    for line in comparison.lines():
        print(line)
    _exit(comparison.exit_code)
