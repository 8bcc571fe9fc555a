"""What a comparison found, as text (a block per model) and as a DataFrame (a row per
model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rowpilot.comparison.agreement import NUMBER_TOLERANCE, FieldAgreement, FieldKind
from rowpilot.comparison.figures import ModelFigures
from rowpilot.llm.cost import format_usd

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class Comparison:
    """The models' figures, the answers side by side, and how the runs ended."""

    figures: list[ModelFigures]
    total: int  # rows in the whole job's selection
    sample: int
    fields: tuple[str, ...]
    kinds: dict[str, FieldKind]
    answers: list[dict[str, Any]]  # key, inputs, then "MODEL:FIELD" per model and field
    baseline: str = ""  # the first model: agreement's baseline where no reference is given
    references: dict[str, str] = field(default_factory=dict)  # field -> reference column
    tolerance: float = NUMBER_TOLERANCE  # numbers agree within it, relative to the larger
    not_run: tuple[str, ...] = ()  # models after a run that ended the comparison
    stop: str | None = None  # why the comparison stopped early
    exit_code: int = 0
    written: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return comparison_lines(self)

    def to_pandas(self) -> pd.DataFrame:
        return comparison_frame(self)


def comparison_lines(comparison: Comparison) -> list[str]:
    lines = [
        f"compared on a stable sample of {comparison.sample:,} of {comparison.total:,} rows "
        f"(agreement with {_baselines(comparison)})"
    ]
    for figures in comparison.figures:
        lines += _model_lines(figures, comparison.sample, comparison.total)
    if comparison.not_run:
        lines.append(f"not run: {', '.join(comparison.not_run)}")
    if comparison.stop:
        lines.append(f"stopped: {comparison.stop}")
    return lines + comparison.written


def _baselines(comparison: Comparison) -> str:
    said = [
        f"{name}: reference column {column!r}" for name, column in comparison.references.items()
    ]
    if len(comparison.references) < len(comparison.fields):
        said.append(f"{'other fields: ' if said else ''}{comparison.baseline}")
    if "number" in comparison.kinds.values():
        said.append(f"numbers within {comparison.tolerance:.0%}")
    return "; ".join(said)


def _model_lines(figures: ModelFigures, sample: int, total: int) -> list[str]:
    costs = figures.costs
    batch = "" if costs.priced else " (no known price: $0)"
    unreached = f", {sample - figures.rows:,} not reached" if figures.rows < sample else ""
    lines = [
        f"{figures.model}",
        f"  rows: {figures.answered:,} of {sample:,} answered{unreached}, "
        f"invalid answers {figures.invalid_rate:.1%} ({figures.invalid:,})",
        f"  cost per 1,000 rows: ${figures.per_1000(costs.online_usd):,.4f} online, "
        f"${figures.per_1000(costs.batch_usd):,.4f} batch{batch}",
        f"  whole job ({total:,} rows): {format_usd(figures.projected(costs.online_usd, total))} "
        f"online, {format_usd(figures.projected(costs.batch_usd, total))} batch",
        f"  latency per call: p50 {_seconds(figures.latency(0.5))}, "
        f"p95 {_seconds(figures.latency(0.95))} ({costs.calls:,} calls)",
    ]
    if figures.agreement:
        lines.append("  agreement: " + ", ".join(map(_agreement_text, figures.agreement)))
    return lines


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _agreement_text(found: FieldAgreement) -> str:
    if found.score is None:
        return f"{found.field} - (no row to compare)"
    if found.kind == "text":
        return (
            f"{found.field} {found.score:.1%} similarity, {found.equal or 0.0:.1%} equal "
            f"({found.compared:,} rows)"
        )
    return f"{found.field} {found.score:.1%} agree ({found.compared:,} rows)"


def comparison_frame(comparison: Comparison) -> pd.DataFrame:
    """A row per model: its figures, and per field ``agreement_FIELD`` (the share or mean
    similarity, NaN where the model is the baseline) and ``compared_FIELD`` (rows).
    ``attrs["answers"]`` holds the answers side by side, ``attrs["baseline"]`` and
    ``attrs["references"]`` what agreement compares with, ``attrs["total"]`` the job's rows."""
    import pandas as pd

    rows = [_frame_row(figures, comparison) for figures in comparison.figures]
    frame = pd.DataFrame(rows, columns=_frame_columns(comparison))
    frame.attrs["answers"] = pd.DataFrame(comparison.answers)
    frame.attrs["baseline"] = comparison.baseline
    frame.attrs["references"] = dict(comparison.references)
    frame.attrs["tolerance"] = comparison.tolerance
    frame.attrs["total"] = comparison.total
    frame.attrs["not_run"] = list(comparison.not_run)
    return frame


def _frame_columns(comparison: Comparison) -> list[str]:
    columns = [
        "model",
        "rows",
        "answered",
        "invalid_rate",
        "cost_per_1000_online",
        "cost_per_1000_batch",
        "projected_online",
        "projected_batch",
        "latency_p50",
        "latency_p95",
        "calls",
    ]
    for name in comparison.fields:
        columns += [f"agreement_{name}", f"compared_{name}"]
    return columns


def _frame_row(figures: ModelFigures, comparison: Comparison) -> dict[str, Any]:
    costs, total = figures.costs, comparison.total
    row: dict[str, Any] = {
        "model": figures.model,
        "rows": figures.rows,
        "answered": figures.answered,
        "invalid_rate": figures.invalid_rate,
        "cost_per_1000_online": figures.per_1000(costs.online_usd),
        "cost_per_1000_batch": figures.per_1000(costs.batch_usd),
        "projected_online": figures.projected(costs.online_usd, total),
        "projected_batch": figures.projected(costs.batch_usd, total),
        "latency_p50": figures.latency(0.5),
        "latency_p95": figures.latency(0.95),
        "calls": costs.calls,
    }
    for found in figures.agreement:
        row[f"agreement_{found.field}"] = found.score
        row[f"compared_{found.field}"] = found.compared
    return row
