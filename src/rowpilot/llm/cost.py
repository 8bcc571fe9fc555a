"""What a call costs, and the budget that caps what a run spends.

Prices are USD per million tokens. ``find_price`` looks a model up in this order:

1. the job's ``[prices]`` overrides: ``"provider/model"`` first, then the bare model name;
2. genai-prices, under the provider when genai-prices knows its id (openai, anthropic,
   openrouter, together, groq, ...); an OpenRouter model is ``provider="openrouter"``,
   ``model="vendor/model"``;
3. for any other provider (the simulator, a vLLM server): genai-prices' guess from the model
   name alone, then the model vendors' own lists, so ``gpt-4o-mini`` is priced as OpenAI's.

``None`` means the model is unknown: its calls cost 0.0 and no budget can hold them.

The rules:

* prices come only from the data bundled in the installed genai-prices. rowpilot never
  starts its ``UpdatePrices`` fetcher (the one code path that downloads prices) and reads
  its own snapshot of the bundled data, so a lookup never touches the network, and prices
  another library in the process fetched do not leak in;
* where a price is not one number, rowpilot takes the dearer reading: a model with peak
  and off-peak hours gets its highest rate of the day; prompt-size tiers are kept as
  genai-prices has them (a cliff: once the prompt passes a tier's threshold, the whole call
  pays the tier's rates), and the worst case takes the dearest tier the prompt could reach;
* ``input_tokens`` counts every prompt token, cached ones included; ``cached_input_tokens``
  is the part read from cache, billed at ``cached_input`` (at ``input`` when that is unknown);
* money is exact: costs are computed in ``Decimal``, and a ``Budget`` counts integer
  picodollars, rounding every amount up, so no number of reserve/settle cycles drifts past
  the limit and a settled cost never exceeds the worst case reserved for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from decimal import ROUND_CEILING, Decimal, localcontext
from typing import Any, NamedTuple

from genai_prices.data_snapshot import DataSnapshot
from genai_prices.types import (
    ModelInfo,
    ModelPrice,
    PriceContext,
    TieredPrices,
    TimeOfDateConstraint,
)

from rowpilot.errors import ConfigError

__all__ = [
    "Budget",
    "Price",
    "PriceTier",
    "Reservation",
    "cost_usd",
    "find_price",
    "format_usd",
    "parse_price_overrides",
    "worst_case_cost",
]

# Vendors whose models other hosts serve under the vendor's own names, searched in this order
# when genai-prices cannot tell the vendor from a model name (it cannot for embeddings).
_VENDORS = ("openai", "anthropic", "google", "mistral", "deepseek", "x-ai")
_PRICE_KEYS = ("input", "output", "cached_input")
_OVERRIDE_HINT = (
    'write e.g. [prices."openai/gpt-4o-mini"] with input = 0.15 and output = 0.60 '
    "(USD per million tokens; cached_input is optional)"
)
_MILLION = 1_000_000
# A budget counts picodollars: a token at $0.01 per million is 10,000 of them, so rounding
# each amount up to a whole one adds at most a millionth of a dollar per million calls.
_UNITS_PER_USD = 10**12


# --------------------------------------------------------------------------- prices


@dataclass(frozen=True)
class PriceTier:
    """The rates, USD per million tokens, for a whole call whose prompt passes ``above`` tokens."""

    above: int
    input: float
    output: float
    cached_input: float | None = None


@dataclass(frozen=True)
class Price:
    """USD per million tokens.

    ``tiers`` (ascending ``above``) replace the base rates for calls with longer prompts.
    ``source`` is ``"genai-prices"`` or ``"override"``; ``model`` is the name the price was
    found under (``openai/gpt-4o-mini``, or the override's key), for messages.
    """

    input: float
    output: float
    cached_input: float | None = None
    source: str = "genai-prices"
    model: str = ""
    tiers: tuple[PriceTier, ...] = ()

    def __post_init__(self) -> None:
        # The worst case is only an upper bound if no rate is negative or NaN.
        all_rates: list[Price | PriceTier] = [self, *self.tiers]
        for rates in all_rates:
            for rate in (rates.input, rates.output, rates.cached_input):
                if rate is not None and not (math.isfinite(rate) and rate >= 0):
                    raise ValueError(f"a price must be a finite number >= 0, not {rate!r}")
        thresholds = [tier.above for tier in self.tiers]
        if thresholds != sorted(set(thresholds)) or any(above < 0 for above in thresholds):
            raise ValueError(f"price tiers must have distinct ascending thresholds: {thresholds}")


class _Rates(NamedTuple):
    input: float
    output: float
    cached_input: float | None


def _rates(price: Price, prompt_tokens: int) -> _Rates:
    """The rates a call with ``prompt_tokens`` pays: the last tier it passes, else the base."""
    chosen: Price | PriceTier = price
    for tier in price.tiers:
        if prompt_tokens > tier.above:
            chosen = tier
    return _Rates(chosen.input, chosen.output, chosen.cached_input)


def find_price(
    provider: str,
    model: str,
    overrides: Mapping[str, Price] | None = None,
    *,
    batch: bool = False,
) -> Price | None:
    """The price of ``provider``'s ``model``, or ``None`` when nobody knows it (see the module).

    ``batch``: the price through the provider's Batch API, where genai-prices has one (its
    ``processing = "batch"`` variant, half the online rates at OpenAI and Anthropic); a model
    without one keeps its online price, never a guessed discount."""
    if overrides:
        for key in (f"{provider}/{model}", model):
            if key in overrides:
                return overrides[key]
    found_under = _genai_model(provider, model)
    if found_under is None:
        return None
    provider_id, info = found_under
    return _price_of(info, f"{provider_id}/{info.id}", batch=batch)


@functools.cache
def _snapshot() -> DataSnapshot:
    # Our own snapshot of the bundled data rather than genai_prices' get_snapshot(), which
    # serves whatever an UpdatePrices fetcher (started by any library) last downloaded.
    from genai_prices.data import providers  # 1.5 MB of Python: imported on first lookup

    return DataSnapshot(providers=providers, from_auto_update=False)


def _genai_model(provider: str, model: str) -> tuple[str, ModelInfo] | None:
    """genai-prices' provider id and entry for the model, or ``None``."""
    snapshot = _snapshot()
    try:
        snapshot.find_provider(None, provider, None)
    except LookupError:
        return _guess_from_model_name(snapshot, model)
    try:
        found_provider, info = snapshot.find_provider_model(model, None, provider, None)
    except LookupError:
        return None  # a provider genai-prices knows, without this model: do not guess
    return found_provider.id, info


