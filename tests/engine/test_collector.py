"""engine/_collector.py: the cyclic collector is spaced out while a job runs, and put back."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import rowpilot
from rowpilot.engine._collector import RUN_THRESHOLD, collections_spaced


@pytest.fixture(autouse=True)
def default_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*before)


def test_the_young_threshold_is_raised_in_the_block_and_put_back_after() -> None:
    with collections_spaced():
        assert gc.get_threshold() == (RUN_THRESHOLD, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)


def test_the_thresholds_are_put_back_after_an_error() -> None:
    with pytest.raises(ValueError, match="the run failed"), collections_spaced():
        raise ValueError("the run failed")
    assert gc.get_threshold() == (700, 10, 10)


def test_a_higher_threshold_is_kept_and_a_change_made_meanwhile_stays() -> None:
    gc.set_threshold(90_000, 5, 5)
    with collections_spaced():
        assert gc.get_threshold() == (90_000, 5, 5)
    assert gc.get_threshold() == (90_000, 5, 5)
    gc.set_threshold(700, 10, 10)
    with collections_spaced():
        gc.set_threshold(1_000, 1, 1)  # the program's own choice, made during the run
    assert gc.get_threshold() == (1_000, 1, 1)


def threshold_in_the_task(row: dict[str, Any]) -> dict[str, Any]:
    return {"young": gc.get_threshold()[0]}


def test_a_run_spaces_collections_while_it_runs_and_not_after(tmp_path: Path) -> None:
    rows = [{"id": "a"}, {"id": "b"}]
    result = rowpilot.run(threshold_in_the_task, rows, key="id", state=tmp_path / "state")
    assert {record.output["young"] for record in result if record.output} == {RUN_THRESHOLD}
    assert gc.get_threshold() == (700, 10, 10)
