"""Tests for rowpilot.llm.cost: offline price lookup, overrides, cost arithmetic, the budget."""

from __future__ import annotations

import asyncio
import math
import re
import socket
import subprocess
import sys
import textwrap
import threading
import tomllib
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from genai_prices import Usage, calc_price
from genai_prices.data_snapshot import DataSnapshot, set_custom_snapshot
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

import rowpilot.llm.cost as cost_module
from rowpilot.errors import ConfigError
from rowpilot.llm.cost import (
    Budget,
    Price,
    PriceTier,
    Reservation,
    cost_usd,
    find_price,
    format_usd,
    parse_price_overrides,
    worst_case_cost,
)

# -- lookup: real genai-prices data, bundled with the package -------------------------------


@pytest.mark.parametrize(
    ("provider", "model", "found_under", "rates"),
    [
        ("openai", "gpt-4o-mini", "openai/gpt-4o-mini", (0.15, 0.6, 0.075)),
        ("openai", "gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini", (0.15, 0.6, 0.075)),
        ("anthropic", "claude-haiku-4-5", "anthropic/claude-haiku-4-5", (1.0, 5.0, 0.1)),
        ("anthropic", "claude-haiku-4-5-20251001", "anthropic/claude-haiku-4-5", (1.0, 5.0, 0.1)),
        ("openrouter", "openai/gpt-4o-mini", "openrouter/openai/gpt-4o-mini", (0.15, 0.6, 0.075)),
        (
            "openrouter",
            "meta-llama/llama-3.1-8b-instruct",
            "openrouter/meta-llama/llama-3.1-8b-instruct",
            (0.05, 0.08, 0.025),
        ),
        (
            "together",
            "meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "together/meta-llama/Llama-3.3-70B-Instruct-Turbo",
            (0.88, 0.88, None),
        ),
        ("groq", "llama-3.1-8b-instant", "groq/llama-3.1-8b-instant", (0.05, 0.08, None)),
        # A provider genai-prices does not know: priced by the model name alone.
        ("simulator", "gpt-4o-mini", "openai/gpt-4o-mini", (0.15, 0.6, 0.075)),
        ("my-vllm", "claude-haiku-4-5", "anthropic/claude-haiku-4-5", (1.0, 5.0, 0.1)),
        # genai-prices cannot tell the vendor of an embedding model; the vendor lists can.
        ("simulator", "text-embedding-3-small", "openai/text-embedding-3-small", (0.02, 0.0, None)),
    ],
)
def test_known_models_resolve(
    provider: str, model: str, found_under: str, rates: tuple[float, float, float | None]
) -> None:
    price = find_price(provider, model)
    assert price is not None
    assert (price.input, price.output, price.cached_input) == rates
    assert price.source == "genai-prices"
    assert price.model == found_under
    assert price.tiers == ()


def test_every_simulator_model_has_a_price() -> None:
    from rowpilot.simulator.server import DEFAULT_MODELS

    assert [model for model in DEFAULT_MODELS if find_price("sim", model) is None] == []


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "no-such-model"),  # a known provider without it: no guessing elsewhere
        ("anthropic", "gpt-4o-mini"),
        ("ollama", "llama3.1:8b"),
        ("simulator", "my-finetune"),
        ("simulator", ""),
    ],
)
def test_unknown_models_have_no_price(provider: str, model: str) -> None:
    assert find_price(provider, model) is None


def test_prompt_size_tiers_are_kept() -> None:
    price = find_price("anthropic", "claude-sonnet-4-5")
    assert price is not None
    assert (price.input, price.output, price.cached_input) == (3.0, 15.0, 0.3)
    assert price.tiers == (PriceTier(above=200_000, input=6.0, output=22.5, cached_input=0.6),)


