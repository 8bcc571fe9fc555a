"""The built-in commands on texts: ``label``, ``embed``, ``dedupe``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rowpilot._atomic import check_writable
from rowpilot._dedupe import write_frame
from rowpilot.cli._app import _example, app
from rowpilot.cli._options import (
    BaseUrlOption,
    BudgetOption,
    EnvFileOption,
    NoCacheOption,
    ProgressOption,
    RpmOption,
    SourceArgument,
    ThresholdOption,
    TpmOption,
)
from rowpilot.cli._run import _llm_flags, _run_and_report

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