def _guess_from_model_name(snapshot: DataSnapshot, model: str) -> tuple[str, ModelInfo] | None:
    try:
        found_provider, info = snapshot.find_provider_model(model, None, None, None)
    except LookupError:
        pass
    else:
        return found_provider.id, info
    for vendor in _VENDORS:
        candidate = next((p for p in snapshot.providers if p.id == vendor), None)
        info_or_none = candidate.find_model(model) if candidate is not None else None
        if info_or_none is not None:
            return vendor, info_or_none
    return None


def _price_of(info: ModelInfo, name: str, *, batch: bool = False) -> Price | None:
    """A genai-prices entry as a ``Price``: the dearest reading over today's hours."""
    now = datetime.now(UTC)
    context: PriceContext | None = {"processing": "batch"} if batch else None
    readings = [
        _from_model_price(info.get_prices(when, context), name) for when in _moments(info, now)
    ]
    known = [reading for reading in readings if reading is not None]
    return _dearest(known, name) if known else None


def _moments(info: ModelInfo, now: datetime) -> list[datetime]:
    """Now, and today's start and end of each time-of-day price: one moment per piece of the day."""
    moments = [now]
    if isinstance(info.prices, list):
        for conditional in info.prices:
            constraint = conditional.constraint
            if isinstance(constraint, TimeOfDateConstraint):
                moments += [
                    _today_at(now, constraint.start_time),
                    _today_at(now, constraint.end_time),
                ]
    return moments


def _today_at(now: datetime, at: time) -> datetime:
    moment = datetime.combine(now.date(), at)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _from_model_price(model_price: ModelPrice, name: str) -> Price | None:
    """Flatten genai-prices' per-key tiers into whole-call tiers; ``None`` if not per token."""
    keys = (model_price.input_mtok, model_price.output_mtok, model_price.cache_read_mtok)
    if keys[0] is None and keys[1] is None:
        return None  # priced by the image, second or request: not something rowpilot counts
    thresholds = sorted(
        {tier.start for key in keys if isinstance(key, TieredPrices) for tier in key.tiers}
    )

    def at(prompt_tokens: int) -> _Rates:
        input_rate, output_rate, cached_rate = (_rate_at(key, prompt_tokens) for key in keys)
        return _Rates(input_rate or 0.0, output_rate or 0.0, cached_rate)

    base = at(0)
    tiers = tuple(PriceTier(above, *at(above + 1)) for above in thresholds)
    return Price(*base, model=name, tiers=tiers)