def test_peak_hours_are_priced_at_the_peak_rate_at_any_hour(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # deepseek-chat: $0.27/$1.10 from 00:30 to 16:30 UTC, half that off-peak.
    class OffPeak(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> OffPeak:
            return cls(2026, 11, 23, 20, 0, tzinfo=UTC)

    monkeypatch.setattr(cost_module, "datetime", OffPeak)
    price = find_price("deepseek", "deepseek-chat")
    assert price is not None
    assert (price.input, price.output, price.cached_input) == (0.27, 1.1, 0.07)


def test_overrides_win() -> None:
    overrides = {
        "openai/gpt-4o-mini": Price(1.0, 2.0, source="override", model="openai/gpt-4o-mini"),
        "gpt-4o-mini": Price(3.0, 4.0, source="override", model="gpt-4o-mini"),
        "local-llama": Price(0.0, 0.0, source="override", model="local-llama"),
    }
    assert find_price("openai", "gpt-4o-mini", overrides) == overrides["openai/gpt-4o-mini"]
    assert find_price("simulator", "gpt-4o-mini", overrides) == overrides["gpt-4o-mini"]
    assert find_price("ollama", "local-llama", overrides) == overrides["local-llama"]
    # Without a matching override, genai-prices still answers.
    found = find_price("anthropic", "claude-haiku-4-5", overrides)
    assert found is not None
    assert found.source == "genai-prices"


def test_prices_another_library_fetched_do_not_leak_in() -> None:
    # UpdatePrices (started by any library in the process) installs its download like this.
    set_custom_snapshot(DataSnapshot(providers=[], from_auto_update=True))
    try:
        price = find_price("openai", "gpt-4o-mini")
    finally:
        set_custom_snapshot(None)
    assert price is not None
    assert price.input == 0.15


# -- offline: the lookup never reaches for the network --------------------------------------


def _no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"network access: {args!r}")


def test_lookup_works_with_the_network_blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)
    monkeypatch.setattr(socket, "getaddrinfo", _no_network)
    with pytest.raises(AssertionError, match="network access"):
        socket.create_connection(("raw.githubusercontent.com", 443))  # the block holds
    cost_module._snapshot.cache_clear()  # rebuild the snapshot under the block too
    try:
        assert find_price("openai", "gpt-4o-mini") is not None
        assert find_price("anthropic", "claude-haiku-4-5") is not None
        assert find_price("openrouter", "openai/gpt-4o-mini") is not None
        assert find_price("simulator", "gpt-4o-mini") is not None
        assert find_price("simulator", "no-such-model") is None
    finally:
        cost_module._snapshot.cache_clear()
    # genai-prices' only network path is its UpdatePrices thread: it never started.
    assert "genai_prices:update" not in {thread.name for thread in threading.enumerate()}


