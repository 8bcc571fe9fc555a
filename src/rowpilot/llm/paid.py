"""The one path of a paid call: prompt tasks, ``ctx.llm`` and ``ctx.call`` all go through it.

``PaidCall`` holds what a resource's calls share (its limiter, the run's budget, the run's
counters, its retry policy and how its errors read); calling it with one call's specifics
runs, in this order:

1. **budget**: the call's worst case is reserved (``Budget.hold`` waits while other calls
   may free room); when it cannot fit, ``BudgetShort`` (a ``RunStop``) ends the run, or
   makes a batch ask in halves. Admission precedes spending: the reservation is made
   before the call waits for the limits.
2. **limits**: a permit of the resource (rpm, tpm, concurrency). A 429 reports to the
   resource, which pauses and slows every call of it, and the call waits its turn again,
   at most ``RATE_LIMIT_WAITS`` times; a 429 is not a failed attempt.
3. **the call**; other retryable failures are tried again after the policy's backoff (at
   least the provider's Retry-After), up to ``max_attempts`` attempts, each its own paid
   call with its own reservation. Prompt tasks pass one attempt: the scheduler retries
   the item, so the attempts land in the registry.
4. **journal**: the caller's hook commits the result (and its cost) before anything uses it.
5. **settle**: the reservation becomes the actual cost.

**The billing rule for a failed call** (``failure_cost``), the same for LLM calls and
``ctx.call``, chosen so the hard budget cap is never passed by a call that may have been
billed, and nothing is charged where we know nothing was done:

* never sent: refused or paused by the limits, cancelled while waiting, a connection
  refused (or none free) before the request left: **$0**;
* answered with an error status (429, any 4xx, 5xx): the provider did no billable work,
  **$0**;
* fate unknown: a timeout, a connection dropped after the request was sent, a call
  cancelled mid-flight, an answer that came back unreadable, filtered or cut (work done,
  usage unknown), or a ``ctx.call`` function's own exception: the reservation is kept,
  **the worst case is charged**.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, NoReturn, TypeVar

from rowpilot.engine.progress import Counters
from rowpilot.engine.retry import RetryPolicy
from rowpilot.errors import ProviderError, RateLimitError
from rowpilot.llm.cost import Budget, Reservation
from rowpilot.llm.limits import Permit, Resource
from rowpilot.tasks.values import RunStop

__all__ = ["RATE_LIMIT_WAITS", "BudgetShort", "PaidCall", "failure_cost"]

RATE_LIMIT_WAITS = 8  # 429s one attempt sits out before it fails
_ERROR_STATUS = 400
# Answered without an error status, but not as asked: the provider did the work.
_ANSWERED_UNUSABLE = frozenset({"invalid_output", "content_filter", "length"})
_UNKNOWN_FATE = frozenset({"timeout", "connection"}) | _ANSWERED_UNUSABLE

T = TypeVar("T")
R = TypeVar("R")


class BudgetShort(RunStop):
    """A call's worst case does not fit what the budget has left (nothing else is in
    flight to free room): a batch is asked again in halves, a single call stops the run."""


def failure_cost(error: BaseException, worst: float) -> float:
    """What a call that raised ``error`` after it was sent is charged (module docstring)."""
    if _never_sent(error):
        return 0.0
    if isinstance(error, ProviderError):
        if error.status is not None and error.status >= _ERROR_STATUS:
            return 0.0
        return worst if error.cause in _UNKNOWN_FATE else 0.0
    return worst  # cancelled mid-call, or a ctx.call function's own error: maybe billed


def _never_sent(error: BaseException) -> bool:
    if isinstance(error, ProviderError) and not error.sent:
        return True
    chain = (error, error.__cause__, error.__context__)
    return any(isinstance(link, ConnectionRefusedError) for link in chain)


def _as_provider_error(exc: BaseException) -> ProviderError | None:
    return exc if isinstance(exc, ProviderError) else None


def _settle_permit(result: object, permit: Permit) -> None:
    permit.settle()


_ONE_ATTEMPT = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class _Call(Generic[T, R]):
    """One call's specifics, as ``PaidCall.__call__`` takes them."""

    send: Callable[[], Awaitable[T]]
    worst: float
    what: str
    cost: Callable[[T], float]
    journal: Callable[[T, float, float], R]
    tokens: int
    output: int
    answered: Callable[[T, Permit], None]


