"""The built-in commands on texts: ``label``, ``embed``, ``dedupe``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

from rowpilot import _settings
from rowpilot.cli._app import _example, app
from rowpilot.cli._options import SettingsCommand, SourceArgument, option
from rowpilot.cli._run import _llm_flags, _run_and_report, _workers
from rowpilot.local_model.dedupe import write_frame
from rowpilot.sinks.atomic import check_writable

# -- label ------------------------------------------------------------------------------


@app.command(
    cls=SettingsCommand,
    epilog=_example(
        "rowpilot label data.csv --text-column text --labels racist sexist homophobic "
        "--batch-size 10 --workers 3 -o enriched.csv",
        "rowpilot label tickets.jsonl --key id --text-column body --labels bug billing "
        "--model anthropic/claude-haiku-4-5 --budget 2",
    ),
)
def label(
    source: SourceArgument,
    text_column: Annotated[str, option("text_column", "label")],
    labels: Annotated[list[str], option("labels", "label")],
    output: Annotated[str | None, option("output", "label")] = None,
    model: Annotated[str | None, option("model", "label")] = None,
    base_url: Annotated[str | None, option("base_url", "label")] = None,
    threshold: Annotated[float | None, option("threshold", "label")] = None,
    key: Annotated[str | None, option("key", "label")] = None,
    batch_size: Annotated[str | None, option("batch_size", "label")] = None,
    workers: Annotated[str | None, option("workers", "label")] = None,
    executor: Annotated[str | None, option("executor", "label")] = None,
    system: Annotated[str | None, option("system", "label")] = None,
    max_tokens: Annotated[str | None, option("max_tokens", "label")] = None,
    batch_api: Annotated[bool | None, option("batch_api", "label")] = None,
    batch_fallback: Annotated[str | None, option("batch_fallback", "label")] = None,
    detach: Annotated[bool | None, option("detach", "label")] = None,
    dashboard: Annotated[bool | None, option("dashboard", "label")] = None,
    batch_poll: Annotated[float | None, option("batch_poll", "label")] = None,
    limit: Annotated[int | None, option("limit", "label")] = None,
    budget: Annotated[float | None, option("budget", "label")] = None,
    rpm: Annotated[float | None, option("rpm", "label")] = None,
    tpm: Annotated[float | None, option("tpm", "label")] = None,
    cache: Annotated[bool | None, option("cache", "label")] = None,
    env_file: Annotated[Path | None, option("env_file", "label")] = None,
    state: Annotated[Path | None, option("state", "label")] = None,
    progress: Annotated[bool | None, option("progress", "label")] = None,
    sheet: Annotated[str | None, option("sheet", "label")] = None,
    header_row: Annotated[int | None, option("header_row", "label")] = None,
) -> None:
    """Add one true/false column per label to a table of texts, several rows per request.

    Without --model it uses openai/gpt-4o-mini when an OPENAI_API_KEY is set (or in .env),
    else the bundled local model local/wordllama (similarity to each label, no API).
    """
    given = dict(locals())
    if model is None:
        given["model"] = _default_label_model(env_file)
    from rowpilot._api import _job_name  # here: the CLI starts without the library's imports

    given["name"] = _job_name(source, "labels", sheet)
    _run_and_report(_llm_flags(_with_defaults(given, "label")))


def _with_defaults(given: dict[str, Any], command: str) -> dict[str, Any]:
    """The command's own defaults (rowpilot label asks 10 rows per request) where unset."""
    for setting in _settings.for_command(command):
        if given.get(setting.name) is None and command in setting.command_defaults:
            given[setting.name] = setting.default_for(command)
    return given


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


# -- embed, dedupe ------------------------------------------------------------------------


@app.command(
    cls=SettingsCommand,
    epilog=_example(
        "rowpilot embed docs.csv --key id --text-column body -o vectors.parquet",
        "rowpilot embed docs.csv --key id --text-column body --vectors lancedb://./vectors/docs",
    ),
)
def embed(
    source: SourceArgument,
    text_column: Annotated[str, option("text_column", "embed")],
    output: Annotated[str | None, option("output", "embed")] = None,
    vectors: Annotated[str | None, option("vectors", "embed")] = None,
    key: Annotated[str | None, option("key", "embed")] = None,
    embed_batch: Annotated[int | None, option("embed_batch", "embed")] = None,
    insert_batch: Annotated[int | None, option("insert_batch", "embed")] = None,
    workers: Annotated[str | None, option("workers", "embed")] = None,
    executor: Annotated[str | None, option("executor", "embed")] = None,
    model: Annotated[str | None, option("model", "embed")] = None,
    limit: Annotated[int | None, option("limit", "embed")] = None,
    state: Annotated[Path | None, option("state", "embed")] = None,
    progress: Annotated[bool | None, option("progress", "embed")] = None,
    sheet: Annotated[str | None, option("sheet", "embed")] = None,
    header_row: Annotated[int | None, option("header_row", "embed")] = None,
) -> None:
    """Embed a text column with the bundled local model (256 numbers per row, no API)."""
    given = _with_defaults(dict(locals()), "embed")
    from rowpilot._api import _job_name
    from rowpilot.local_model.tasks import check_local_model  # after locals(): not a setting

    check_local_model(given.pop("model"))
    given.update(embed=True, name=_job_name(source, "embed", sheet))
    _run_and_report(_llm_flags(given))


@app.command(
    cls=SettingsCommand,
    epilog=_example(
        "rowpilot dedupe companies.csv --key id --text-column name -o clusters.csv",
        "rowpilot dedupe people.jsonl --text-column name --threshold 0.9 -o people.parquet",
    ),
)
def dedupe(
    source: SourceArgument,
    text_column: Annotated[str, option("text_column", "dedupe")],
    output: Annotated[Path, option("output", "dedupe")],
    key: Annotated[str | None, option("key", "dedupe")] = None,
    threshold: Annotated[float | None, option("threshold", "dedupe")] = None,
    workers: Annotated[str | None, option("workers", "dedupe")] = None,
    state: Annotated[Path | None, option("state", "dedupe")] = None,
    progress: Annotated[bool | None, option("progress", "dedupe")] = None,
    sheet: Annotated[str | None, option("sheet", "dedupe")] = None,
    header_row: Annotated[int | None, option("header_row", "dedupe")] = None,
) -> None:
    """Group near-duplicate texts: a cluster number and a canonical key per row (the
    table at --output has the rows with cluster and canonical_key)."""
    from rowpilot._api import dedupe as dedupe_rows

    check_writable(output, what="output")
    frame, report = dedupe_rows(
        source,
        text_column=text_column,
        key=key,
        threshold=threshold,
        workers=_workers(workers)
        if workers is not None
        else _settings.BY_NAME["workers"].default_for("dedupe"),
        state=state,
        progress=progress,
        summary=False,
        sheet=sheet,
        header_row=header_row,
    )
    write_frame(frame, output)
    for line in report.lines():
        print(line)
    print(f"table: {output} ({len(frame):,} rows)")
