"""Tests for rowpilot.llm.tokens: the calibrated estimate and the hard upper bound."""

from __future__ import annotations

import asyncio
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rowpilot.llm.providers import ChatClient, ProviderSpec
from rowpilot.llm.tokens import TokenEstimator, upper_bound_tokens
from rowpilot.simulator.server import Simulator, SimulatorConfig

KEY = "sk-" + "tokens-test"


def test_the_initial_estimate_uses_the_given_ratio() -> None:
    estimator = TokenEstimator(chars_per_token=3.0, per_message=4)
    assert estimator.chars_per_token == 3.0
    assert estimator.estimate(300) == math.ceil(100 * 1.02) + 4
    assert estimator.estimate(300, messages=3) == math.ceil(100 * 1.02) + 12
    assert estimator.estimate(0, messages=0) == 0


@pytest.mark.parametrize("ratio", [0.0, -1.0, math.nan, math.inf])
def test_the_ratio_must_be_positive(ratio: float) -> None:
    with pytest.raises(ValueError, match="chars_per_token"):
        TokenEstimator(chars_per_token=ratio)


def test_observations_fit_the_ratio() -> None:
    estimator = TokenEstimator()
    for chars in (1000, 2400, 800, 4000):
        estimator.observe(chars, 1, chars // 4 + 4)  # 4 characters a token, 4 of framing
    assert estimator.chars_per_token == pytest.approx(4.0)
    assert estimator.estimate(2000) == math.ceil(500 * 1.02) + 4


def test_nonsense_observations_are_ignored() -> None:
    estimator = TokenEstimator()
    for chars, messages, tokens in [(1000, 1, 0), (1000, 1, -5), (0, 1, 10), (10, 1, 3)]:
        estimator.observe(chars, messages, tokens)
    assert estimator.chars_per_token == 3.0


@pytest.mark.parametrize(("chars", "tokens", "ratio"), [(1000, 100_000, 0.5), (1_000_000, 5, 10.0)])
def test_the_ratio_is_clamped(chars: int, tokens: int, ratio: float) -> None:
    estimator = TokenEstimator()
    estimator.observe(chars, 1, tokens)
    assert estimator.chars_per_token == ratio


def test_recent_observations_weigh_more() -> None:
    estimator = TokenEstimator()
    for _ in range(50):
        estimator.observe(2000, 1, 1000 + 4)  # 2 characters a token
    for _ in range(60):
        estimator.observe(2000, 1, 400 + 4)  # then 5
    assert 4.5 < estimator.chars_per_token <= 5.0  # plain totals would say 3


@given(
    ratio=st.floats(1.0, 8.0),
    framing=st.integers(0, 4),
    sizes=st.lists(st.integers(2000, 20_000), min_size=3, max_size=30),
)
def test_estimates_converge_a_little_high(ratio: float, framing: int, sizes: list[int]) -> None:
    """After a few requests of a provider that counts ``ceil(chars / ratio)`` + framing."""
    estimator = TokenEstimator()

    def real(chars: int) -> int:
        return math.ceil(chars / ratio) + framing

    for chars in sizes:
        estimator.observe(chars, 1, real(chars))
    for chars in sizes:
        estimate = estimator.estimate(chars)
        assert real(chars) <= estimate <= real(chars) * 1.05 + 4


@given(st.lists(st.tuples(st.integers(-5, 10**6), st.integers(-2, 50), st.integers(-5, 10**6))))
def test_any_observations_keep_the_ratio_sane(observations: list[tuple[int, int, int]]) -> None:
    estimator = TokenEstimator()
    for chars, messages, tokens in observations:
        estimator.observe(chars, messages, tokens)
    assert 0.5 <= estimator.chars_per_token <= 10.0
    assert estimator.estimate(1000, 2) >= 8


@given(st.lists(st.text(max_size=200), max_size=8))
def test_a_fresh_estimate_stays_under_the_upper_bound(texts: list[str]) -> None:
    chars = sum(len(text) for text in texts)
    assert TokenEstimator().estimate(chars, len(texts)) <= upper_bound_tokens(texts)


@given(st.lists(st.text(max_size=200), max_size=8))
def test_the_upper_bound_covers_every_byte(texts: list[str]) -> None:
    """A byte-level BPE token covers at least one byte; the simulator's count is below too."""
    bound = upper_bound_tokens(texts)
    assert bound >= sum(len(text.encode("utf-8", "surrogatepass")) for text in texts)
    assert bound >= math.ceil(sum(len(text) for text in texts) / 4)


def test_the_upper_bound_counts_bytes_and_framing() -> None:
    assert upper_bound_tokens([]) == 3
    assert upper_bound_tokens(["abc", "é"]) == 3 + 2 + 2 * 8 + 3


def random_prompt(rng: random.Random) -> str:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    text = ""
    target = rng.randint(1000, 3000)
    while len(text) < target:
        text += rng.choice(words) + rng.choice([" ", ", ", ". "])
    return text


def test_the_estimator_converges_to_the_simulator_count() -> None:
    async def go(sim: Simulator) -> tuple[TokenEstimator, list[tuple[int, int]]]:
        spec = ProviderSpec("sim", "openai", sim.openai_base_url, None)
        client = ChatClient(spec, "gpt-4o-mini", api_key=KEY)
        estimator = TokenEstimator()
        rng = random.Random(7)
        checks: list[tuple[int, int]] = []
        try:
            for number in range(24):
                prompt = random_prompt(rng)
                estimate = estimator.estimate(len(prompt))
                completion = await client.complete(
                    [{"role": "user", "content": prompt}], max_tokens=8
                )
                estimator.observe(len(prompt), 1, completion.input_tokens)
                if number >= 4:
                    checks.append((estimate, completion.input_tokens))
        finally:
            await client.aclose()
        return estimator, checks

    with Simulator(SimulatorConfig(api_key=KEY)) as sim:
        estimator, checks = asyncio.run(go(sim))
    # The simulator counts ceil(characters / 4) with no framing; the fitted ratio absorbs
    # the 4 tokens per message the estimator adds, so it sits a little above 4.
    assert 4.0 <= estimator.chars_per_token <= 4.1
    for estimate, real in checks:
        assert real <= estimate <= real * 1.05
