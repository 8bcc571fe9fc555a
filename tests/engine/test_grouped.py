"""engine/grouped.py: a group's outcomes, built at once, land on their own rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rowpilot.engine.grouped import group_outcomes
from rowpilot.engine.items import Item, encode_items
from rowpilot.state.registry import Registry


def stored_row(item: Item, output: str, vectors: bytes | None) -> tuple[Any, ...]:
    """The columns the test reads, as a done row of the group should hold them."""
    key, seq, fingerprint, given = item.key, item.seq, item.fingerprint, item.input_json
    return (key, seq, fingerprint, given, "done", 1, output, None, None, 10.0, 0.25, "run-7",
            0.0, 0, "v1", vectors)  # fmt: skip


def vectors_of(registry: Registry, run_id: str, at: int | None, length: int | None) -> bytes | None:
    return None if at is None or length is None else registry.vector_files.read(run_id, at, length)


def test_each_row_of_a_group_gets_its_own_outcome_in_the_registry(tmp_path: Path) -> None:
    group = [Item(seq, seq + 2, f"k{seq}", {"id": f"k{seq}", "n": str(seq)}) for seq in range(5)]
    encode_items(group, "v1")
    outputs = [(f'{{"n":{seq}}}', bytes([seq]) * 4 if seq % 2 else None) for seq in range(5)]
    outcomes = group_outcomes(group, outputs, 10.0, 0.25, "run-7", "v1")
    registry = Registry(tmp_path / "state")
    try:
        registry.commit(outcomes)
        stored = registry.db().execute(
            "SELECT key, seq, fingerprint, input, status, attempts, output, error, cause,"
            " started_at, task_seconds, run_id, cost_usd, calls, task_version, vector_at,"
            " vector_len FROM items ORDER BY seq"
        )
        rows = [(*row[:-2], vectors_of(registry, row[11], *row[-2:])) for row in stored]
    finally:
        registry.close()
    expected = [
        stored_row(item, output, vectors)
        for item, (output, vectors) in zip(group, outputs, strict=True)
    ]
    assert rows == expected
    assert len({outcome.finished_at for outcome in outcomes}) == 1


def test_a_group_with_an_output_missing_is_an_error_not_a_shifted_row() -> None:
    group = [Item(seq, None, f"k{seq}", {"id": f"k{seq}"}) for seq in range(3)]
    with pytest.raises(ValueError, match="3 rows came back with 2 outputs"):
        group_outcomes(group, [("{}", None)] * 2, 0.0, 0.0, "run", "v1")