def _rate_at(key: Decimal | TieredPrices | None, prompt_tokens: int) -> float | None:
    if key is None:
        return None
    if isinstance(key, Decimal):
        return float(key)
    rate = key.base
    for tier in key.tiers:  # ascending: genai-prices sorts them
        if prompt_tokens > tier.start:
            rate = tier.price
    return float(rate)


def _dearest(prices: list[Price], name: str) -> Price:
    """One price at least as dear as each of ``prices`` at every prompt size."""
    if len(prices) == 1:
        return prices[0]
    thresholds = sorted({tier.above for price in prices for tier in price.tiers})

    def at(prompt_tokens: int) -> _Rates:
        rates = [_rates(price, prompt_tokens) for price in prices]
        cached = [r.cached_input for r in rates if r.cached_input is not None]
        return _Rates(
            max(r.input for r in rates),
            max(r.output for r in rates),
            # A reading without a cached rate bills cached tokens at its input rate.
            max(r.input if r.cached_input is None else r.cached_input for r in rates)
            if cached
            else None,
        )

    tiers = tuple(PriceTier(above, *at(above + 1)) for above in thresholds)
    return Price(*at(0), model=name, tiers=tiers)


# --------------------------------------------------------------------------- overrides


def parse_price_overrides(table: Mapping[str, Any]) -> dict[str, Price]:
    """The job file's ``[prices]`` table: ``"provider/model"`` or ``"model"`` to a ``Price``."""
    if not isinstance(table, Mapping):
        raise ConfigError("[prices] must be a table of model prices", hint=_OVERRIDE_HINT)
    return {name: _parse_override(name, entry) for name, entry in table.items()}


def _parse_override(name: Any, entry: Any) -> Price:
    where = f"prices.{name!r}" if not isinstance(name, str) else f'prices."{name}"'
    if not isinstance(name, str) or not name.strip() or name.startswith("/") or name.endswith("/"):
        raise ConfigError(f"{where}: a price needs a model name", hint=_OVERRIDE_HINT)
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must be a table, not {entry!r}", hint=_OVERRIDE_HINT)
    unknown = sorted(str(key) for key in entry if key not in _PRICE_KEYS)
    if unknown:
        # [prices.openai/x] is a TOML error, but [prices.gpt-4.1] quietly nests a table.
        nested = isinstance(entry.get(unknown[0]), Mapping)
        hint = (
            f'quote a name with dots or slashes: [prices."{name}.{unknown[0]}"]'
            if nested
            else "a price takes input, output and cached_input (USD per million tokens)"
        )
        raise ConfigError(f"{where}: unknown setting {unknown[0]!r}", hint=hint)
    for required in ("input", "output"):
        if required not in entry:
            raise ConfigError(f"{where}: no {required} price", hint=_OVERRIDE_HINT)
    rates = {key: _parse_rate(where, key, value) for key, value in entry.items()}
    return Price(
        input=rates["input"],
        output=rates["output"],
        cached_input=rates.get("cached_input"),
        source="override",
        model=name,
    )


def _parse_rate(where: str, key: str, value: Any) -> float:
    # bool is an int to Python, but `input = true` is a mistake, not a price of $1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: {key} must be a number, not {value!r}", hint=_OVERRIDE_HINT)
    if not math.isfinite(value) or value < 0:
        raise ConfigError(
            f"{where}: {key} must be a finite number >= 0, not {value!r}", hint=_OVERRIDE_HINT
        )
    return float(value)


# --------------------------------------------------------------------------- costs


def cost_usd(
    price: Price | None, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0
) -> float:
    """What a call cost. ``input_tokens`` includes the ``cached_input_tokens``. 0.0 unpriced."""
    _check_count("input_tokens", input_tokens)
    _check_count("output_tokens", output_tokens)
    _check_count("cached_input_tokens", cached_input_tokens)
    if cached_input_tokens > input_tokens:
        raise ValueError(
            f"cached_input_tokens ({cached_input_tokens}) is part of input_tokens ({input_tokens})"
        )
    if price is None:
        return 0.0
    rates = _rates(price, input_tokens)
    cached_rate = rates.input if rates.cached_input is None else rates.cached_input
    return _usd(
        (input_tokens - cached_input_tokens, rates.input),
        (cached_input_tokens, cached_rate),
        (output_tokens, rates.output),
    )


