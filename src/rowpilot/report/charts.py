"""The report's charts: matplotlib figures drawn as inline SVG.

Why matplotlib's SVG: the page must open with no network (no CDN) and stay small. A
JavaScript plotting library would have to be inlined whole into every page (plotly.js is
over 3 MB, bokeh's about 1 MB) and shipped inside the package; matplotlib draws on the
machine that makes the report and the page carries only the drawing: a few tens of KB a
chart, text kept as text (``svg.fonttype = none``), no script at all. The dashboard
redraws them when the job has changed. Figures are built with the object API (no pyplot:
no global state, safe in the dashboard's thread).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from typing import Any, cast

from rowpilot._latency import bounds
from rowpilot.report.data import ReportData, ResourceView

_STYLE = {
    "svg.fonttype": "none",  # text stays text: smaller, selectable, searchable
    "svg.hashsalt": "rowpilot",  # stable element ids: the same data draws the same page
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
_COLOURS = {
    "items": "#2563eb",
    "requests": "#059669",
    "workers": "#9333ea",
    "429": "#dc2626",
    "memory": "#ea580c",
    "retries": "#d97706",
    "limit": "#6b7280",
    "cost": "#0f766e",
    "budget": "#dc2626",
    "estimate": "#7c3aed",
}
MAX_RESOURCE_CHARTS = 8


def _figure(height: float = 2.8) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8.6, height), dpi=96, layout="constrained")
    return figure, figure.add_subplot()


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # inline: no XML prolog or doctype


def _draw(draw: Any, *args: Any, height: float = 2.8) -> str:
    import matplotlib

    with matplotlib.rc_context(cast("Any", _STYLE)):
        figure, axes = _figure(height)
        draw(figure, axes, *args)
        return _svg(figure)


def _time_axis(data: ReportData) -> tuple[list[float], str, float]:
    """Bucket middles in the unit the job's length reads best in."""
    span = data.timeline.span
    unit, scale = ("s", 1.0) if span < 600 else ("min", 60.0) if span < 36_000 else ("h", 3600.0)
    return [t / scale for t in data.bucket_times()], unit, scale


def _marks(axes: Any, data: ReportData, scale: float) -> None:
    """Pauses as shaded spans, run starts and stops as lines."""
    labelled: set[str] = set()
    for pause in data.pauses:
        kind = pause.kind
        label = None if kind in labelled else f"paused ({kind})"
        labelled.add(kind)
        axes.axvspan(
            pause.start / scale,
            max(pause.end, pause.start + data.bucket_seconds / 4) / scale,
            color=_COLOURS[kind],
            alpha=0.15,
            label=label,
        )
    for mark in data.marks:
        if mark.at == 0 and mark.label == "run 1":
            continue
        colour = _COLOURS["budget"] if "budget" in mark.label else _COLOURS["limit"]
        axes.axvline(mark.at / scale, color=colour, linestyle="--", linewidth=0.8)
        axes.annotate(
            mark.label,
            (mark.at / scale, 1.0),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            color=colour,
            rotation=90,
            va="top",
            ha="right",
        )


def throughput(data: ReportData) -> str:
    def draw(figure: Any, axes: Any) -> None:
        times, unit, scale = _time_axis(data)
        width = data.bucket_seconds
        axes.plot(times, [n / width for n in data.items_series], color=_COLOURS["items"],
                  label="items/s")  # fmt: skip
        requests = [0.0] * data.buckets
        for view in data.resources.values():
            requests = [a + b for a, b in zip(requests, view.requests_series, strict=True)]
        if any(requests):
            axes.plot(times, [n / width for n in requests], color=_COLOURS["requests"],
                      label="requests/s")  # fmt: skip
        axes.set_xlabel(f"run time ({unit})")
        axes.set_ylabel("per second")
        axes.set_ylim(bottom=0)
        _marks(axes, data, scale)
        if any(value is not None for value in data.workers_series):
            twin = axes.twinx()
            values = [float("nan") if v is None else v for v in data.workers_series]
            twin.step(times, values, where="mid", color=_COLOURS["workers"], linewidth=1,
                      label="workers")  # fmt: skip
            twin.set_ylabel("workers")
            twin.set_ylim(bottom=0)
            _legend(axes, twin)
        else:
            _legend(axes)

    return _draw(draw)


