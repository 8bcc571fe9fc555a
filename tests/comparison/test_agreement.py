"""The agreement maths of rowpilot.comparison.agreement and the percentile of figures.py:
properties (hypothesis) and the documented boundaries."""

from __future__ import annotations

import math
import string
from enum import Enum

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rowpilot.comparison.agreement import (
    agreement,
    checked_tolerance,
    field_kinds,
    numbers_agree,
    reference_value,
    row_score,
    text_similarity,
)
from rowpilot.comparison.figures import percentile
from rowpilot.errors import ConfigError

finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)


@given(st.text(), st.text())
def test_similarity_is_a_share_and_one_only_for_texts_equal_up_to_case_and_spaces(
    first: str, second: str
) -> None:
    score = text_similarity(first, second)
    assert 0.0 <= score <= 1.0
    same = " ".join(first.casefold().split()) == " ".join(second.casefold().split())
    assert (score == 1.0) is same


@given(st.text(alphabet=string.ascii_letters + string.digits + " ", min_size=1))
def test_case_and_runs_of_spaces_do_not_change_a_text(text: str) -> None:
    assert text_similarity(text, "  " + text.upper().replace(" ", "\t ") + "\n") == 1.0


@given(st.text())
def test_any_text_is_its_case_folded_self(text: str) -> None:
    assert text_similarity(text, text.casefold()) == 1.0


def test_similarity_is_the_normalised_string_ratio() -> None:
    # "NOT " before a 10-letter text: 2 x 10 matching / (10 + 14) characters.
    assert text_similarity("Good movie", "NOT good  MOVIE") == pytest.approx(20 / 24)
    assert text_similarity("abc", "xyz") == 0.0


@given(finite, finite)
def test_numbers_agree_both_ways(first: float, second: float) -> None:
    assert numbers_agree(first, second) is numbers_agree(second, first)


@given(st.floats(min_value=1e-3, max_value=1e9))
def test_numbers_within_one_percent_of_the_larger_agree(value: float) -> None:
    assert numbers_agree(value, value * 1.0099)
    assert not numbers_agree(value, value * 1.0102)


def test_a_contrary_simulated_number_disagrees_below_100_and_agrees_above() -> None:
    assert not numbers_agree(35, 36)  # 2.8%
    assert numbers_agree(150, 151)  # 0.66%


@given(st.floats(min_value=1e-3, max_value=1e9))
def test_a_tolerance_of_a_half_is_within_a_factor_of_two(value: float) -> None:
    assert numbers_agree(value, value * 1.999, 0.5)
    assert not numbers_agree(value, value * 2.001, 0.5)
    assert row_score(value, value * 1.5, "number", 0.5) == 1.0
    assert agreement("n", "number", [(value, value * 3)], 0.5).score == 0.0


@pytest.mark.parametrize("tolerance", [-0.1, math.inf, math.nan])
def test_a_tolerance_is_a_finite_share_at_least_zero(tolerance: float) -> None:
    with pytest.raises(ConfigError, match="not a relative tolerance"):
        checked_tolerance(tolerance)
    assert checked_tolerance(0.0) == 0.0


@given(st.lists(st.tuples(st.none() | st.booleans(), st.none() | st.booleans())))
def test_exact_agreement_is_the_share_of_equal_pairs_both_present(
    pairs: list[tuple[bool | None, bool | None]],
) -> None:
    found = agreement("flag", "exact", pairs)
    both = [(a, b) for a, b in pairs if a is not None and b is not None]
    assert found.compared == len(both)
    if both:
        expected = sum(a == b for a, b in both) / len(both)
        assert found.score == pytest.approx(expected)
        assert found.equal == found.score
    else:
        assert found.score is None and found.equal is None


@given(st.lists(st.tuples(st.text(), st.text()), min_size=1))
def test_text_agreement_is_the_mean_similarity(pairs: list[tuple[str, str]]) -> None:
    found = agreement("note", "text", pairs)
    scores = [text_similarity(a, b) for a, b in pairs]
    assert found.score == pytest.approx(math.fsum(scores) / len(scores))
    assert found.equal == sum(score == 1.0 for score in scores) / len(scores)


def test_values_compare_by_kind() -> None:
    assert row_score(3, 3.0, "exact") == 1.0
    assert row_score(["a", "b"], ["a", "b"], "exact") == 1.0
    assert row_score({"x": 1}, {"x": 2}, "exact") == 0.0
    assert row_score(True, 1, "exact") == 0.0  # a boolean is not the number 1
    assert row_score(100, 100.5, "number") == 1.0
    assert row_score("100", 100, "number") == 0.0  # not a number: compared exactly


@pytest.mark.parametrize(
    ("cell", "kind", "like", "read"),
    [
        (" TRUE ", "exact", False, True),
        ("no", "exact", True, False),
        ("0", "exact", True, False),
        ("maybe", "exact", True, "maybe"),
        ("12.5", "number", 3, 12.5),
        ("n/a", "number", 3, "n/a"),
        (" pos ", "exact", "neg", "pos"),
        ("", "exact", "neg", None),
        (None, "text", "x", None),
        (float("nan"), "number", 1, None),
        (7, "number", 1, 7),
    ],
)
def test_a_reference_cell_is_read_as_the_fields_type(
    cell: object, kind: str, like: object, read: object
) -> None:
    assert reference_value(cell, kind, like) == read  # type: ignore[arg-type]


class Mood(Enum):
    POS = "pos"
    NEG = "neg"


class Answer(pydantic.BaseModel):
    mood: Mood
    maybe_mood: Mood | None
    score: int
    ratio: float
    note: str
    flag: bool
    tags: list[str]


def test_field_kinds_follow_refs_and_optional_branches() -> None:
    names = list(Answer.model_fields)
    assert field_kinds(Answer.model_json_schema(), names) == {
        "mood": "exact",
        "maybe_mood": "exact",
        "score": "number",
        "ratio": "number",
        "note": "text",
        "flag": "exact",
        "tags": "exact",
    }


@given(st.lists(finite, min_size=1), st.floats(min_value=0.0, max_value=1.0))
def test_the_nearest_rank_percentile_has_at_least_its_share_at_or_below(
    values: list[float], share: float
) -> None:
    ordered = sorted(values)
    found = percentile(ordered, share)
    assert found in ordered
    assert sum(v <= found for v in ordered) >= share * len(ordered)
    smaller = [v for v in ordered if v < found]
    assert len(smaller) < max(1, math.ceil(share * len(ordered)))


def test_no_calls_have_no_percentile() -> None:
    assert percentile([], 0.5) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.95) == 4.0