@dataclass(frozen=True)
class PaidCall:
    """A resource's paid calls under the run's budget (see the module docstring).

    ``errors`` reads an exception of a call as a provider error (None: the caller's own
    error, raised as it is); ``on_retry(attempt, delay, error)`` hears of each backoff;
    ``gate`` bounds the calls in flight past their reservation (an LLM session's
    requests at once); ``clock`` and ``sleep`` are the time a call is measured and a
    backoff waited on.
    """

    resource: Resource
    budget: Budget
    counters: Counters
    policy: RetryPolicy = _ONE_ATTEMPT
    errors: Callable[[BaseException], ProviderError | None] = _as_provider_error
    on_retry: Callable[[int, float, ProviderError], None] | None = None
    gate: asyncio.Semaphore | None = None
    clock: Callable[[], float] = time.perf_counter
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def __call__(
        self,
        send: Callable[[], Awaitable[T]],
        *,
        worst: float,
        what: str,
        cost: Callable[[T], float],
        journal: Callable[[T, float, float], R],
        tokens: int = 0,
        output: int = 0,
        answered: Callable[[T, Permit], None] = _settle_permit,
    ) -> R:
        """Pay for ``send()`` and return what ``journal(result, cost, seconds)`` returns.

        ``worst`` (USD) is reserved; ``what`` names the call in a budget refusal;
        ``cost(result)`` is what a call that came back costs; ``tokens`` is asked of the
        resource's tpm (``output`` of them the answer's max_tokens), and
        ``answered(result, permit)`` settles the permit (with the real token counts and
        the response's rate-limit headers, where the caller has them).
        """
        call = _Call(send, worst, what, cost, journal, tokens, output, answered)
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._once(call)
            except RateLimitError:
                raise  # waited out RATE_LIMIT_WAITS times already: not one more attempt
            except ProviderError as error:
                if not error.retryable or attempt >= self.policy.max_attempts:
                    raise
                delay = self.policy.delay(attempt, at_least=error.retry_after or 0.0)
                if self.on_retry is not None:
                    self.on_retry(attempt, delay, error)
                await self.sleep(delay)

    async def _once(self, call: _Call[T, R]) -> R:
        """One attempt: reserve, call within the limits, journal, settle."""
        reservation = await self._reserve(call.worst, call.what)
        sent = False

        async def sending() -> T:
            nonlocal sent
            sent = True
            return await call.send()

        try:
            async with self._gated():
                result, seconds = await self._within_limits(sending, call)
        except BaseException as error:
            charge = failure_cost(error, call.worst) if sent else 0.0
            self.budget.settle(reservation, charge)
            raise
        spent = call.worst  # a cost function that fails leaves the worst case charged
        try:
            spent = call.cost(result)
            self.counters.calls += 1
            self.counters.cost_usd += spent
            return call.journal(result, spent, seconds)
        finally:
            self.budget.settle(reservation, spent)

    async def _reserve(self, worst: float, what: str) -> Reservation:
        reservation = await self.budget.hold(worst)
        if reservation is None:
            raise BudgetShort("budget", self.budget.refusal(worst, what))
        return reservation

    @contextlib.asynccontextmanager
    async def _gated(self) -> AsyncIterator[None]:
        if self.gate is None:
            yield
            return
        async with self.gate:
            yield

    async def _within_limits(
        self, send: Callable[[], Awaitable[T]], call: _Call[T, R]
    ) -> tuple[T, float]:
        """The call inside a permit, and how long it took; a 429 slows the resource and
        waits its turn again."""
        for wait in range(RATE_LIMIT_WAITS):
            async with self.resource.slot(call.tokens, output=call.output) as permit:
                started = self.clock()
                try:
                    result = await send()
                except Exception as exc:
                    error = self._rate_limit_of(exc)
                    permit.rate_limited(error.retry_after, error.headers)
                    self.counters.rate_limited += 1
                    if wait == RATE_LIMIT_WAITS - 1:
                        _raise(error, exc)
                    continue
                seconds = self.clock() - started
                call.answered(result, permit)
                return result, seconds
        raise AssertionError("unreachable")  # the loop returns or raises

    def _rate_limit_of(self, exc: Exception) -> RateLimitError:
        """``exc`` as a 429 to wait out; any other failure is raised (as a provider error
        when the resource's ``errors`` reads one)."""
        error = self.errors(exc)
        if error is None:
            raise exc
        if not isinstance(error, RateLimitError):
            _raise(error, exc)
        return error


def _raise(error: ProviderError, cause: BaseException) -> NoReturn:
    if error is cause:
        raise error
    raise error from cause