def _legend(*axes: Any) -> None:
    handles, labels = [], []
    for each in axes:
        h, lab = each.get_legend_handles_labels()
        handles += h
        labels += lab
    if handles:
        axes[0].legend(handles, labels, loc="upper left", fontsize=7, framealpha=0.8)


def resource(data: ReportData, view: ResourceView) -> str:
    def draw(figure: Any, axes: Any) -> None:
        times, unit, scale = _time_axis(data)
        width = data.bucket_seconds
        axes.plot(times, [n / width * 60 for n in view.requests_series],
                  color=_COLOURS["requests"], label="requests/min")  # fmt: skip
        limit = [float("nan") if v is None else v for v in view.rpm_series]
        if any(not math.isnan(v) for v in limit):
            axes.step(times, limit, where="mid", color=_COLOURS["limit"], linestyle="--",
                      label="rpm limit in force")  # fmt: skip
        axes.set_xlabel(f"run time ({unit})")
        axes.set_ylabel("per minute")
        axes.set_ylim(bottom=0)
        _marks(axes, data, scale)
        twin = axes.twinx()
        twin.bar(times, view.limited_series, width=width / scale, color=_COLOURS["429"],
                 alpha=0.6, label="429s")  # fmt: skip
        twin.bar(times, view.retries_series, width=width / scale, color=_COLOURS["retries"],
                 alpha=0.5, bottom=view.limited_series, label="retries")  # fmt: skip
        twin.set_ylabel("429s, retries")
        twin.set_ylim(bottom=0, top=max(1.0, *_sums(view.limited_series, view.retries_series)))
        _legend(axes, twin)

    return _draw(draw)


def _sums(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [x + y for x, y in zip(a, b, strict=True)] or [0.0]


def cost(data: ReportData) -> str:
    def draw(figure: Any, axes: Any) -> None:
        times, unit, scale = _time_axis(data)
        axes.plot(times, data.cost_series, color=_COLOURS["cost"], label="spent (USD)")
        budget = [float("nan") if v is None else v for v in data.budget_series]
        if any(not math.isnan(v) for v in budget):
            axes.step(times, budget, where="mid", color=_COLOURS["budget"], linestyle="--",
                      label="budget")  # fmt: skip
        if data.estimate is not None:
            axes.axhline(data.estimate.cost_usd, color=_COLOURS["estimate"], linestyle=":",
                         label="estimate")  # fmt: skip
        axes.set_xlabel(f"run time ({unit})")
        axes.set_ylabel("USD")
        axes.set_ylim(bottom=0)
        _marks(axes, data, scale)
        _legend(axes)

    return _draw(draw)


def latency(data: ReportData) -> str:
    def draw(figure: Any, axes: Any) -> None:
        for view in list(data.resources.values())[:MAX_RESOURCE_CHARTS]:
            if not view.latency:
                continue
            first, last = min(view.latency), max(view.latency)
            counts = [view.latency.get(b, 0) for b in range(first, last + 1)]
            edges = [bounds(b)[0] for b in range(first, last + 2)]
            axes.stairs(counts, edges, fill=True, alpha=0.45, label=view.name)
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(_seconds_formatter())
        axes.xaxis.set_minor_formatter(_no_labels())
        axes.set_xlabel("call latency")
        axes.set_ylabel("calls")
        _legend(axes)

    return _draw(draw, height=2.4)


def _seconds_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: f"{v * 1000:.0f} ms" if v < 1 else f"{v:g} s")


def _no_labels() -> Any:
    from matplotlib.ticker import NullFormatter

    return NullFormatter()


def causes(data: ReportData) -> str:
    def draw(figure: Any, axes: Any) -> None:
        names = list(data.causes)[:12]
        axes.barh(names[::-1], [data.causes[n] for n in names][::-1], color=_COLOURS["429"])
        axes.set_xlabel("failed items")

    return _draw(draw, height=0.6 + 0.3 * min(len(data.causes), 12))


def svg_ids_unique(svg: str, prefix: str) -> str:
    """Several SVGs in one page: prefix each one's element ids (and the references to
    them), so the clip paths of one chart never apply to another."""
    ids = set(re.findall(r'id="([^"]+)"', svg))
    for name in sorted(ids, key=len, reverse=True):
        svg = svg.replace(f'id="{name}"', f'id="{prefix}-{name}"')
        svg = svg.replace(f"#{name})", f"#{prefix}-{name})")
        svg = svg.replace(f'"#{name}"', f'"#{prefix}-{name}"')
    return svg
