"""The one paid-call path (rowpilot.llm.paid) and its billing rule for failed calls.

The first group drives ``PaidCall`` itself with a real ``Resource`` and a real ``Budget``;
a backoff is waited on an injected sleep that records it, so nothing here sleeps to wait.
The second group proves each branch of the billing rule end to end: LLM calls through
``LLMSession`` and the official SDK against the real simulator, ``ctx.call`` through
``Steps`` against the simulator's search API and a local HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import socket
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rowpilot._config import JobConfig
from rowpilot.engine.events import EventLog
from rowpilot.engine.progress import Counters
from rowpilot.engine.retry import RetryPolicy
from rowpilot.engine.slots import Slots
from rowpilot.errors import (
    BadRequestError,
    ContentFilterError,
    InvalidOutputError,
    ProviderConnectionError,
    ProviderError,
    ProviderServerError,
    ProviderTimeoutError,
    RateLimitError,
)
from rowpilot.llm.cost import Budget, find_price, worst_case_cost
from rowpilot.llm.limits import Limits, Resource
from rowpilot.llm.paid import RATE_LIMIT_WAITS, BudgetShort, PaidCall, failure_cost
from rowpilot.llm.prompt import conversation_request
from rowpilot.llm.schema import OutputSchema
from rowpilot.llm.session import LLMSession, build_step_spec
from rowpilot.llm.tokens import upper_bound_tokens
from rowpilot.simulator.server import Simulator, SimulatorConfig
from rowpilot.state.registry import Registry
from rowpilot.tasks.base import RunScope
from rowpilot.tasks.steps import Steps
from rowpilot.tasks.values import ItemUsage, StepTrail

WORST = 0.25
COST = 0.01


def paid(budget: Budget | None = None, **options: Any) -> PaidCall:
    return PaidCall(
        Resource("api", Limits(), learn=False), budget or Budget(1.0), Counters(), **options
    )


def no_journal(result: Any, cost: float, seconds: float) -> Any:
    return result


async def pay(call: PaidCall, send: Any, **options: Any) -> Any:
    settings: dict[str, Any] = {"worst": WORST, "what": "test call", "cost": lambda _: COST}
    settings.update(options)
    return await call(send, journal=settings.pop("journal", no_journal), **settings)


class Sends:
    """A call that fails with the given errors, in order, then answers "ok"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.count = 0

    async def __call__(self) -> str:
        self.count += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


# -- PaidCall ------------------------------------------------------------------------------


def test_a_call_is_journaled_while_reserved_then_settled_at_its_cost() -> None:
    budget = Budget(1.0)
    call = paid(budget)
    seen: list[tuple[Any, float, float]] = []

    def journal(result: Any, cost: float, seconds: float) -> str:
        seen.append((result, cost, budget.reserved))
        return f"journaled {result}"

    assert asyncio.run(pay(call, Sends(), journal=journal)) == "journaled ok"
    assert seen == [("ok", COST, WORST)]  # the journal runs before the settle
    assert (budget.spent, budget.reserved) == (COST, 0.0)
    assert (call.counters.calls, call.counters.cost_usd) == (1, COST)


def test_429s_are_waited_out_on_one_reservation_and_cost_nothing() -> None:
    budget = Budget(1.0)
    call = paid(budget)
    send = Sends(*[RateLimitError("slow down", status=429, retry_after=0.0)] * 3)
    assert asyncio.run(pay(call, send)) == "ok"
    assert (send.count, call.counters.rate_limited, budget.spent) == (4, 3, COST)
    assert call.resource.stats()["rate_limited"] == 3


def test_the_last_429_fails_the_call_and_costs_nothing() -> None:
    budget = Budget(1.0)
    call = paid(budget, policy=RetryPolicy(max_attempts=5))
    send = Sends(*[RateLimitError("slow down", status=429, retry_after=0.0)] * RATE_LIMIT_WAITS)
    with pytest.raises(RateLimitError):
        asyncio.run(pay(call, send))
    # A 429 is not a failed attempt: the policy's attempts do not multiply the waits.
    assert (send.count, budget.spent, budget.reserved) == (RATE_LIMIT_WAITS, 0.0, 0.0)


def test_retryable_failures_back_off_at_least_the_retry_after() -> None:
    budget = Budget(1.0)
    slept: list[float] = []
    retries: list[tuple[int, float]] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    call = paid(
        budget,
        policy=RetryPolicy(max_attempts=3, base_delay=0.0),
        on_retry=lambda attempt, delay, error: retries.append((attempt, delay)),
        sleep=sleep,
    )
    send = Sends(
        ProviderServerError("down", status=500, retry_after=7.0),
        ProviderServerError("down", status=503),
    )
    assert asyncio.run(pay(call, send)) == "ok"
    assert slept == [7.0, 0.0]
    assert retries == [(1, 7.0), (2, 0.0)]
    assert budget.spent == COST  # two 5xx answers: nothing billed