def worst_case_cost(price: Price | None, prompt_token_bound: int, max_tokens: int) -> float:
    """The most a call can cost: the amount to reserve before it. 0.0 unpriced.

    Every prompt token at the dearest input rate, as if nothing came from cache, and all
    ``max_tokens`` answered, both at the dearest tier a prompt up to the bound could reach.
    """
    _check_count("prompt_token_bound", prompt_token_bound)
    _check_count("max_tokens", max_tokens)
    if price is None:
        return 0.0
    reachable = [_rates(price, 0)] + [
        _Rates(tier.input, tier.output, tier.cached_input)
        for tier in price.tiers
        if prompt_token_bound > tier.above
    ]
    input_rate = max(max(r.input, r.cached_input or 0.0) for r in reachable)
    output_rate = max(r.output for r in reachable)
    return _usd((prompt_token_bound, input_rate), (max_tokens, output_rate))


def _check_count(name: str, count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"{name} must be a whole number >= 0, not {count!r}")


def _usd(*terms: tuple[int, float]) -> float:
    """Sum of tokens x rate per million, exact in Decimal, then rounded once to a float.

    Rounding once keeps cost monotonic: fewer tokens never cost more than the worst case.
    """
    with localcontext() as context:
        context.prec = 60  # tokens x a 17-digit rate, summed: far from needing rounding
        total = sum((tokens * _decimal(rate) for tokens, rate in terms), Decimal(0))
        return float(total / _MILLION)


def _decimal(amount: float) -> Decimal:
    """The decimal a float was written as (0.1, not 0.1000000000000000055...)."""
    return Decimal(repr(float(amount)))


def format_usd(amount: float) -> str:
    """``$1.25``; amounts under a cent keep two significant digits (``$0.00042``)."""
    if amount == 0 or abs(amount) >= 0.01:
        return f"${amount:,.2f}"
    return f"${Decimal(f'{amount:.2g}'):f}"


# --------------------------------------------------------------------------- budget


@dataclass(frozen=True, eq=False)
class Reservation:
    """Money held for one call, from ``Budget.reserve`` until settled or released.

    Compared by identity: two reservations of the same amount are still two calls.
    """

    amount: float
    _units: int = field(repr=False)


def _units(amount: float, what: str) -> int:
    """``amount`` dollars in picodollars, rounded up so the budget never under-counts."""
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        raise ValueError(f"{what} must be a number of dollars, not {amount!r}")
    if not math.isfinite(amount) or amount < 0:
        raise ValueError(f"{what} must be a finite amount >= 0, not {amount!r}")
    scaled = _decimal(amount).scaleb(12)  # exact: shifts the exponent only
    return int(scaled.to_integral_value(rounding=ROUND_CEILING))


def _dollars(units: int) -> float:
    return units / _UNITS_PER_USD  # int / int rounds correctly, so this is monotonic


