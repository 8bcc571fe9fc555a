"""Tests for rowpilot.llm.accounting: what a provider's remaining tokens say of its rule.

The evidence is fed a provider's bucket step by step, as a resource would between two
answers; end to end (a resource learning against a provider, on virtual time, and the
simulator over HTTP) is in test_limits.py and test_llm.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rowpilot.llm.accounting import EVIDENCE_ANSWERS, MAX_ANSWERS, Evidence, Verdict

LIMIT = 300_000.0  # per minute: 5,000 a second
STEP = 0.05  # seconds between answers: 250 tokens of refill
TYPICAL = 250.0


def feed(
    evidence: Evidence,
    answers: int,
    *,
    gives_back: bool,
    level: float = 2000.0,
    most: float = 5000.0,
    unused: float = 41.0,
    noise: list[float] | None = None,
) -> list[Verdict]:
    """``answers`` answers of a provider whose bucket neither fills nor empties: each step
    refills 250 tokens and the client sends what the provider will finally have counted,
    250 (the provider gives the ``unused`` max_tokens back, or not: then the client sends
    that much more). ``most`` is reported first, as a bucket that started full.
    ``noise``: each report's error, in tokens."""
    verdicts = []
    now = 0.0
    refill = LIMIT / 60 * STEP
    assert evidence.observe(most, LIMIT, now, TYPICAL) is None
    for number in range(answers):
        now += STEP
        sent = refill + (unused if gives_back else 0.0)
        evidence.spent += sent
        evidence.unused += unused
        level += refill - sent + (unused if gives_back else 0.0)
        error = noise[number % len(noise)] if noise else 0.0
        verdict = evidence.observe(level + error, LIMIT, now, TYPICAL)
        if verdict is not None:
            verdicts.append(verdict)
    return verdicts


@pytest.mark.parametrize(("gives_back", "rule"), [(True, "usage"), (False, "admission")])
def test_the_verdict_follows_what_the_provider_gave_back(gives_back: bool, rule: str) -> None:
    verdicts = feed(Evidence(), 2 * EVIDENCE_ANSWERS + 1, gives_back=gives_back)  # 1: the opening
    assert [verdict.rule for verdict in verdicts] == [rule, rule]
    first = verdicts[0]
    assert first.answers == EVIDENCE_ANSWERS
    assert first.unused == pytest.approx(41 * EVIDENCE_ANSWERS)
    assert "over 32 answers whose unused max_tokens averaged 41" in first.evidence()


def test_a_full_bucket_tells_nothing() -> None:
    """Every report at the most the bucket held: the refill and what came back are lost."""
    verdicts = feed(Evidence(), 4 * EVIDENCE_ANSWERS, gives_back=True, level=5000.0)
    assert verdicts == []


def test_answers_that_use_their_max_tokens_give_no_verdict() -> None:
    """Nothing unused: the two rules charge the same, so there is nothing to tell apart,
    and the evidence starts again after MAX_ANSWERS."""
    evidence = Evidence()
    # The first answer after the full bucket tells nothing: MAX_ANSWERS more after it.
    assert feed(evidence, MAX_ANSWERS + 1, gives_back=True, unused=0.0) == []
    assert evidence._answers == 0


@given(st.lists(st.floats(-300, 300), min_size=1, max_size=20), st.booleans())
def test_timing_noise_of_the_reports_cancels_out(noise: list[float], gives_back: bool) -> None:
    """Each report off by up to about a call (when it was read against when it was sent):
    the sum over the answers telescopes, so only the two ends' errors remain, and the
    verdict still follows the provider."""
    verdicts = feed(Evidence(), 4 * EVIDENCE_ANSWERS, gives_back=gives_back, noise=noise)
    assert verdicts
    assert {verdict.rule for verdict in verdicts} == {"usage" if gives_back else "admission"}