def test_the_attempts_end_at_the_policys_maximum() -> None:
    send = Sends(*[ProviderTimeoutError("slow")] * 3)
    budget = Budget(1.0)

    async def sleep(seconds: float) -> None:
        pass

    call = paid(budget, policy=RetryPolicy(max_attempts=2, base_delay=0.0), sleep=sleep)
    with pytest.raises(ProviderTimeoutError):
        asyncio.run(pay(call, send))
    assert send.count == 2
    assert budget.spent == pytest.approx(2 * WORST)  # each timed-out attempt: its worst case


def test_a_worst_case_that_cannot_fit_stops_before_the_call() -> None:
    budget = Budget(0.1)
    send = Sends()
    with pytest.raises(BudgetShort, match="budget reached") as stop:
        asyncio.run(pay(paid(budget), send))
    assert (stop.value.reason, send.count, budget.spent) == ("budget", 0, 0.0)


def test_a_callers_own_error_is_raised_as_it_is_and_charged_its_worst_case() -> None:
    budget = Budget(1.0)
    with pytest.raises(KeyError):
        asyncio.run(pay(paid(budget), Sends(KeyError("hits"))))
    assert budget.spent == WORST


def test_a_cost_function_that_fails_leaves_the_worst_case_charged() -> None:
    budget = Budget(1.0)

    def cost(result: Any) -> float:
        raise ValueError("no price in the result")

    with pytest.raises(ValueError, match="no price"):
        asyncio.run(pay(paid(budget), Sends(), cost=cost))
    assert budget.spent == WORST


def test_a_journal_that_fails_still_settles_the_real_cost() -> None:
    budget = Budget(1.0)

    def journal(result: Any, cost: float, seconds: float) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        asyncio.run(pay(paid(budget), Sends(), journal=journal))
    assert (budget.spent, budget.reserved) == (COST, 0.0)


def test_cancelled_while_waiting_for_the_limits_costs_nothing_and_mid_call_its_worst() -> None:
    budget = Budget(1.0)
    call = PaidCall(Resource("api", Limits(max_concurrent=1), learn=False), budget, Counters())

    async def scenario() -> None:
        started = asyncio.Event()
        never = asyncio.Event()

        async def hold() -> str:
            started.set()
            await never.wait()
            return "never"

        in_call = asyncio.create_task(pay(call, hold))
        await started.wait()
        waiting = asyncio.create_task(pay(call, Sends()))
        while budget.reserved < 2 * WORST:  # the second has reserved; it waits for a slot
            await asyncio.sleep(0)
        for task in (waiting, in_call):
            task.cancel()
        await asyncio.gather(waiting, in_call, return_exceptions=True)

    asyncio.run(scenario())
    assert (budget.spent, budget.reserved) == (WORST, 0.0)


@pytest.mark.parametrize(
    ("error", "charged"),
    [
        (RateLimitError("429", status=429), 0.0),
        (BadRequestError("400", status=400), 0.0),
        (ProviderServerError("500", status=500), 0.0),
        (ProviderTimeoutError("504", status=504), 0.0),  # answered, with an error status
        (ProviderConnectionError("refused", sent=False), 0.0),
        (ProviderConnectionError("reset"), WORST),
        (ProviderTimeoutError("no answer"), WORST),
        (InvalidOutputError("not JSON", status=200), WORST),
        (ContentFilterError("filtered"), WORST),  # a 200 answer the filter emptied
        (BadRequestError("no api key"), 0.0),  # refused by the client: never sent
        (asyncio.CancelledError(), WORST),
        (ValueError("the task's own"), WORST),
    ],
)
def test_the_billing_rule(error: BaseException, charged: float) -> None:
    assert failure_cost(error, WORST) == charged


def test_a_refusal_anywhere_in_the_chain_is_never_sent() -> None:
    wrapped = OSError("urlopen error")
    wrapped.__context__ = ConnectionRefusedError(111, "refused")
    assert failure_cost(wrapped, WORST) == 0.0


# -- the billing rule against real servers ---------------------------------------------------

