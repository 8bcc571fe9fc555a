"""The report as one self-contained HTML page: styles, charts (inline SVG) and the little
script it has (copy a command; in the dashboard, the refresh) are all in the file, so it
opens with no network.

Everything taken from the job (keys, errors, commands, resource and job names) is
escaped with ``html.escape``: a row whose key is ``<script>`` is shown as text. The SVG
charts are matplotlib's, which escapes the text it draws.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterable, Sequence

from rowpilot._format import duration, usd
from rowpilot.report import charts
from rowpilot.report.data import ReportData, ResourceView, RunLine

REFRESH_SECONDS = 2.0  # the dashboard's refresh period

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#111827;
background:#f9fafb}
header{background:#111827;color:#f9fafb;padding:14px 24px}
header h1{margin:0;font-size:20px}header .sub{color:#9ca3af;font-size:12px}
main{max-width:1100px;margin:0 auto;padding:8px 24px 40px}
section{background:#fff;border:1px solid #e5e7eb;border-radius:8px;margin:14px 0;padding:12px 16px}
h2{font-size:16px;margin:4px 0 10px}
table{border-collapse:collapse;width:100%;font-size:12.5px}
th,td{border-bottom:1px solid #e5e7eb;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f3f4f6;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;word-break:break-all}
.counters{display:flex;flex-wrap:wrap;gap:10px}
.counter{background:#f3f4f6;border-radius:6px;padding:6px 12px;min-width:110px}
.counter b{display:block;font-size:20px}.counter span{font-size:11px;color:#6b7280}
figure.chart{margin:6px 0}figure.chart svg{width:100%;height:auto}
.badge{display:inline-block;border-radius:10px;padding:1px 8px;font-size:11px;margin-left:6px}
.live{background:#059669;color:#fff}.ended{background:#6b7280;color:#fff}
.stale{background:#dc2626;color:#fff}
.copy{display:flex;gap:6px}.copy input{flex:1;font:12px ui-monospace,monospace;padding:4px}
.muted{color:#6b7280}
"""

_COPY_SCRIPT = """
function rpCopy(id){const f=document.getElementById(id);f.select();
if(navigator.clipboard){navigator.clipboard.writeText(f.value).catch(function(){});}
else{document.execCommand('copy');}}
"""

_LIVE_SCRIPT = """
(function(){const token=document.body.dataset.token;let failures=0;
async function refresh(){
 try{const r=await fetch('fragment?token='+encodeURIComponent(token),{cache:'no-store'});
  if(!r.ok){throw new Error('HTTP '+r.status);}
  document.getElementById('report').innerHTML=await r.text();failures=0;
  document.getElementById('state').textContent='live';
 }catch(e){failures+=1;const s=document.getElementById('state');
  s.textContent='not refreshing (the run or dashboard stopped?)';s.className='badge stale';
  if(failures>2){return;}}
 setTimeout(refresh,%d);}
setTimeout(refresh,%d);})();
"""


def render_page(data: ReportData, *, live_token: str | None = None) -> str:
    """The whole page; with ``live_token``, the dashboard's, refreshing itself."""
    badge = _status_badge(data, live=live_token is not None)
    sub = f"state {_e(data.state)} · made {_when(data.made_at)}"
    return _shell(data.job, badge, sub, render_fragment(data), live_token)


def render_waiting(job: str, message: str, live_token: str) -> tuple[str, str]:
    """The dashboard's page and body before the job has a registry (its first results)."""
    fragment = _section("waiting", "Waiting", f'<p class="muted">{_e(message)}</p>')
    badge = ' <span id="state" class="badge live">live</span>'
    return _shell(job, badge, "", fragment, live_token), fragment


def _shell(job: str, badge: str, sub: str, fragment: str, live_token: str | None) -> str:
    title = f"rowpilot report: {job}"
    script = _COPY_SCRIPT
    token_attr = ""
    if live_token is not None:
        period = int(REFRESH_SECONDS * 1000)
        script += _LIVE_SCRIPT % (period, period)
        token_attr = f' data-token="{_e(live_token)}"'
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body{token_attr}><header><h1>{_e(title)}{badge}</h1>"
        f'<div class="sub">{sub}</div></header>'
        f'<main id="report">{fragment}</main>'
        f"<script>{script}</script></body></html>\n"
    )


def _status_badge(data: ReportData, *, live: bool) -> str:
    if live:
        return ' <span id="state" class="badge live">live</span>'
    text = "running" if data.running else "ended"
    return f' <span id="state" class="badge ended">{text}</span>'


