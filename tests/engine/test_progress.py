"""The progress views render every state a run can be in, known total or not."""

from __future__ import annotations

import io
import time

import pytest
from rich.console import Console

from rowpilot.engine.progress import Counters, PlainProgress, RichProgress


@pytest.mark.parametrize("total", [None, 0, 1_000])
def test_rich_bar_renders_with_and_without_a_known_total(total: int | None) -> None:
    out = io.StringIO()
    view = RichProgress(Console(file=out, force_terminal=True, width=120))
    counters = Counters(total=total, started_at=time.monotonic())
    view.start(counters)
    counters.done, counters.failed, counters.skipped = 7, 2, 1
    view.refresh(counters)
    view.stop(counters)
    text = out.getvalue()
    assert "ok 7" in text
    assert "failed 2" in text
    assert (f"10/{total:,}" if total is not None else "10") in text


def test_a_note_is_one_line_above_the_progress_in_either_view() -> None:
    note = "shard 2/4: pacing at 1/4 of each provider limit [as] *written*"
    plain = io.StringIO()
    PlainProgress(plain, interval=3600).note(note)
    assert plain.getvalue() == note + "\n"
    out = io.StringIO()
    view = RichProgress(Console(file=out, force_terminal=True, width=200))
    counters = Counters(total=3, started_at=time.monotonic())
    view.start(counters)
    view.note(note)
    view.stop(counters)
    assert note in out.getvalue()  # no markup read into it


def test_plain_lines_say_done_of_total_and_stay_silent_after_an_error() -> None:
    out = io.StringIO()
    view = PlainProgress(out, interval=3600)
    counters = Counters(total=5, done=5, started_at=time.monotonic())
    view.start(counters)
    view.refresh(counters)
    assert out.getvalue() == ""  # not yet time for a line
    view.stop(counters, final=False)
    assert out.getvalue() == ""
    view.stop(counters)
    assert out.getvalue().startswith("progress 5/5  ok 5")