KEY = "sk-" + "paid-test-5c0d"
MODEL = "openai/gpt-4o-mini"
PRICES = {MODEL: {"input": 1.0, "output": 4.0}}


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    config = SimulatorConfig(api_key=KEY, hang_seconds=5.0)
    with Simulator(config) as simulator:
        yield simulator


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def llm_charge(base_url: str, fault: str, call_timeout: float = 60.0) -> tuple[float, float]:
    """What a failed ctx.llm-style call is charged, and its worst case."""
    config = JobConfig(
        source=[],
        model=MODEL,
        base_url=base_url,
        prices=PRICES,
        budget=1.0,
        cache=False,
        call_timeout=call_timeout,
    )
    spec = build_step_spec(config, MODEL, {"OPENAI_API_KEY": KEY}, 4)
    request = conversation_request(
        None, [{"role": "user", "content": "hello"}], OutputSchema.text(), key="k", structured=False
    )
    budget = Budget(1.0)

    async def ask() -> None:
        session = LLMSession(spec, budget=budget)
        try:
            await session.step(
                request,
                OutputSchema.text(),
                key="k",
                step_key="step",
                usage=ItemUsage(),
                max_tokens=64,
                params={"extra_headers": {"x-sim-fault": fault}},
                cache=False,
            )
        finally:
            await session.aclose()

    with pytest.raises(ProviderError):
        asyncio.run(ask())
    assert budget.reserved == 0.0
    price = find_price("openai", "gpt-4o-mini", spec.prices)
    assert price is not None
    return budget.spent, worst_case_cost(price, upper_bound_tokens(request.texts()), 64)


def test_llm_a_5xx_answer_costs_nothing(sim: Simulator) -> None:
    spent, _ = llm_charge(sim.openai_base_url, "500")
    assert spent == 0.0


def test_llm_a_connection_reset_after_sending_costs_its_worst_case(sim: Simulator) -> None:
    spent, worst = llm_charge(sim.openai_base_url, "reset")
    assert worst > 0
    assert spent == pytest.approx(worst)


def test_llm_a_timeout_costs_its_worst_case(sim: Simulator) -> None:
    spent, worst = llm_charge(sim.openai_base_url, "hang", call_timeout=0.2)
    assert spent == pytest.approx(worst)


def test_llm_a_refused_connection_costs_nothing() -> None:
    spent, _ = llm_charge(f"http://127.0.0.1:{closed_port()}/v1", "none")
    assert spent == 0.0


def search(url: str, fault: str, timeout: float = 30.0) -> Any:
    """A ctx.call function as users write them: urllib, errors raised as they come."""
    body = json.dumps({"query": "rowpilot", "max_results": 1}).encode()
    headers = {
        "content-type": "application/json",
        "authorization": f"Bearer {KEY}",
        "x-sim-fault": fault,
    }
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        error.close()  # its status and headers stay readable; its socket is let go
        raise


def call_charge(url: str, fault: str, timeout: float = 30.0) -> tuple[float, Steps]:
    """What one ``ctx.call`` (cost=COST, one attempt) is charged, success or failure."""
    config = JobConfig(source=[], budget=1.0, max_attempts=1)
    made: list[Steps] = []

    async def call() -> None:
        with tempfile.TemporaryDirectory() as state:
            scope = RunScope(
                Registry(Path(state)), Counters(), EventLog(None, "run"), "run", Slots(4)
            )
            made.append(Steps(config, scope, environ={}))
            await charge(made[0])

    async def charge(steps: Steps) -> None:
        try:
            await steps.call(
                ItemUsage(),
                StepTrail(),
                "search",
                search,
                (url, fault, timeout),
                {},
                cost=COST,
                journal=False,
            )
        finally:
            await steps.aclose()

    with contextlib.suppress(Exception):  # the charge is what is under test
        asyncio.run(call())
    steps = made[0]
    assert steps.budget.reserved == 0.0
    return steps.budget.spent, steps


def test_call_a_5xx_answer_costs_nothing(sim: Simulator) -> None:
    assert call_charge(sim.search_url, "500")[0] == 0.0


def test_call_a_connection_reset_after_sending_costs_its_worst_case(sim: Simulator) -> None:
    assert call_charge(sim.search_url, "reset")[0] == COST


def test_call_a_timeout_costs_its_worst_case(sim: Simulator) -> None:
    assert call_charge(sim.search_url, "hang", timeout=0.2)[0] == COST


def test_call_a_refused_connection_costs_nothing() -> None:
    assert call_charge(f"http://127.0.0.1:{closed_port()}/search", "none")[0] == 0.0


def test_call_an_answer_costs_its_price(sim: Simulator) -> None:
    assert call_charge(sim.search_url, "none")[0] == COST


class _LimitedOnce(http.server.BaseHTTPRequestHandler):
    """A 429 with ``Retry-After: 0`` for the first request, then a JSON answer."""

    answered = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with self.lock:
            first = type(self).answered == 0
            type(self).answered += 1
        body = b'{"error": "slow down"}' if first else b'{"results": []}'
        self.send_response(429 if first else 200)
        if first:
            self.send_header("Retry-After", "0")
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet


def test_call_a_429_is_waited_out_and_only_the_answer_is_charged() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LimitedOnce)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/search"
        spent, steps = call_charge(url, "none")
    finally:
        server.shutdown()
        server.server_close()
    assert spent == COST
    assert steps.resource("search").stats()["rate_limited"] == 1
    assert _LimitedOnce.answered == 2
