"""What the report reads from a real job (``rowpilot.report.data``): the registry and the
run's samples and events, for a job that met 429s, failures, retries and a budget stop."""

from __future__ import annotations

import json
from pathlib import Path

from reported_job import HOSTILE_KEY, MODEL, ROWS, RPM, Job
from rowpilot.report.data import LogReader, Timeline, read_report


def test_the_report_counts_what_the_registry_holds(report_job: Job) -> None:
    data = read_report(report_job.state)
    first, second = data.runs[0], report_job.second.summary
    assert first.status == "budget_reached" and second.status == "completed_with_failures"
    assert data.done == first.done + second.done
    assert data.failed == first.failed + second.failed == ROWS // 10
    assert f"{first.done} done, {first.failed} failed" in report_job.first
    assert "of a $0.0009 budget" in report_job.first  # a small budget is not "$0.00"
    assert data.items_total == ROWS
    assert data.causes == {"content_filter": ROWS // 10}
    assert abs(data.cost_usd - (first.cost_usd + second.cost_usd)) < 1e-9
    assert [run.status for run in data.runs] == ["budget_reached", "completed_with_failures"]
    assert data.runs[0].budget_usd == 0.0009 and data.runs[1].budget_usd is None
    assert "budget reached" in (data.runs[0].stop_reason or "")


def test_each_resource_has_its_requests_429s_retries_and_latency(report_job: Job) -> None:
    data = read_report(report_job.state)
    view = data.resources[MODEL]
    asked = report_job.simulator.stats()["requests"]["chat.completions"]
    assert view.rate_limited > 0  # the simulator admits 2 at once; the runs ask 8
    assert round(sum(view.limited_series), 6) == view.rate_limited == asked.get("429")
    assert view.requests == sum(asked.values()) == round(sum(view.requests_series), 6)
    assert view.retries == data.runs[0].retries + report_job.second.summary.retries
    assert view.paid_calls == data.done  # one paid call a done row (no batching)
    assert (view.rpm, view.learned) == (RPM, False)  # the second run's, given
    assert view.rpm_used is not None and 0 < view.rpm_used < 1
    p50, p99 = view.latency_at(0.5), view.latency_at(0.99)
    assert p50 is not None and p99 is not None and 0 < p50 <= p99
    assert sum(view.latency.values()) == view.requests


def test_the_time_line_lays_runs_end_to_end_and_marks_the_budget_stop(report_job: Job) -> None:
    data = read_report(report_job.state)
    first, second = data.runs
    timeline = data.timeline
    assert timeline.offsets[first.run_id] == 0
    assert timeline.offsets[second.run_id] == timeline.lengths[first.run_id]
    assert sum(data.items_series) == data.done + data.failed
    assert data.cost_series[-1] == max(data.cost_series)
    assert any(pause.kind == "429" for pause in data.pauses)  # the 429s are marked
    labels = [mark.label for mark in data.marks]
    assert labels[:1] == ["run 1"] and "run 2" in labels and "budget_reached" in labels
    budget_line = [b for b in data.budget_series if b is not None]
    assert budget_line and min(budget_line) == max(budget_line)  # one run had a budget
    assert all(workers is None for workers in data.workers_series)  # a fixed count: no line


def test_failures_are_listed_with_a_retry_command(report_job: Job) -> None:
    data = read_report(report_job.state)
    keys = [failure.key for failure in data.failures]
    assert HOSTILE_KEY in keys and len(keys) == data.failed
    assert all(f.cause == "content_filter" and f.attempts == 1 for f in data.failures)
    # The last run typed as a command (the second was a library call), to retry them:
    assert data.retry_command is not None and data.retry_command.startswith("rowpilot run ")
    assert data.retry_command.endswith(" --retry-failed") and "--budget 0.0009" in (
        data.retry_command
    )


def test_a_timeline_maps_moments_inside_their_run() -> None:
    timeline = Timeline()
    timeline.add("a", 1000.0, 10.0)
    timeline.add("b", 5000.0, 5.0)  # a week later, say: no gap in run time
    assert timeline.at("a", 1004.0) == 4.0
    assert timeline.at("b", 5002.0) == 12.0
    assert timeline.at("b", 9999.0) == 15.0  # clamped to the run's end
    assert timeline.at("c", 1.0) is None
    assert timeline.span == 15.0


def test_the_log_reader_reads_only_what_was_appended_and_skips_torn_lines(
    tmp_path: Path,
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "run.jsonl"
    sample = {"ts": 1.0, "event": "run.sample", "run_id": "r", "done": 1}
    retry = {"ts": 2.0, "event": "item.retry", "run_id": "r", "resource": MODEL}
    log.write_text(json.dumps(sample) + "\n" + '{"ts": 3, "event": "run.sa', encoding="utf-8")
    reader = LogReader(logs)
    reader.read()
    assert [e["done"] for e in reader.events["r"]] == [1]
    with log.open("a", encoding="utf-8") as handle:  # the torn line is completed
        handle.write('mple", "run_id": "r", "done": 2}\n' + json.dumps(retry) + "\n")
        handle.write("not json\n")
    reader.read()
    assert [e["done"] for e in reader.events["r"]] == [1, 2]
    assert reader.retries == [("r", 2.0, MODEL)]
    reader.read()  # nothing new: nothing read twice
    assert len(reader.events["r"]) == 2 and len(reader.retries) == 1


def test_a_stored_command_is_redacted_again_for_the_page() -> None:
    from rowpilot.report.data import _redacted

    stored = "rowpilot simulate --api-key sk-abcdefgh1234 --port 0"
    assert _redacted(stored) == "rowpilot simulate --api-key '[REDACTED]' --port 0"
    url = "rowpilot run a.csv --base-url http://user:pa55word-long@host/v1"
    assert "pa55word" not in _redacted(url) and "[REDACTED]@host/v1" in _redacted(url)
    assert _redacted("rowpilot run 'unclosed") == "rowpilot run 'unclosed"  # not shell-split