def test_a_fresh_interpreter_imports_and_looks_up_without_the_network() -> None:
    # From the first import on: nothing at import time may fetch either.
    script = textwrap.dedent(
        """
        import socket

        def refuse(*args, **kwargs):
            raise SystemExit(f"network access: {args!r}")

        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse

        from rowpilot.llm.cost import find_price

        print(find_price("openai", "gpt-4o-mini").input)
        print(find_price("anthropic", "claude-haiku-4-5").output)
        print(find_price("openrouter", "anthropic/claude-haiku-4.5").input)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0.15", "5.0", "1.0"]


# -- overrides from the job file ------------------------------------------------------------


def test_good_overrides_parse() -> None:
    document = tomllib.loads(
        """
        [prices."openai/gpt-4o-mini"]
        input = 0.15
        output = 0.60

        [prices.local-llama]
        input = 0
        output = 0
        cached_input = 0
        """
    )
    assert parse_price_overrides(document["prices"]) == {
        "openai/gpt-4o-mini": Price(0.15, 0.6, None, "override", "openai/gpt-4o-mini"),
        "local-llama": Price(0.0, 0.0, 0.0, "override", "local-llama"),
    }
    assert parse_price_overrides({}) == {}


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"input": -0.1, "output": 0.6}, "input must be a finite number >= 0"),
        ({"input": 0.1, "output": 0.6, "cached_input": -1}, "cached_input must be"),
        ({"input": 0.15}, "no output price"),
        ({"output": 0.6}, "no input price"),
        ({"input": "0.15", "output": 0.6}, "input must be a number, not '0.15'"),
        ({"input": True, "output": 0.6}, "input must be a number"),
        ({"input": 0.15, "output": math.nan}, "output must be a finite number"),
        ({"input": 0.15, "output": math.inf}, "output must be a finite number"),
        ({"input": 0.15, "output": 0.6, "currency": "EUR"}, "unknown setting 'currency'"),
        (0.15, "must be a table"),
    ],
)
def test_bad_overrides_name_the_entry(entry: Any, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_price_overrides({"ok-model": {"input": 1, "output": 2}, "openai/gpt-4o": entry})
    assert 'prices."openai/gpt-4o"' in caught.value.message
    assert says in caught.value.message
    assert caught.value.hint


def test_an_unquoted_dotted_name_gets_a_hint_to_quote_it() -> None:
    document = tomllib.loads("[prices.gpt-4.1]\ninput = 2\noutput = 8\n")
    with pytest.raises(ConfigError) as caught:
        parse_price_overrides(document["prices"])
    assert caught.value.hint is not None
    assert '[prices."gpt-4.1"]' in caught.value.hint


@pytest.mark.parametrize("name", ["", "  ", "openai/", "/gpt-4o"])
def test_an_override_needs_a_model_name(name: str) -> None:
    with pytest.raises(ConfigError, match="needs a model name"):
        parse_price_overrides({name: {"input": 1, "output": 2}})


def test_the_prices_table_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match=r"\[prices\] must be a table"):
        parse_price_overrides(["openai/gpt-4o-mini"])  # type: ignore[arg-type]


# -- cost arithmetic ------------------------------------------------------------------------

MINI = Price(input=0.15, output=0.60, cached_input=0.075)
TIERED = Price(
    input=3.0,
    output=15.0,
    cached_input=0.3,
    tiers=(PriceTier(above=200_000, input=6.0, output=22.5, cached_input=0.6),),
)


def test_cost_by_hand() -> None:
    # 1000 x 0.15 / 1e6 + 500 x 0.60 / 1e6 = 0.00015 + 0.0003
    assert cost_usd(MINI, 1000, 500) == 0.00045
    # 800 uncached x 0.15 + 200 cached x 0.075 + 500 x 0.60, per million
    assert cost_usd(MINI, 1000, 500, cached_input_tokens=200) == 0.000435
    assert cost_usd(MINI, 1_000_000, 1_000_000) == 0.75
    assert cost_usd(MINI, 0, 0) == 0.0
    # No cached rate: cached tokens pay the input rate.
    assert cost_usd(Price(1.0, 2.0), 1000, 0, cached_input_tokens=1000) == 0.001
    assert cost_usd(None, 1000, 500) == 0.0


def test_cost_of_a_tiered_price_takes_the_tier_for_the_whole_call() -> None:
    assert cost_usd(TIERED, 200_000, 1000) == 0.615  # 0.6 + 0.015
    assert cost_usd(TIERED, 200_001, 1000) == 1.222506  # 1.200006 + 0.0225


@pytest.mark.parametrize(
    ("provider", "model", "tokens"),
    [
        ("openai", "gpt-4o-mini", (12_345, 678, 1000)),
        ("anthropic", "claude-haiku-4-5", (5000, 300, 4000)),
        ("anthropic", "claude-sonnet-4-5", (150_000, 4000, 0)),
        ("anthropic", "claude-sonnet-4-5", (250_000, 4000, 100_000)),
        ("anthropic", "claude-haiku-5-5", (100_001, 20_000, 50_000)),
        ("google", "gemini-2.5-pro", (300_000, 8000, 0)),
    ],
)
def test_cost_agrees_with_genai_prices(
    provider: str, model: str, tokens: tuple[int, int, int]
) -> None:
    input_tokens, output_tokens, cached = tokens
    price = find_price(provider, model)
    expected = calc_price(
        Usage(input_tokens=input_tokens, output_tokens=output_tokens, cache_read_tokens=cached),
        model,
        provider_id=provider,
    ).total_price
    assert Decimal(repr(cost_usd(price, input_tokens, output_tokens, cached))) == expected


def test_worst_case_by_hand() -> None:
    assert worst_case_cost(MINI, 1000, 500) == 0.00045
    assert worst_case_cost(None, 1000, 500) == 0.0
    # A bound past the threshold reserves the tier's rates; one at it, the base rates.
    assert worst_case_cost(TIERED, 200_000, 1000) == 0.615
    assert worst_case_cost(TIERED, 200_001, 1000) == 1.222506
    # A cached rate above the input rate would make "nothing cached" no bound: take the max.
    assert worst_case_cost(Price(1.0, 0.0, cached_input=2.0), 1000, 0) == 0.002


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_counts_must_be_whole_numbers(bad: Any) -> None:
    with pytest.raises(ValueError, match="whole number"):
        cost_usd(MINI, bad, 0)
    with pytest.raises(ValueError, match="whole number"):
        worst_case_cost(MINI, 0, bad)


def test_cached_tokens_are_part_of_the_input() -> None:
    with pytest.raises(ValueError, match="part of input_tokens"):
        cost_usd(MINI, 100, 0, cached_input_tokens=101)


def test_a_price_cannot_be_negative() -> None:
    with pytest.raises(ValueError, match="finite number"):
        Price(-1.0, 1.0)
    with pytest.raises(ValueError, match="ascending"):
        Price(1.0, 1.0, tiers=(PriceTier(10, 1, 1), PriceTier(5, 1, 1)))


rates = st.floats(0, 100, allow_nan=False, allow_infinity=False)
prices = st.builds(
    Price,
    input=rates,
    output=rates,
    cached_input=st.none() | rates,
    tiers=st.lists(
        st.builds(PriceTier, st.integers(0, 10**6), rates, rates, st.none() | rates),
        max_size=3,
        unique_by=lambda tier: tier.above,
    ).map(lambda tiers: tuple(sorted(tiers, key=lambda tier: tier.above))),
)


@given(
    price=prices,
    bound=st.integers(0, 2_000_000),
    max_tokens=st.integers(0, 200_000),
    data=st.data(),
)
def test_no_call_costs_more_than_its_worst_case(
    price: Price, bound: int, max_tokens: int, data: st.DataObject
) -> None:
    input_tokens = data.draw(st.integers(0, bound))
    output_tokens = data.draw(st.integers(0, max_tokens))
    cached = data.draw(st.integers(0, input_tokens))
    actual = cost_usd(price, input_tokens, output_tokens, cached)
    assert 0.0 <= actual <= worst_case_cost(price, bound, max_tokens)


def test_format_usd() -> None:
    assert format_usd(0) == "$0.00"
    assert format_usd(0.42) == "$0.42"
    assert format_usd(1234.5) == "$1,234.50"
    assert format_usd(0.00042) == "$0.00042"
    assert format_usd(0.0000421) == "$0.000042"


# -- the budget -----------------------------------------------------------------------------


def test_reserve_settle_release() -> None:
    budget = Budget(1.0)
    first = budget.reserve(0.4)
    second = budget.reserve(0.4)
    assert first is not None
    assert second is not None
    assert (budget.spent, budget.reserved, budget.remaining) == (0.0, 0.8, 0.2)
    assert budget.reserve(0.3) is None
    budget.settle(first, 0.25)
    budget.release(second)
    assert (budget.spent, budget.reserved, budget.remaining) == (0.25, 0.0, 0.75)
    assert budget.describe() == "$0.25 of $1.00"
    assert budget.overshoot_usd == 0.0


def test_settle_and_release_twice_do_nothing() -> None:
    budget = Budget(1.0)
    held = budget.reserve(0.5)
    assert held is not None
    budget.settle(held, 0.3)
    budget.settle(held, 0.3)
    budget.release(held)
    assert (budget.spent, budget.reserved) == (0.3, 0.0)
    freed = budget.reserve(0.5)
    assert freed is not None
    budget.release(freed)
    budget.release(freed)
    budget.settle(freed, 0.5)
    assert (budget.spent, budget.reserved) == (0.3, 0.0)


def test_a_reservation_belongs_to_its_budget() -> None:
    mine, other = Budget(1.0), Budget(1.0)
    held = other.reserve(0.5)
    assert held is not None
    mine.settle(held, 0.5)
    assert mine.spent == 0.0
    assert other.reserved == 0.5


def test_an_overshoot_is_recorded_and_counted() -> None:
    budget = Budget(1.0)
    held = budget.reserve(0.5)
    assert held is not None
    budget.settle(held, 1.2)
    assert budget.spent == 1.2
    assert budget.overshoot_usd == pytest.approx(0.7)
    assert budget.remaining == 0.0
    assert budget.reserve(0.0) is None


def test_no_limit_always_reserves() -> None:
    budget = Budget(None, spent=5.0)
    held = budget.reserve(1e9)
    assert held is not None
    assert budget.limit is None
    assert budget.remaining is None
    budget.settle(held, 2.5)
    assert budget.describe() == "$7.50 (no limit)"


def test_what_earlier_runs_spent_counts() -> None:
    budget = Budget(1.0, spent=0.9)
    assert budget.remaining == pytest.approx(0.1)
    assert budget.reserve(0.2) is None
    assert budget.reserve(0.1) is not None


def test_a_hold_that_does_not_fit_waits_for_open_reservations_to_settle() -> None:
    async def scenario() -> list[str]:
        budget = Budget(1.0)
        in_flight = [budget.reserve(0.4), budget.reserve(0.4)]
        waiting = asyncio.ensure_future(budget.hold(0.4))
        await asyncio.sleep(0)  # it cannot fit beside the two: it waits, it is not refused
        seen = [f"waiting={not waiting.done()}"]
        first = in_flight[0]
        assert first is not None
        budget.settle(first, 0.05)  # settled far below its worst case: room for the third
        held = await waiting
        seen.append(f"held={held is not None} spent={budget.spent} reserved={budget.reserved}")
        return seen

    assert asyncio.run(scenario()) == ["waiting=True", "held=True spent=0.05 reserved=0.8"]


def test_a_hold_gives_up_only_when_nothing_is_open_and_it_still_does_not_fit() -> None:
    async def scenario() -> tuple[bool, bool]:
        budget = Budget(1.0, spent=0.7)
        held = budget.reserve(0.2)
        assert held is not None
        waiting = asyncio.ensure_future(budget.hold(0.4))
        await asyncio.sleep(0)
        budget.settle(held, 0.2)  # nothing open now, and 0.4 does not fit in the 0.1 left
        refused = await waiting is None
        return refused, await budget.hold(0.1) is not None

    assert asyncio.run(scenario()) == (True, True)


def test_a_hold_is_refused_at_once_once_a_late_cost_passed_the_limit() -> None:
    async def scenario() -> bool:
        budget = Budget(1.0)
        late, other = budget.reserve(0.5), budget.reserve(0.1)
        assert late is not None and other is not None
        budget.settle(late, 1.1)  # a cost known only after its call, above its max
        return await budget.hold(0.01) is None  # while `other` is still open

    assert asyncio.run(scenario())


@given(
    limit=st.decimals(min_value="0.0001", max_value="100", places=6).map(float),
    spent_share=st.floats(0, 1),
    held_share=st.floats(0, 1),
    next_cost=st.floats(0, 10, allow_nan=False),
)
def test_property_the_refusal_figures_add_up_as_shown(
    limit: float, spent_share: float, held_share: float, next_cost: float
) -> None:
    budget = Budget(limit, spent=limit * spent_share)
    budget.reserve((budget.remaining or 0.0) * held_share)
    text = budget.refusal(next_cost, "request")
    amounts = [Decimal(a) for a in re.findall(r"\$([0-9.]+)", text)]
    *parts, total, _next = amounts
    assert sum(parts) == total, text
    assert total == Decimal(str(limit)).quantize(Decimal("0.0001"))


def test_the_final_refusal_counts_the_calls_in_flight_at_the_stop() -> None:
    budget = Budget(1.0)
    assert budget.final_refusal() is None  # nothing was refused
    in_flight = budget.reserve(0.7)
    assert in_flight is not None
    at_stop = budget.refusal(0.5, "request")
    assert "$0.0000 spent + $0.7000 held by calls in flight + $0.3000 left" in at_stop
    budget.settle(in_flight, 0.6)  # the call in flight at the stop finished and was paid
    assert budget.final_refusal() == (
        "budget reached: $0.6000 spent + $0.4000 left = $1.0000; the next request could "
        "cost up to $0.5000"
    )


@pytest.mark.parametrize("limit", [-1.0, math.nan, math.inf])
def test_a_bad_limit_is_a_config_error(limit: float) -> None:
    with pytest.raises(ConfigError, match="budget"):
        Budget(limit)


@pytest.mark.parametrize("amount", [-0.01, math.nan, math.inf])
def test_a_bad_amount_is_refused(amount: float) -> None:
    budget = Budget(1.0)
    with pytest.raises(ValueError, match="finite amount"):
        budget.reserve(amount)
    held = budget.reserve(0.5)
    assert held is not None
    with pytest.raises(ValueError, match="finite amount"):
        budget.settle(held, amount)
    assert budget.reserved == 0.5  # a bad cost does not free the hold


def test_no_drift_over_100k_tiny_reservations() -> None:
    # Adding 0.00001 a hundred thousand times in floats does not make 1.0.
    naive = 0.0
    for _ in range(100_000):
        naive += 0.00001
    assert naive != 1.0
    settled = Budget(1.0)
    for _ in range(100_000):
        held = settled.reserve(0.00001)
        assert held is not None
        settled.settle(held, 0.00001)
    assert (settled.spent, settled.remaining) == (1.0, 0.0)
    assert settled.reserve(0.00001) is None

    open_ = Budget(1.0)
    holds = [open_.reserve(0.00001) for _ in range(100_000)]
    assert None not in holds
    assert open_.reserve(0.00001) is None
    for held in holds:
        assert held is not None
        open_.release(held)
    assert (open_.spent, open_.reserved, open_.remaining) == (0.0, 0.0, 1.0)


amounts = st.decimals(0, 1, places=6).map(float) | st.floats(0, 1, allow_nan=False)


class BudgetMachine(RuleBasedStateMachine):
    """Random reserve/settle/release sequences, each cost at most its reservation."""

    held = Bundle("held")

    def __init__(self) -> None:
        super().__init__()
        self.budget = Budget(1.0)
        self.model_spent = Decimal(0)  # exact bookkeeping to compare against
        self.open: dict[int, Reservation] = {}
        self.closed: list[Reservation] = []

    @rule(target=held, amount=amounts)
    def reserve(self, amount: float) -> Reservation | None:
        before = self.budget.spent + self.budget.reserved
        reservation = self.budget.reserve(amount)
        if reservation is None:
            assert Decimal(repr(before)) + Decimal(repr(amount)) > 1 - Decimal("1e-9")
        else:
            self.open[id(reservation)] = reservation
        return reservation

    @rule(reservation=consumes(held), fraction=st.floats(0, 1))
    def settle(self, reservation: Reservation | None, fraction: float) -> None:
        if reservation is None:
            return
        actual = reservation.amount * fraction
        self.budget.settle(reservation, actual)
        self.model_spent += Decimal(repr(actual))
        self.closed.append(self.open.pop(id(reservation)))

    @rule(reservation=consumes(held))
    def release(self, reservation: Reservation | None) -> None:
        if reservation is None:
            return
        self.budget.release(reservation)
        self.closed.append(self.open.pop(id(reservation)))

    @precondition(lambda self: bool(self.closed))
    @rule(index=st.integers(0), actual=st.floats(0, 1))
    def close_again(self, index: int, actual: float) -> None:
        before = (self.budget.spent, self.budget.reserved)
        reservation = self.closed[index % len(self.closed)]
        self.budget.settle(reservation, actual)
        self.budget.release(reservation)
        assert (self.budget.spent, self.budget.reserved) == before

    @invariant()
    def within_the_limit(self) -> None:
        assert self.budget.spent <= 1.0
        assert self.budget.spent + self.budget.reserved <= 1.0 + 1e-12
        remaining = self.budget.remaining
        assert remaining is not None
        assert remaining >= 0.0
        assert self.budget.overshoot_usd == 0.0

    @invariant()
    def reserved_is_what_is_open(self) -> None:
        held = sum((Decimal(repr(r.amount)) for r in self.open.values()), Decimal(0))
        assert abs(Decimal(repr(self.budget.reserved)) - held) <= Decimal("1e-9")
        assert abs(Decimal(repr(self.budget.spent)) - self.model_spent) <= Decimal("1e-9")


TestBudgetMachine = BudgetMachine.TestCase
TestBudgetMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


@given(steps=st.lists(st.tuples(amounts, st.floats(0, 1), st.booleans()), max_size=60))
def test_settled_spend_never_passes_the_limit(steps: list[tuple[float, float, bool]]) -> None:
    budget = Budget(0.5)
    for amount, fraction, charged in steps:
        held = budget.reserve(amount)
        if held is None:
            assert budget.spent + budget.reserved + amount > 0.5 - 1e-9
            continue
        if charged:
            budget.settle(held, amount * fraction)
        else:
            budget.release(held)
        assert budget.spent <= 0.5


def test_batch_prices_are_the_providers_own_and_never_guessed() -> None:
    """genai-prices' batch variants: half the online rates where the provider publishes
    them; a model with no batch price keeps its online one rather than a made-up discount."""
    online = find_price("openai", "gpt-4o-mini")
    batch = find_price("openai", "gpt-4o-mini", batch=True)
    assert online is not None and batch is not None
    assert (batch.input, batch.output) == (online.input / 2, online.output / 2)
    haiku = find_price("anthropic", "claude-haiku-4-5", batch=True)
    assert haiku is not None and (haiku.input, haiku.output) == (0.5, 2.5)
    old = find_price("anthropic", "claude-3-5-haiku-latest")
    assert find_price("anthropic", "claude-3-5-haiku-latest", batch=True) == old
