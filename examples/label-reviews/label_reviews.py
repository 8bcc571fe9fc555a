"""Label product reviews with an LLM: the settings, the CLI command and the Python call.

``run.py`` is the one command; this module holds what it runs, so the CLI and the Python
function label with the same settings and share one state directory (a run of either
resumes the other's work).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

import rowpilot

HERE = Path(__file__).resolve().parent
REVIEWS = HERE / "reviews.csv"
MODEL = "openai/gpt-4o-mini"
# "name: what it means": the name is the output column, the description goes to the model.
LABELS = [
    "complaint: the customer reports a defect, a bad experience or poor service",
    "praise: the customer is pleased and would recommend or buy again",
    "shipping: the review mentions delivery, the package, the courier or shipping time",
    "refund: the review mentions a refund, a return or money back",
]
LABEL_NAMES = [label.partition(":")[0] for label in LABELS]


def cli_command(
    out: Path,
    *,
    model: str = MODEL,
    base_url: str | None = None,
    batch_size: int = 10,
    workers: int = 3,
    limit: int | None = None,
    env_file: Path | None = None,
    progress: bool | None = None,
) -> list[str]:
    """The ``rowpilot label`` command line (``python -m rowpilot`` is the same CLI), with
    paths relative to the working directory, where it runs."""
    command = [
        sys.executable, "-m", "rowpilot", "label", _shown(REVIEWS),
        "--key", "id", "--text-column", "text", "--labels", *LABELS,
        "--model", model, "--batch-size", str(batch_size), "--workers", str(workers),
        "--state", _shown(out / "state"), "--output", _shown(out / "reviews-labelled.csv"),
    ]  # fmt: skip
    if base_url is not None:
        command += ["--base-url", base_url]
    if limit is not None:
        command += ["--limit", str(limit)]
    if env_file is not None:
        command += ["--env-file", str(env_file)]
    if progress is not None:
        command.append("--progress" if progress else "--no-progress")
    return command


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it: shorter to read."""
    absolute, here = path.resolve(), Path.cwd()
    return str(absolute.relative_to(here)) if absolute.is_relative_to(here) else str(path)


def label_reviews(
    out: Path,
    *,
    model: str = MODEL,
    base_url: str | None = None,
    batch_size: int = 10,
    workers: int = 3,
    limit: int | None = None,
    env_file: Path | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """The same job from Python: the enriched table as a DataFrame (one bool per label),
    with the label summary printed and kept in ``df.attrs["label_summary"]``."""
    out.mkdir(parents=True, exist_ok=True)
    return rowpilot.label(
        REVIEWS,
        key="id",
        text_column="text",
        labels=LABELS,
        model=model,
        base_url=base_url,
        batch_size=batch_size,
        workers=workers,
        limit=limit,
        env_file=env_file,
        state=out / "state",
        output=out / "reviews-labelled.csv",
        progress=progress,
    )
