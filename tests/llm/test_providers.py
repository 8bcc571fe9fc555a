"""Tests for rowpilot.llm.providers: the error boundary, model names and ChatClient.

The client tests run against the real simulator through the official SDKs.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import json
import pickle
import socket
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import anthropic
import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletion

from rowpilot.errors import ConfigError, RowpilotError
from rowpilot.llm.providers import (
    BadRequestError,
    ChatClient,
    Completion,
    ContentFilterError,
    InvalidOutputError,
    ModelNotFoundError,
    OutputTruncatedError,
    ProviderAuthError,
    ProviderConnectionError,
    ProviderError,
    ProviderServerError,
    ProviderSpec,
    ProviderTimeoutError,
    RateLimitError,
    _openai_cached,
    accounting_rule,
    map_anthropic_error,
    map_openai_error,
    parse_model,
)
from rowpilot.simulator.server import Simulator, SimulatorConfig

T = TypeVar("T")

# A fake key, assembled so that secret scanners do not take this file for a leak.
CANARY = "sk-" + "canary-0123456789abcdef"
GPT = "gpt-4o-mini"
CLAUDE = "claude-haiku-4-5"
KINDS = ("openai", "anthropic")
# A hang outlasts any test (the simulator's stop cancels it); only the client's timeout can
# end it. Every other fault gets a timeout no loaded machine reaches, so it cannot be
# mistaken for one.
HANG_SECONDS = 600.0
HANG_TIMEOUT = 0.5
CLIENT_TIMEOUT = 60.0

ERROR_CLASSES: tuple[type[ProviderError], ...] = (
    ProviderError,
    RateLimitError,
    ProviderAuthError,
    ProviderTimeoutError,
    ProviderConnectionError,
    ProviderServerError,
    BadRequestError,
    ModelNotFoundError,
    ContentFilterError,
    OutputTruncatedError,
    InvalidOutputError,
)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    config = SimulatorConfig(api_key=CANARY, hang_seconds=HANG_SECONDS)
    with Simulator(config) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def limited() -> Iterator[Simulator]:
    """One request a second per model: the second of a burst gets a 429."""
    config = SimulatorConfig(
        api_key=CANARY, rpm=60, window_s=1.0, models=(GPT, CLAUDE, "gpt-headers", "claude-headers")
    )
    with Simulator(config) as simulator:
        yield simulator


def spec_for(simulator: Simulator, kind: str) -> ProviderSpec:
    if kind == "openai":
        return ProviderSpec("sim-openai", "openai", simulator.openai_base_url, "SIM_KEY")
    return ProviderSpec("sim-anthropic", "anthropic", simulator.anthropic_base_url, "SIM_KEY")


def model_for(kind: str) -> str:
    return GPT if kind == "openai" else CLAUDE


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def call(
    simulator: Simulator,
    kind: str,
    *,
    key: str = CANARY,
    model: str | None = None,
    prompt: str = "hello world",
    max_tokens: int = 64,
    fault: str | None = None,
    json_schema: dict[str, Any] | None = None,
    timeout: float = 10.0,
    raise_on_length: bool = False,
) -> Completion:
    params: dict[str, Any] = {}
    if fault is not None:
        params["extra_headers"] = {"x-sim-fault": fault}
    client = ChatClient(
        spec_for(simulator, kind),
        model or model_for(kind),
        api_key=key,
        timeout=timeout,
        raise_on_length=raise_on_length,
    )
    try:
        return await client.complete(
            [{"role": "user", "content": prompt}],
            system=None,
            max_tokens=max_tokens,
            json_schema=json_schema,
            params=params,
        )
    finally:
        await client.aclose()


def assert_no_canary(exc: BaseException) -> None:
    for text in (str(exc), repr(exc), exc.args.__repr__()):
        assert CANARY not in text
    if exc.__cause__ is not None:
        assert CANARY not in str(exc.__cause__)
        assert CANARY not in repr(exc.__cause__)


# --------------------------------------------------------------------------- the walk

REQUEST = httpx2.Request("POST", "https://api.example.test/v1/chat/completions")


def _response(status: int) -> httpx2.Response:
    return httpx2.Response(status, request=REQUEST, headers={"retry-after": "1.5"})


def _exception_classes(module: Any) -> list[type[BaseException]]:
    """Every exception class the SDK module exports (its own, not re-exported builtins)."""
    return sorted(
        (
            value
            for value in list(vars(module).values())
            if isinstance(value, type)
            and issubclass(value, BaseException)
            and value.__module__.split(".")[0] == module.__name__
        ),
        key=lambda cls: cls.__name__,
    )


def _build(cls: type[BaseException]) -> BaseException:
    """An instance of an SDK exception class, whatever its constructor wants."""
    status = getattr(cls, "status_code", None)
    if not isinstance(status, int):
        # InternalServerError has no class status; the bare APIStatusError gets a teapot.
        status = 500 if "InternalServer" in cls.__name__ else 418
    values: dict[str, Any] = {
        "message": f"boom from {cls.__name__}",
        "request": REQUEST,
        "response": _response(status),
        "body": None,
        "completion": ChatCompletion.model_construct(usage=None),
        "unsent_messages": [],
    }
    params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return cls(f"boom from {cls.__name__}")
    kwargs = {p.name: values[p.name] for p in params if p.name in values}
    return cls(**kwargs)


# Exported classes that cannot be built (abstract, or need state a test cannot make).
# None today: every class exported by openai 3.x and anthropic 2.x is built below.
UNBUILDABLE: dict[str, str] = {}


@pytest.mark.parametrize(
    ("module", "mapper"),
    [(openai, map_openai_error), (anthropic, map_anthropic_error)],
    ids=["openai", "anthropic"],
)
def test_every_sdk_exception_is_mapped(module: Any, mapper: Any) -> None:
    classes = _exception_classes(module)
    assert len(classes) > 10
    unmapped: list[str] = []
    for cls in classes:
        if cls.__name__ in UNBUILDABLE:
            continue
        exc = _build(cls)
        mapped = mapper(exc, provider=module.__name__, model="m")
        assert isinstance(mapped, ProviderError), cls
        if type(mapped) is ProviderError:
            unmapped.append(cls.__name__)
        assert mapped.provider == module.__name__
        assert mapped.model == "m"
    assert unmapped == [], f"SDK exceptions without a specific ProviderError: {unmapped}"


@pytest.mark.parametrize("mapper", [map_openai_error, map_anthropic_error])
def test_an_unknown_sdk_subclass_maps_to_the_bare_base(mapper: Any) -> None:
    """The guard the walk relies on: a class the mapping does not know is visible."""

    class NewOpenAIError(openai.OpenAIError):
        pass

    class NewAnthropicError(anthropic.AnthropicError):
        pass

    exc = NewOpenAIError("new") if mapper is map_openai_error else NewAnthropicError("new")
    assert type(mapper(exc, provider="p", model="m")) is ProviderError


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (openai.APITimeoutError(REQUEST), ProviderTimeoutError),
        (openai.APIConnectionError(request=REQUEST), ProviderConnectionError),
        (openai.RateLimitError("x", response=_response(429), body=None), RateLimitError),
        (openai.AuthenticationError("x", response=_response(401), body=None), ProviderAuthError),
        (openai.PermissionDeniedError("x", response=_response(403), body=None), ProviderAuthError),
        (openai.NotFoundError("x", response=_response(404), body=None), ModelNotFoundError),
        (openai.BadRequestError("x", response=_response(400), body=None), BadRequestError),
        (
            openai.BadRequestError("x", response=_response(400), body={"code": "content_filter"}),
            ContentFilterError,
        ),
        (
            openai.UnprocessableEntityError("x", response=_response(422), body=None),
            BadRequestError,
        ),
        (openai.ConflictError("x", response=_response(409), body=None), ProviderServerError),
        (
            openai.InternalServerError("x", response=_response(503), body=None),
            ProviderServerError,
        ),
        (
            openai.APIResponseValidationError(_response(200), body=None),
            InvalidOutputError,
        ),
        (
            openai.LengthFinishReasonError(completion=ChatCompletion.model_construct(usage=None)),
            OutputTruncatedError,
        ),
        (openai.ContentFilterFinishReasonError(), ContentFilterError),
        (json.JSONDecodeError("Expecting value", "<html>", 0), InvalidOutputError),
        (ValueError("not json"), InvalidOutputError),
        (httpx2.ReadTimeout("slow", request=REQUEST), ProviderTimeoutError),
        (httpx2.ConnectError("refused", request=REQUEST), ProviderConnectionError),
        (httpx2.RemoteProtocolError("reset", request=REQUEST), ProviderConnectionError),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_openai_most_specific_class(exc: BaseException, expected: type[ProviderError]) -> None:
    mapped = map_openai_error(exc, provider="openai", model=GPT)
    assert type(mapped) is expected


@pytest.mark.parametrize(
    ("cls", "status", "expected"),
    [
        (anthropic.RateLimitError, 429, RateLimitError),
        (anthropic.AuthenticationError, 401, ProviderAuthError),
        (anthropic.PaymentRequiredError, 402, ProviderAuthError),
        (anthropic.NotFoundError, 404, ModelNotFoundError),
        (anthropic.RequestTimeoutError, 408, ProviderTimeoutError),
        (anthropic.RequestTooLargeError, 413, BadRequestError),
        (anthropic.OverloadedError, 529, ProviderServerError),
        (anthropic.ServiceUnavailableError, 503, ProviderServerError),
        (anthropic.GatewayTimeoutError, 504, ProviderTimeoutError),
        (anthropic.ClientClosedRequestError, 499, ProviderConnectionError),
    ],
)
def test_anthropic_most_specific_class(
    cls: type[anthropic.APIStatusError], status: int, expected: type[ProviderError]
) -> None:
    mapped = map_anthropic_error(
        cls("x", response=_response(status), body=None), provider="anthropic", model=CLAUDE
    )
    assert type(mapped) is expected
    assert mapped.status == status
    assert mapped.retry_after == 1.5


def test_anthropic_transport_and_client_errors() -> None:
    def mapped(exc: BaseException) -> type[ProviderError]:
        return type(map_anthropic_error(exc, provider="anthropic", model=CLAUDE))

    assert mapped(anthropic.APITimeoutError(REQUEST)) is ProviderTimeoutError
    assert mapped(anthropic.APIConnectionError(request=REQUEST)) is ProviderConnectionError
    assert mapped(anthropic.CredentialsError("no key")) is ProviderAuthError
    assert mapped(httpx2.PoolTimeout("pool")) is ProviderTimeoutError
    assert mapped(httpx2.ReadError("broken")) is ProviderConnectionError
    assert mapped(json.JSONDecodeError("Expecting value", "x", 0)) is InvalidOutputError


@pytest.mark.parametrize("mapper", [map_openai_error, map_anthropic_error])
def test_foreign_exceptions_are_not_swallowed(mapper: Any) -> None:
    bug = KeyError("a bug in rowpilot")
    with pytest.raises(TypeError, match="not a provider exception") as info:
        mapper(bug, provider="p", model="m")
    assert info.value.__cause__ is bug


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_headers(headers: dict[str, str], expected: float | None) -> None:
    response = httpx2.Response(429, request=REQUEST, headers=headers)
    exc = openai.RateLimitError("slow down", response=response, body=None)
    assert map_openai_error(exc, provider="openai", model=GPT).retry_after == expected


def test_retry_after_http_date() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    response = httpx2.Response(429, request=REQUEST, headers={"retry-after": when})
    exc = anthropic.RateLimitError("slow down", response=response, body=None)
    retry_after = map_anthropic_error(exc, provider="anthropic", model=CLAUDE).retry_after
    assert retry_after is not None
    assert 20 < retry_after <= 31


def test_the_key_is_redacted_from_the_error_and_its_cause() -> None:
    body = {"message": f"Incorrect API key provided: {CANARY}", "code": "invalid_api_key"}
    exc = openai.AuthenticationError(
        f"Error code: 401 - {body}", response=_response(401), body=body
    )
    mapped = map_openai_error(exc, provider="openai", model=GPT, secret=CANARY)
    mapped.__cause__ = exc
    assert isinstance(mapped, ProviderAuthError)
    assert "[REDACTED]" in str(mapped)
    assert_no_canary(mapped)


# --------------------------------------------------------------------------- error classes


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_errors_pickle_with_every_attribute(cls: type[ProviderError], protocol: int) -> None:
    error = cls(
        "it failed",
        provider="openai",
        model=GPT,
        status=503,
        retry_after=2.5,
        hint="wait",
        row=3,
        key="k3",
    )
    copy = pickle.loads(pickle.dumps(error, protocol=protocol))
    assert type(copy) is cls
    for name in ("message", "provider", "model", "status", "retry_after", "hint", "row", "key"):
        assert getattr(copy, name) == getattr(error, name), name
    assert str(copy) == str(error)
    assert copy.retryable is cls.retryable
    assert copy.cause == cls.cause


def test_a_mapped_error_pickles_with_its_status_and_retry_after() -> None:
    exc = openai.RateLimitError("slow down", response=_response(429), body=None)
    error = map_openai_error(exc, provider="openai", model=GPT)
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.status, copy.retry_after, str(copy)) == (
        RateLimitError,
        429,
        1.5,
        str(error),
    )


def test_error_classes_causes_and_retryable() -> None:
    expected = {
        RateLimitError: ("rate_limit", True),
        ProviderAuthError: ("auth", False),
        ProviderTimeoutError: ("timeout", True),
        ProviderConnectionError: ("connection", True),
        ProviderServerError: ("server", True),
        BadRequestError: ("bad_request", False),
        ModelNotFoundError: ("not_found", False),
        ContentFilterError: ("content_filter", False),
        OutputTruncatedError: ("length", False),
        InvalidOutputError: ("invalid_output", True),
    }
    for cls, (cause, retryable) in expected.items():
        assert issubclass(cls, ProviderError)
        assert issubclass(cls, RowpilotError)
        assert (cls.cause, cls.retryable) == (cause, retryable), cls


# --------------------------------------------------------------------------- parse_model


@pytest.mark.parametrize(
    ("name", "provider", "kind", "base_url", "env", "model"),
    [
        ("openai/gpt-4o-mini", "openai", "openai", None, "OPENAI_API_KEY", "gpt-4o-mini"),
        (
            "anthropic/claude-haiku-4-5",
            "anthropic",
            "anthropic",
            None,
            "ANTHROPIC_API_KEY",
            "claude-haiku-4-5",
        ),
        (
            "openrouter/meta-llama/llama-3.1-8b-instruct",
            "openrouter",
            "openai",
            "https://openrouter.ai/api/v1",
            "OPENROUTER_API_KEY",
            "meta-llama/llama-3.1-8b-instruct",
        ),
        (
            "together/meta-llama/Llama-3-8b-chat-hf",
            "together",
            "openai",
            "https://api.together.xyz/v1",
            "TOGETHER_API_KEY",
            "meta-llama/Llama-3-8b-chat-hf",
        ),
        (
            "groq/llama-3.1-8b-instant",
            "groq",
            "openai",
            "https://api.groq.com/openai/v1",
            "GROQ_API_KEY",
            "llama-3.1-8b-instant",
        ),
        ("ollama/llama3.2", "ollama", "openai", "http://localhost:11434/v1", None, "llama3.2"),
    ],
)
def test_parse_model(
    name: str, provider: str, kind: str, base_url: str | None, env: str | None, model: str
) -> None:
    spec, parsed = parse_model(name)
    assert (spec.name, spec.kind, spec.base_url, spec.api_key_env, parsed) == (
        provider,
        kind,
        base_url,
        env,
        model,
    )


def test_parse_model_custom_providers() -> None:
    local = ProviderSpec("local", "anthropic", "http://127.0.0.1:9999", "LOCAL_KEY")
    assert parse_model("local/claude-x", {"local": local}) == (local, "claude-x")
    mine = ProviderSpec("openai", "openai", "http://proxy.test/v1", "PROXY_KEY")
    assert parse_model("openai/gpt-4o", {"openai": mine}) == (mine, "gpt-4o")


@pytest.mark.parametrize("name", ["mistral/large", "gpt-4o-mini", "openai/", "/gpt-4o"])
def test_parse_model_errors(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_model(name)
    assert info.value.hint is not None
    for known in ("anthropic", "groq", "ollama", "openai", "openrouter", "together"):
        assert known in info.value.hint


def test_spec_is_frozen() -> None:
    spec, _ = parse_model("openai/gpt-4o")
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]


# --------------------------------------------------------------------------- ChatClient


def test_the_key_comes_from_the_environment(sim: Simulator) -> None:
    spec = spec_for(sim, "openai")

    async def go() -> Completion:
        client = ChatClient(spec, GPT, environ={"SIM_KEY": CANARY})
        try:
            assert CANARY not in repr(client)
            assert CANARY not in str(client)
            return await client.complete(
                [{"role": "user", "content": "hi"}],
                system=None,
                max_tokens=16,
                json_schema=None,
                params={},
            )
        finally:
            await client.aclose()

    assert run(go()).text.startswith("Answer ")


def test_a_missing_key_is_a_config_error(sim: Simulator) -> None:
    with pytest.raises(ConfigError, match="SIM_KEY"):
        ChatClient(spec_for(sim, "openai"), GPT, environ={})


@pytest.mark.parametrize("kind", KINDS)
def test_chat_returns_text_usage_and_headers(sim: Simulator, kind: str) -> None:
    completion = run(call(sim, kind, prompt="the quick brown fox"))
    assert completion.text.startswith("Answer ")
    assert "THE QUICK BROWN FOX" in completion.text
    assert completion.input_tokens > 0
    assert completion.output_tokens > 0
    assert completion.finish_reason == "stop"
    assert completion.raw_model == model_for(kind)
    assert completion.headers
    assert all(name == name.lower() for name in completion.headers)
    assert ("x-request-id" if kind == "openai" else "request-id") in completion.headers


@pytest.mark.parametrize("kind", KINDS)
def test_chat_with_a_system_prompt_and_json_schema(sim: Simulator, kind: str) -> None:
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string"}, "pages": {"type": "integer"}},
        "required": ["title", "pages"],
    }

    async def go() -> Completion:
        client = ChatClient(spec_for(sim, kind), model_for(kind), api_key=CANARY)
        try:
            return await client.complete(
                [{"role": "user", "content": "a short book"}],
                system="You extract fields.",
                max_tokens=128,
                json_schema=schema,
                params={"temperature": 0},
            )
        finally:
            await client.aclose()

    answer = json.loads(run(go()).text)
    assert answer == {"title": "A SHORT BOOK", "pages": len("a short book")}


@pytest.mark.parametrize("kind", KINDS)
def test_rate_limit_headers_are_returned(limited: Simulator, kind: str) -> None:
    model = "gpt-headers" if kind == "openai" else "claude-headers"
    completion = run(call(limited, kind, model=model))
    if kind == "openai":
        assert "x-ratelimit-remaining-requests" in completion.headers
    else:
        assert "anthropic-ratelimit-requests-remaining" in completion.headers


@pytest.mark.parametrize("kind", KINDS)
def test_length_is_a_finish_reason_unless_asked_to_raise(sim: Simulator, kind: str) -> None:
    prompt = " ".join(f"word{i}" for i in range(40))
    completion = run(call(sim, kind, prompt=prompt, max_tokens=2))
    assert completion.finish_reason == "length"
    with pytest.raises(OutputTruncatedError) as info:
        run(call(sim, kind, prompt=prompt, max_tokens=2, raise_on_length=True))
    assert info.value.retryable is False
    assert info.value.cause == "length"


FAULTS: list[tuple[str, type[ProviderError], bool]] = [
    ("500", ProviderServerError, True),
    ("503", ProviderServerError, True),
    ("hang", ProviderTimeoutError, True),
    ("reset", ProviderConnectionError, True),
    ("malformed", InvalidOutputError, True),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("fault", "expected", "retryable"), FAULTS, ids=[f[0] for f in FAULTS])
def test_forced_faults(
    sim: Simulator, kind: str, fault: str, expected: type[ProviderError], retryable: bool
) -> None:
    timeout = HANG_TIMEOUT if fault == "hang" else CLIENT_TIMEOUT
    with pytest.raises(ProviderError) as info:
        run(call(sim, kind, fault=fault, timeout=timeout))
    assert type(info.value) is expected
    assert info.value.retryable is retryable
    assert info.value.provider == spec_for(sim, kind).name
    assert info.value.model == model_for(kind)
    assert info.value.__cause__ is not None
    assert_no_canary(info.value)
    if fault in {"500", "503"}:
        assert info.value.status == int(fault)


@pytest.mark.parametrize("kind", KINDS)
def test_a_wrong_key_fails_preflight_and_complete(sim: Simulator, kind: str) -> None:
    wrong = CANARY + "-wrong"

    async def go() -> list[ProviderError]:
        client = ChatClient(spec_for(sim, kind), model_for(kind), api_key=wrong)
        errors: list[ProviderError] = []
        try:
            for attempt in (
                client.preflight(),
                client.complete(
                    [{"role": "user", "content": "hi"}],
                    system=None,
                    max_tokens=8,
                    json_schema=None,
                    params={},
                ),
            ):
                with pytest.raises(ProviderAuthError) as info:
                    await attempt
                errors.append(info.value)
        finally:
            assert wrong not in repr(client)
            await client.aclose()
        return errors

    errors = run(go())
    assert len(errors) == 2
    for error in errors:
        assert error.status == 401
        assert error.retryable is False
        assert wrong not in str(error)
        assert wrong not in repr(error)
        assert_no_canary(error)


@pytest.mark.parametrize("kind", KINDS)
def test_preflight_passes_with_the_right_key(sim: Simulator, kind: str) -> None:
    async def go() -> None:
        client = ChatClient(spec_for(sim, kind), model_for(kind), api_key=CANARY)
        try:
            await client.preflight()
        finally:
            await client.aclose()

    run(go())


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("kind", KINDS)
def test_preflight_on_a_closed_port_is_a_connection_error(kind: str) -> None:
    base = f"http://127.0.0.1:{_closed_port()}"
    spec = ProviderSpec("nowhere", kind, f"{base}/v1" if kind == "openai" else base, None)  # type: ignore[arg-type]

    async def go() -> None:
        client = ChatClient(spec, model_for(kind), api_key=CANARY, timeout=2.0)
        try:
            await client.preflight()
        finally:
            await client.aclose()

    with pytest.raises(ProviderConnectionError) as info:
        run(go())
    # Refused at once: a client that waited out its timeout would raise ProviderTimeoutError.
    assert type(info.value) is ProviderConnectionError
    assert info.value.retryable is True
    assert_no_canary(info.value)


@pytest.mark.parametrize("kind", KINDS)
def test_an_unknown_model_is_model_not_found(sim: Simulator, kind: str) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        run(call(sim, kind, model="no-such-model"))
    assert info.value.status == 404
    assert info.value.retryable is False
    assert info.value.model == "no-such-model"
    assert_no_canary(info.value)


@pytest.mark.parametrize("kind", KINDS)
def test_a_burst_gets_rate_limited_with_retry_after(limited: Simulator, kind: str) -> None:
    async def burst() -> list[Completion | BaseException]:
        client = ChatClient(spec_for(limited, kind), model_for(kind), api_key=CANARY)
        try:
            return await asyncio.gather(
                *(
                    client.complete(
                        [{"role": "user", "content": f"row {i}"}],
                        system=None,
                        max_tokens=8,
                        json_schema=None,
                        params={},
                    )
                    for i in range(4)
                ),
                return_exceptions=True,
            )
        finally:
            await client.aclose()

    outcomes = run(burst())
    limited_errors = [o for o in outcomes if isinstance(o, RateLimitError)]
    assert limited_errors, outcomes
    assert all(isinstance(o, Completion | RateLimitError) for o in outcomes), outcomes
    for error in limited_errors:
        assert error.status == 429
        assert error.retryable is True
        assert error.retry_after is not None
        assert error.retry_after > 0
        assert_no_canary(error)


# -- token accounting -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "rule"),
    [
        (ProviderSpec("openai", "openai", None, "OPENAI_API_KEY"), "admission"),
        (
            ProviderSpec("az", "openai", "https://team.openai.azure.com/openai/v1", None),
            "admission",
        ),
        (ProviderSpec("anthropic", "anthropic", None, "ANTHROPIC_API_KEY"), "usage"),
        (ProviderSpec("a", "anthropic", "https://api.anthropic.com", None), "usage"),
        (ProviderSpec("groq", "openai", "https://api.groq.com/openai/v1", None), "learn"),
        (ProviderSpec("local", "openai", "http://127.0.0.1:8000/v1", None), "learn"),
        (ProviderSpec("sim", "anthropic", "http://127.0.0.1:9/", None), "learn"),
        (ProviderSpec("fake", "openai", "https://api.openai.com.example.net/v1", None), "learn"),
    ],
)
def test_the_accounting_rule_comes_from_the_provider_and_its_host(
    spec: ProviderSpec, rule: str
) -> None:
    chosen, why = accounting_rule(spec)
    assert chosen == rule
    assert why


def test_cache_reads_are_read_from_either_sdks_usage() -> None:
    usage = openai.types.CompletionUsage(
        prompt_tokens=100,
        completion_tokens=5,
        total_tokens=105,
        prompt_tokens_details={"cached_tokens": 60},
    )
    assert _openai_cached(usage) == 60
    assert (
        _openai_cached(
            openai.types.CompletionUsage(prompt_tokens=1, completion_tokens=1, total_tokens=2)
        )
        == 0
    )
    # OpenAI's prompt_tokens hold the cache reads; Anthropic's input_tokens leave them out.
    openai_answer = Completion("x", 100, 5, "stop", "m", {}, cached_tokens=60)
    anthropic_answer = Completion("x", 40, 5, "stop", "m", {}, cached_tokens=60, cache_apart=True)
    assert openai_answer.prompt_tokens == anthropic_answer.prompt_tokens == 100