def render_fragment(data: ReportData) -> str:
    """The page's body: what the dashboard swaps in at each refresh."""
    parts = [
        _counters(data),
        _runs(data),
        _shards(data),
        _throughput(data),
        _resources(data),
        _cost(data),
        _latency(data),
        _failures(data),
    ]
    return "".join(part for part in parts if part)


# -- sections ---------------------------------------------------------------------------


def _counters(data: ReportData) -> str:
    pending = (
        max(0, data.items_total - data.done - data.failed) if data.items_total is not None else None
    )
    rate = _recent_rate(data)
    budget = data.runs[-1].budget_usd if data.runs else None  # the last run's: per run
    cells = [
        ("done", f"{data.done:,}"),
        ("failed", f"{data.failed:,}"),
        ("pending", "" if pending is None else f"{pending:,}"),
        ("items/s (last minute)" if data.running else "items/s (whole job)", f"{rate:,.1f}"),
        ("spent", _usd(data.cost_usd) + (f" of {_usd(budget)}" if budget else "")),
        ("runs", f"{len(data.runs)}"),
    ]
    body = "".join(
        f'<div class="counter" data-counter="{_e(name)}"><b>{_e(value)}</b>'
        f"<span>{_e(name)}</span></div>"
        for name, value in cells
    )
    return f'<section id="counters"><div class="counters">{body}</div></section>'


