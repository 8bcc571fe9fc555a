"""Options several commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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


IncludeStaleOption = Annotated[
    bool,
    typer.Option(
        "--include-stale",
        help="Also the items an older version of the task produced (they count as pending).",
    ),
]