class Budget:
    """A hard cap on what one run spends: reserve the worst case before a call, settle after.

    ``spent + reserved`` never passes the limit through ``reserve``; only a settlement above
    its reservation (counted in ``overshoot_usd``: a cost known only after the call, such as
    a ``ctx.call`` whose ``cost`` is a function, can exceed its ``max_cost``) can push
    ``spent`` past it, and then no reservation fits any more. Settling or releasing a
    reservation a second time does nothing.

    ``hold`` is what calls use: a reservation that does not fit *waits* while others are
    open, since most settle far below their worst case and free room; it gives up only
    when nothing is open (or the limit is already spent) and the amount still does not
    fit. So many workers use the budget nearly to its end instead of stopping at the
    first worst case that does not fit beside the others in flight.
    """

    def __init__(self, limit_usd: float | None, *, spent: float = 0.0) -> None:
        if limit_usd is not None and (
            isinstance(limit_usd, bool)
            or not isinstance(limit_usd, int | float)
            or not math.isfinite(limit_usd)
            or limit_usd < 0
        ):
            raise ConfigError(
                f"the budget must be an amount of dollars >= 0, not {limit_usd!r}",
                hint="e.g. --budget 5 for five dollars; leave it out for no limit",
            )
        self._limit = None if limit_usd is None else _units(limit_usd, "the budget")
        self._spent = _units(spent, "spent")  # what earlier runs of the job spent
        self._reserved = 0
        self._overshoot = 0
        self._open: set[Reservation] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._refused: tuple[float, str] | None = None  # the last refusal's amount and what

    @property
    def limit(self) -> float | None:
        return None if self._limit is None else _dollars(self._limit)

    @property
    def spent(self) -> float:
        return _dollars(self._spent)

    @property
    def reserved(self) -> float:
        return _dollars(self._reserved)

    @property
    def remaining(self) -> float | None:
        """What is left to reserve; ``None`` without a limit."""
        if self._limit is None:
            return None
        return _dollars(max(0, self._limit - self._spent - self._reserved))

    @property
    def overshoot_usd(self) -> float:
        """How much settled costs exceeded their reservations, in total."""
        return _dollars(self._overshoot)

    def reserve(self, amount: float) -> Reservation | None:
        """Hold ``amount`` for a call now, or ``None`` if it would pass the limit."""
        units = _units(amount, "a reservation")
        if self._limit is not None and self._spent + self._reserved + units > self._limit:
            return None
        reservation = Reservation(float(amount), units)
        self._reserved += units
        self._open.add(reservation)
        return reservation

    async def hold(self, amount: float) -> Reservation | None:
        """Hold ``amount``, waiting while open reservations may still free room; ``None``
        when it cannot fit: nothing else is open, or the limit is spent already."""
        while True:
            reservation = self.reserve(amount)
            if reservation is not None:
                return reservation
            if not self._open or self._over():
                return None
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def settle(self, reservation: Reservation, actual: float) -> None:
        """The call cost ``actual``: free its reservation and count the cost as spent."""
        units = _units(actual, "a cost")  # checked first: a bad cost must not free the hold
        if not self._close(reservation):
            return
        self._spent += units
        self._overshoot += max(0, units - reservation._units)

    def release(self, reservation: Reservation) -> None:
        """The call was never charged (it failed before reaching the provider)."""
        self._close(reservation)

    def _close(self, reservation: Reservation) -> bool:
        """Free the reservation's hold; ``False`` if it was settled or released already."""
        if reservation not in self._open:
            return False
        self._open.discard(reservation)
        self._reserved -= reservation._units
        self._wake()
        return True

    def _wake(self) -> None:
        # Every waiter tries again: the freed room may fit a smaller one but not the first.
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _over(self) -> bool:
        return self._limit is not None and self._spent >= self._limit

    def refusal(self, amount: float, what: str) -> str:
        """Why ``amount`` for ``what`` cannot be held, in figures that add up as shown."""
        self._refused = (amount, what)
        return self._refusal(amount, what)

    def final_refusal(self) -> str | None:
        """The last refusal in today's figures, or None if there was none.

        A refusal stops the run, but the calls in flight at that moment still finish and
        are paid: the run's stop line is written from the budget as it ends, so that what
        it shows spent is what the registry holds."""
        return None if self._refused is None else self._refusal(*self._refused)

    def _refusal(self, amount: float, what: str) -> str:
        # Rounded as running totals, so that the parts add up to the total as shown.
        limit = _cents100(self.limit or 0.0)
        spent = _cents100(self.spent)
        committed = _cents100(self.spent + self.reserved)
        if spent > limit:
            return (
                f"budget reached: ${spent} spent of ${limit}: a cost known only after its "
                f"call passed the budget by ${spent - limit}"
            )
        held = committed - spent
        left = max(Decimal(0), limit - committed)
        parts = f"${spent} spent" + (f" + ${held} held by calls in flight" if held else "")
        return (
            f"budget reached: {parts} + ${left} left = ${limit}; the next {what} could cost "
            f"up to ${_cents100(amount)}"
        )

    def describe(self) -> str:
        """``$0.42 of $1.00``, or ``$0.42 (no limit)``."""
        if self._limit is None:
            return f"{format_usd(self.spent)} (no limit)"
        return f"{format_usd(self.spent)} of {format_usd(_dollars(self._limit))}"

    def __repr__(self) -> str:
        return (
            f"Budget(limit={self.limit!r}, spent={self.spent!r}, reserved={self.reserved!r}, "
            f"open={len(self._open)})"
        )


def _cents100(amount: float) -> Decimal:
    """Dollars to 1/100 of a cent, so that shown figures add up exactly."""
    return _decimal(amount).quantize(Decimal("0.0001"))
