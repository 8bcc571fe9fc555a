"""The stable sample: the rows with the smallest key hashes, whatever the rows' order."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rowpilot.comparison.sample import SampleSource, stable_sample
from rowpilot.engine.items import Keyer, Selection
from rowpilot.errors import ConfigError
from rowpilot.sources.registry import open_source

keys = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=60, unique=True)


def documented_order(key: str) -> tuple[int, str]:
    """blake2b-64 of the key, little-endian, top bit dropped; then the key."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1, key


def sampled_keys(rows: list[dict[str, str]], size: int, key: str | None = "id") -> list[str]:
    source = open_source(rows)
    keyer = Keyer(source, key)
    sample = stable_sample(source, keyer, Selection(), size)
    return [keyer.item(row).key for row in sample.rows]


@given(keys, st.randoms(use_true_random=False), st.integers(min_value=1, max_value=60))
def test_the_sample_is_the_smallest_key_hashes_in_any_order(
    names: list[str], rng: object, size: int
) -> None:
    size = min(size, len(names))
    rows = [{"id": name, "text": f"t{i}"} for i, name in enumerate(names)]
    shuffled = list(rows)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    expected = sorted(sorted(names, key=documented_order)[:size])
    assert sorted(sampled_keys(rows, size)) == expected
    assert sorted(sampled_keys(shuffled, size)) == expected


def test_the_sample_keeps_source_order_row_numbers_and_lines() -> None:
    rows = [{"id": f"k{i}", "text": f"t{i}"} for i in range(40)]
    source = open_source(rows)
    keyer = Keyer(source, None)  # keyed by row number: the numbers must survive
    sample = stable_sample(source, keyer, Selection(), 10)
    assert sample.total == 40
    seqs = [seq for seq, _, _ in sample.rows]
    assert seqs == sorted(seqs)
    assert sorted(map(str, seqs)) == sorted(sorted(map(str, range(40)), key=documented_order)[:10])
    again = SampleSource(source, sample)
    read = [row for chunk in again.chunks(3) for row in chunk]
    assert read == list(sample.rows)
    assert [fields["id"] for _, _, fields in read] == [f"k{seq}" for seq in seqs]
    assert open_source(again) is again  # a Source goes through as it is


def test_a_repeated_key_counts_once() -> None:
    rows = [{"id": "a"}, {"id": "b"}, {"id": "a"}]
    source = open_source(rows)
    sample = stable_sample(source, Keyer(source, "id"), Selection(), 2)
    assert sample.total == 2
    assert sorted(fields["id"] for _, _, fields in sample.rows) == ["a", "b"]
    assert [seq for seq, _, _ in sample.rows] == [0, 1]


def test_the_selection_applies_first() -> None:
    rows = [{"id": f"k{i}"} for i in range(30)]
    source = open_source(rows)
    sample = stable_sample(source, Keyer(source, "id"), Selection(rows=(10, 20)), 10)
    assert sorted(seq for seq, _, _ in sample.rows) == list(range(10, 20))


@pytest.mark.parametrize("size", [0, 4])
def test_a_sample_the_data_cannot_fill_is_an_error(size: int) -> None:
    source = open_source([{"id": "a"}, {"id": "b"}, {"id": "c"}])
    with pytest.raises(ConfigError) as raised:
        stable_sample(source, Keyer(source, "id"), Selection(), size)
    said = str(raised.value)
    assert ("more rows than the data has (3)" in said) if size else ("not a positive" in said)