def _recent_rate(data: ReportData) -> float:
    if not data.items_series:
        return 0.0
    if not data.running:
        span = data.timeline.span
        return (data.done + data.failed) / span if span > 0 else 0.0
    last = max(1, int(60 // data.bucket_seconds))
    recent = data.items_series[-last:]
    return sum(recent) / (len(recent) * data.bucket_seconds)


def _runs(data: ReportData) -> str:
    rows = [
        [
            _code(run.run_id),
            _code(run.command),
            _e(_when(run.started_at)),
            _e(_when(run.ended_at) if run.ended_at else "—"),
            _e(_ended_how(run)),
            _e(run.executor),
            _e(run.workers),
            _n(run.done),
            _n(run.failed),
            _e(_usd(run.cost_usd)),
        ]
        for run in data.runs
    ]
    heads = ["run", "command", "start", "end", "how it ended", "executor", "workers",
             "done", "failed", "cost"]  # fmt: skip
    return _section("runs", "Runs", _table(heads, rows, numeric={7, 8, 9}))


def _ended_how(run: RunLine) -> str:
    if run.running:
        return "running"
    if run.status == "crashed":
        return "crashed (killed: no end recorded; the next run resumes it)"
    return f"{run.status} ({run.stop_reason})" if run.stop_reason else run.status


def _shards(data: ReportData) -> str:
    if not data.shards:
        return ""
    rows = [
        [
            _e(s.shard),
            _n(s.runs),
            _n(s.done),
            _n(s.failed),
            _e(_usd(s.cost_usd)),
            _e(duration(s.seconds)),
        ]
        for s in data.shards
    ]
    total = [
        "<b>merged</b>",
        _n(sum(s.runs for s in data.shards)),
        _n(sum(s.done for s in data.shards)),
        _n(sum(s.failed for s in data.shards)),
        _e(_usd(sum(s.cost_usd for s in data.shards))),
        _e(duration(sum(s.seconds for s in data.shards))),
    ]
    heads = ["shard", "runs", "done", "failed", "cost", "time"]
    return _section("shards", "Shards", _table(heads, [*rows, total], numeric={1, 2, 3, 4}))


def _throughput(data: ReportData) -> str:
    if not data.timeline.span:
        return _section("throughput", "Throughput", '<p class="muted">no run time yet</p>')
    note = (
        '<p class="muted">Run time: the runs laid end to end (dashed lines: a run starts, '
        "or stops early). Shaded: admission paused after a 429 (red) or for memory "
        "(orange).</p>"
    )
    chart = _chart("throughput", charts.throughput(data))
    return _section("throughput", "Throughput", note + chart)


def _resources(data: ReportData) -> str:
    if not data.resources:
        return ""
    rows = [_resource_row(view) for view in data.resources.values()]
    heads = ["resource", "requests", "429s", "retries", "limit in force", "used",
             "p50", "p95", "p99", "paid calls", "cost"]  # fmt: skip
    table = _table(heads, rows, numeric={1, 2, 3, 5, 6, 7, 8, 9, 10})
    shown = list(data.resources.values())[: charts.MAX_RESOURCE_CHARTS]
    figures = "".join(
        f"<h3>{_e(view.name)}</h3>" + _chart(f"resource-{index}", charts.resource(data, view))
        for index, view in enumerate(shown)
        if data.timeline.span and any(view.requests_series)
    )
    return _section("resources", "Resources", table + figures)


def _resource_row(view: ResourceView) -> list[str]:
    limits = []
    if view.rpm:
        limits.append(f"{view.rpm:,.0f} rpm")
    if view.tpm:
        limits.append(f"{view.tpm:,.0f} tpm")
    if view.max_concurrent:
        limits.append(f"{view.max_concurrent} at once")
    limit = ", ".join(limits) or "none known"
    if limits:
        limit += " (learned)" if view.learned else " (given)"
    used = view.rpm_used
    return [
        _code(view.name),
        _n(view.requests),
        _n(view.rate_limited),
        _n(view.retries),
        _e(limit),
        _e("" if used is None else f"{used:.0%} of rpm"),
        _e(_seconds(view.latency_at(0.5))),
        _e(_seconds(view.latency_at(0.95))),
        _e(_seconds(view.latency_at(0.99))),
        _n(view.paid_calls),
        _e(_usd(view.cost_usd)),
    ]


def _cost(data: ReportData) -> str:
    rows = [["spent, every run", _e(_usd(data.cost_usd))]]
    per_item = data.cost_per_item
    rows.append(["per done item", _e("—" if per_item is None else _usd(per_item, 6))])
    for view in data.resources.values():
        if view.cost_usd:
            rows.append([f"on {_code(view.name)}", _e(_usd(view.cost_usd))])
    estimate = data.estimate
    if estimate is not None:
        rows.append(
            [
                f"estimate (sample of {estimate.sample:,}, {_e(_when(estimate.made_at))})",
                _e(f"{_usd(estimate.cost_usd)} for the whole job of {estimate.total:,} items"),
            ]
        )
        if estimate.batch_cost_usd is not None:
            rows.append(["estimate through a Batch API", _e(_usd(estimate.batch_cost_usd))])
        if data.done:
            projected = data.cost_usd / data.done * estimate.total
            rows.append(
                [
                    "actual, projected to the whole job",
                    _e(f"{_usd(projected)} ({projected / estimate.cost_usd:.0%} of the estimate)")
                    if estimate.cost_usd
                    else _e(_usd(projected)),
                ]
            )
    table = _table(["", "USD"], rows, numeric={1})
    paid = data.cost_usd > 0 or any(b is not None for b in data.budget_series) or estimate
    chart = _chart("cost", charts.cost(data)) if data.timeline.span and paid else ""
    return _section("cost", "Cost", table + chart)


def _latency(data: ReportData) -> str:
    if not any(view.latency for view in data.resources.values()):
        return ""
    return _section("latency", "Latency", _chart("latency", charts.latency(data)))


def _failures(data: ReportData) -> str:
    if not data.failed:
        return _section("failures", "Failures", '<p class="muted">no item failed</p>')
    parts = [_chart("causes", charts.causes(data))]
    rows = [
        [_code(f.key), _e(f.cause), _e(f.error_type), _e(f.error), _n(f.attempts)]
        for f in data.failures
    ]
    shown = f"the first {len(data.failures):,} of {data.failed:,}"
    parts.append(f'<p class="muted">Failed items ({shown}):</p>')
    parts.append(_table(["key", "cause", "error type", "error", "attempts"], rows, numeric={4}))
    if data.retry_command:
        parts.append(
            "<p>To retry them, run:</p>"
            '<div class="copy"><input id="retry-command" readonly '
            f'value="{_e(data.retry_command)}" aria-label="the retry command">'
            '<button type="button" onclick="rpCopy(\'retry-command\')">Copy</button></div>'
        )
    return _section("failures", "Failures", "".join(parts))


# -- small pieces -------------------------------------------------------------------------


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _code(text: str) -> str:
    return f"<code>{_e(text)}</code>"


def _n(value: int) -> str:
    return f"{value:,}"


def _usd(value: float | None, places: int | None = None) -> str:
    return "" if value is None else usd(value, places)


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value * 1000:,.0f} ms" if value < 1 else f"{value:,.2f} s"


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{body}</section>'


def _chart(name: str, svg: str) -> str:
    svg = charts.svg_ids_unique(svg, name)
    return f'<figure class="chart" data-chart="{_e(name)}">{svg}</figure>'


def _table(heads: Sequence[str], rows: Iterable[Sequence[str]], *, numeric: set[int]) -> str:
    """Cells are already escaped (or markup made here from escaped text)."""
    head = "".join(
        f"<th{' class=n' if i in numeric else ''}>{_e(h)}</th>" for i, h in enumerate(heads)
    )
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=n' if i in numeric else ''}>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
