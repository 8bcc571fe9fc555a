"""The provider layer: model names, chat clients and the one boundary for provider errors.

``parse_model("openai/gpt-4o-mini")`` names a provider and a model; ``ChatClient`` talks to
it through the official async SDK (``max_retries=0``: rowpilot owns retries) and returns a
``Completion`` with the text, the token usage and the response headers (lowercase, for the
rate-limit headers). Every exception the SDKs or their transport raise goes through
``map_openai_error`` / ``map_anthropic_error`` and comes out as the most specific
``ProviderError``, raised ``from`` the original.

The classes live in ``rowpilot.errors`` (the one tree); this module decides which applies.

The API key never appears in a message, a repr or a log line: it is redacted wherever it
is echoed back (and in the SDK exception chained as ``__cause__``).
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import httpx2
import pydantic

from rowpilot._secrets import REDACTED, redact_secret, redact_urls
from rowpilot.errors import (
    BadRequestError,
    ConfigError,
    ContentFilterError,
    InvalidOutputError,
    ModelNotFoundError,
    OutputTruncatedError,
    ProviderAuthError,
    ProviderConnectionError,
    ProviderError,
    ProviderServerError,
    ProviderTimeoutError,
    RateLimitError,
)
from rowpilot.llm.limits import Accounting, parse_retry_after

if TYPE_CHECKING:
    import anthropic
    import openai

__all__ = [
    "BadRequestError",
    "ChatClient",
    "Completion",
    "ContentFilterError",
    "InvalidOutputError",
    "ModelNotFoundError",
    "OutputTruncatedError",
    "ProviderAuthError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderServerError",
    "ProviderSpec",
    "ProviderTimeoutError",
    "RateLimitError",
    "map_anthropic_error",
    "map_openai_error",
    "parse_model",
]


# --------------------------------------------------------------------------- errors


# --------------------------------------------------------------------------- mapping


def _redact(text: str, secret: str | None) -> str:
    """The key (when long enough to be one) and any URL's credentials, replaced."""
    return redact_urls(redact_secret(text, secret))


def _scrub(exc: BaseException, secret: str | None) -> None:
    """Redact the secret from the SDK exception too: it is chained as ``__cause__``."""
    if not secret:
        return
    exc.args = tuple(_redact(a, secret) if isinstance(a, str) else a for a in exc.args)
    message = getattr(exc, "message", None)
    if isinstance(message, str):
        with contextlib.suppress(AttributeError):  # a read-only message stays as it is
            exc.message = _redact(message, secret)  # type: ignore[attr-defined]


# Raised before a byte of the request left: the provider cannot have billed the call.
_NEVER_SENT = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout)


def _was_sent(exc: BaseException) -> bool:
    """False when the SDK's exception, or the transport error it wraps, says the request
    never left (the SDKs chain the httpx2 error as ``__cause__``)."""
    return not any(isinstance(e, _NEVER_SENT) for e in (exc, exc.__cause__, exc.__context__))


def _response_of(exc: BaseException) -> httpx2.Response | None:
    response = getattr(exc, "response", None)
    return response if isinstance(response, httpx2.Response) else None


def _class_for_status(status: int, body_code: str | None) -> type[ProviderError]:
    if body_code in {"content_filter", "content_policy_violation"}:
        return ContentFilterError
    if status == 429:
        return RateLimitError
    if status in {401, 402, 403}:
        return ProviderAuthError
    if status == 404:
        return ModelNotFoundError
    if status in {408, 504}:
        return ProviderTimeoutError
    if status == 409:
        return ProviderServerError  # both SDKs retry conflicts (lock timeouts)
    if status == 499:
        return ProviderConnectionError  # the client closed the request
    if status >= 500:
        return ProviderServerError
    return BadRequestError


def _body_code(exc: BaseException) -> str | None:
    for name in ("code", "type"):
        value = getattr(exc, name, None)
        if isinstance(value, str):
            return value
    return None


def _status_code(exc: BaseException) -> int | None:
    value = getattr(exc, "status_code", None)
    return value if isinstance(value, int) else None


def _transport_class(exc: BaseException) -> type[ProviderError] | None:
    """The class for an httpx2 / JSON exception, shared by both SDKs."""
    if isinstance(exc, httpx2.TimeoutException):
        return ProviderTimeoutError
    if isinstance(exc, httpx2.DecodingError):
        return InvalidOutputError
    if isinstance(exc, httpx2.TransportError):
        return ProviderConnectionError
    if isinstance(exc, httpx2.HTTPStatusError):
        return _class_for_status(exc.response.status_code, None)
    if isinstance(exc, httpx2.HTTPError):
        return ProviderConnectionError
    if isinstance(exc, ValueError):  # json.JSONDecodeError, pydantic.ValidationError
        return InvalidOutputError
    return None


def _openai_class(exc: BaseException) -> type[ProviderError] | None:
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return ProviderTimeoutError
    if isinstance(exc, openai.APIConnectionError):
        return ProviderConnectionError
    if isinstance(exc, openai.APIResponseValidationError):
        return InvalidOutputError
    if isinstance(exc, openai.APIStatusError):
        return _class_for_status(exc.status_code, _body_code(exc))
    if isinstance(exc, openai.APIError):
        return ProviderServerError  # an error event without a status (streams)
    return _openai_client_class(exc)


def _openai_client_class(exc: BaseException) -> type[ProviderError] | None:
    """The openai exceptions raised by the client itself rather than for a response."""
    import openai

    if isinstance(exc, openai.LengthFinishReasonError):
        return OutputTruncatedError
    if isinstance(exc, openai.ContentFilterFinishReasonError):
        return ContentFilterError
    if isinstance(exc, openai.WebSocketConnectionClosedError | openai.WebSocketQueueFullError):
        return ProviderConnectionError
    sdk_exceptions = cast(Any, openai)._exceptions
    if isinstance(exc, sdk_exceptions.SubjectTokenProviderError):
        return ProviderAuthError
    if isinstance(exc, openai.InvalidWebhookSignatureError):
        return BadRequestError
    if type(exc).__name__ == "_AmbiguousModuleClientUsageError":
        return BadRequestError  # the module-level client used with several providers
    if type(exc) is openai.OpenAIError:
        # Raised bare by the client itself, e.g. "The api_key client option must be set".
        return ProviderAuthError if "api_key" in str(exc) else BadRequestError
    if isinstance(exc, openai.OpenAIError):
        return ProviderError  # a class this module does not know: the walk test fails
    return _transport_class(exc)


def _anthropic_class(exc: BaseException) -> type[ProviderError] | None:
    import anthropic

    if isinstance(exc, anthropic.APITimeoutError):
        return ProviderTimeoutError
    if isinstance(exc, anthropic.APIConnectionError):
        return ProviderConnectionError
    if isinstance(exc, anthropic.APIResponseValidationError):
        return InvalidOutputError
    if isinstance(exc, anthropic.APIWebhookValidationError):
        return BadRequestError
    if isinstance(exc, anthropic.APIStatusError):
        return _class_for_status(exc.status_code, None)
    if isinstance(exc, anthropic.APIError):
        return ProviderServerError
    if isinstance(exc, anthropic.RetryableError):
        return ProviderServerError  # raised by middleware to ask for a retry
    if isinstance(exc, anthropic.CredentialsError | anthropic.WorkloadIdentityError):
        return ProviderAuthError
    if type(exc) is anthropic.AnthropicError:
        # Raised bare by the client itself, e.g. no API key could be resolved.
        text = str(exc).lower()
        return ProviderAuthError if "api_key" in text or "auth" in text else BadRequestError
    if isinstance(exc, anthropic.AnthropicError):
        return ProviderError  # a class this module does not know: the walk test fails
    return _transport_class(exc)


def _body_message(body: object) -> str | None:
    """The provider's own message from an error body (either provider's shape)."""
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return cast(str, inner["message"])
        if isinstance(body.get("message"), str):
            return cast(str, body["message"])
    return None


def _build(
    cls: type[ProviderError],
    exc: BaseException,
    *,
    provider: str,
    model: str | None,
    secret: str | None,
) -> ProviderError:
    _scrub(exc, secret)
    response = _response_of(exc)
    status = _status_code(exc)
    if status is None and response is not None:
        status = response.status_code
    retry_after = parse_retry_after(response.headers) if response is not None else None
    message = _body_message(getattr(exc, "body", None)) or getattr(exc, "message", None)
    if not isinstance(message, str) or not message:
        message = str(exc) or type(exc).__name__
    message = _redact(f"{type(exc).__name__}: {message}", secret)
    error = cls(
        message,
        provider=provider,
        model=model,
        status=status,
        retry_after=retry_after,
        sent=_was_sent(exc),
    )
    if response is not None:
        # The rate-limit headers a 429 carries teach the limiter; only these are kept, so
        # nothing the provider echoed (never the key) rides along.
        error.headers = {
            name.lower(): value
            for name, value in response.headers.items()
            if "ratelimit" in name.lower() or name.lower().startswith("retry-after")
        }
    return error


def map_openai_error(
    exc: BaseException, *, provider: str, model: str | None, secret: str | None = None
) -> ProviderError:
    """Translate an exception of the openai SDK (or its transport) to a ``ProviderError``.

    ``secret`` (the API key) is redacted from the message and from ``exc`` itself. An
    exception that is neither the SDK's, httpx2's nor a decoding ``ValueError`` is not a
    provider error: ``TypeError``.
    """
    cls = _openai_class(exc)
    if cls is None:
        raise TypeError(f"not a provider exception: {type(exc).__name__}") from exc
    return _build(cls, exc, provider=provider, model=model, secret=secret)


def map_anthropic_error(
    exc: BaseException, *, provider: str, model: str | None, secret: str | None = None
) -> ProviderError:
    """Translate an exception of the anthropic SDK (or its transport), like ``map_openai_error``."""
    cls = _anthropic_class(exc)
    if cls is None:
        raise TypeError(f"not a provider exception: {type(exc).__name__}") from exc
    return _build(cls, exc, provider=provider, model=model, secret=secret)


# --------------------------------------------------------------------------- model names


@dataclass(frozen=True)
class ProviderSpec:
    """Where a provider is and how to authenticate: ``api_key_env`` None means no key."""

    name: str
    kind: Literal["openai", "anthropic"]
    base_url: str | None = None
    api_key_env: str | None = None


KNOWN_PROVIDERS: Mapping[str, ProviderSpec] = {
    "openai": ProviderSpec("openai", "openai", None, "OPENAI_API_KEY"),
    "anthropic": ProviderSpec("anthropic", "anthropic", None, "ANTHROPIC_API_KEY"),
    "openrouter": ProviderSpec(
        "openrouter", "openai", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"
    ),
    "together": ProviderSpec(
        "together", "openai", "https://api.together.xyz/v1", "TOGETHER_API_KEY"
    ),
    "groq": ProviderSpec("groq", "openai", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    "ollama": ProviderSpec("ollama", "openai", "http://localhost:11434/v1", None),
}


# How each provider counts tokens against its per-minute limits: the one table of rules
# (docs/limits.md; the rules are rowpilot.llm.limits'). Hosts match by suffix.
_ACCOUNTING_BY_HOST: Mapping[str, tuple[Accounting, str]] = {
    "api.openai.com": (
        "admission",
        "OpenAI counts prompt + max_tokens when it admits a request and gives nothing back",
    ),
    "openai.azure.com": (
        "admission",
        "Azure OpenAI counts prompt + max_tokens when it admits a request",
    ),
    "api.anthropic.com": (
        "usage",
        "Anthropic reserves max_tokens of output and settles it at the real count, limits "
        "input and output apart and does not count cache reads as input",
    ),
}
_OFFICIAL_HOSTS = {"openai": "api.openai.com", "anthropic": "api.anthropic.com"}


def accounting_rule(spec: ProviderSpec) -> tuple[Accounting, str]:
    """How ``spec``'s provider counts tokens, and why rowpilot thinks so."""
    host = _OFFICIAL_HOSTS[spec.kind]
    if spec.base_url:
        host = (urllib.parse.urlsplit(spec.base_url).hostname or "").lower()
    for suffix, (rule, why) in _ACCOUNTING_BY_HOST.items():
        if host == suffix or host.endswith("." + suffix):
            return rule, why
    return "learn", (
        f"{host or 'this server'} is not a provider whose counting is known: tokens are "
        "counted at admission until its remaining-tokens headers show it settles at real usage"
    )


def parse_model(
    name: str, custom: Mapping[str, ProviderSpec] | None = None
) -> tuple[ProviderSpec, str]:
    """Split ``provider/model`` into its ``ProviderSpec`` and the model name.

    The model keeps any further slashes (``openrouter/meta-llama/llama-3-8b``). ``custom``
    names more providers and wins over the built-in ones.
    """
    providers = {**KNOWN_PROVIDERS, **(custom or {})}
    prefix, sep, model = name.strip().partition("/")
    known = ", ".join(sorted(providers))
    if not sep or not prefix or not model:
        raise ConfigError(
            f"model {name!r} does not name its provider",
            hint=f"write provider/model, e.g. openai/gpt-4o-mini; providers: {known}",
        )
    spec = providers.get(prefix)
    if spec is None:
        raise ConfigError(
            f"unknown provider {prefix!r} in model {name!r}", hint=f"use one of: {known}"
        )
    return spec, model


# --------------------------------------------------------------------------- client


@dataclass(frozen=True)
class Completion:
    """One answer: ``finish_reason`` is normalized to stop/length/content_filter/... ."""

    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: str
    raw_model: str
    headers: dict[str, str]
    cached_tokens: int = 0  # input tokens read from the provider's prompt cache
    cache_apart: bool = False  # Anthropic: input_tokens leaves the cache reads out

    @property
    def prompt_tokens(self) -> int:
        """Every input token, cache reads included (OpenAI's ``prompt_tokens`` already
        includes them; Anthropic reports them apart from ``input_tokens``)."""
        return self.input_tokens + (self.cached_tokens if self.cache_apart else 0)


def _count(value: object) -> int:
    """A token count from an SDK's usage, 0 when absent or not a count."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _openai_cached(usage: object) -> int:
    """``usage.prompt_tokens_details.cached_tokens``, which servers may leave out."""
    details = getattr(usage, "prompt_tokens_details", None)
    return _count(getattr(details, "cached_tokens", None))


_ANTHROPIC_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "refusal": "content_filter",
    "tool_use": "tool_calls",
}

_SDK_OPTIONS = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})


def request_options(params: Mapping[str, Any]) -> dict[str, Any]:
    """SDK options stay keyword arguments; every other param goes into the JSON body.

    The body route works whatever parameters this SDK version names in its signature
    (anthropic 2.x has no ``temperature`` keyword, for one).
    """
    options = {name: value for name, value in params.items() if name in _SDK_OPTIONS}
    body = {name: value for name, value in params.items() if name not in _SDK_OPTIONS}
    if body:
        options["extra_body"] = {**body, **dict(options.get("extra_body") or {})}
    return options


# What ChatClient.complete and preflight catch and translate (with the client's own SDK
# error); anything else propagates.
_BOUNDARY: tuple[type[BaseException], ...] = (
    httpx2.HTTPError,
    json.JSONDecodeError,
    pydantic.ValidationError,
)


class ChatClient:
    """A chat client for one provider and model, over the official async SDK.

    The key is ``api_key``, else the spec's environment variable. ``raise_on_length``
    makes an answer cut at ``max_tokens`` an ``OutputTruncatedError`` instead of a
    ``Completion`` with ``finish_reason="length"``.
    """

    def __init__(
        self,
        spec: ProviderSpec,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        preflight_timeout: float = 10.0,
        raise_on_length: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.model = model
        self.timeout = timeout
        self.preflight_timeout = min(preflight_timeout, timeout)
        self.raise_on_length = raise_on_length
        env = os.environ if environ is None else environ
        key = (
            api_key
            if api_key is not None
            else (env.get(spec.api_key_env) if spec.api_key_env else None)
        )
        if not key:
            if spec.api_key_env is not None:
                raise ConfigError(
                    f"no API key for provider {spec.name!r}",
                    hint=f"set the environment variable {spec.api_key_env}",
                )
            key = "unused"  # a local server (ollama) that wants none; the SDK insists
        self._secret = key
        # Each SDK is imported with its first client: anthropic alone takes ~1.4 s to
        # import, which a run on OpenAI (and every CLI start) need not pay.
        self._client: openai.AsyncOpenAI | anthropic.AsyncAnthropic
        self._boundary: tuple[type[BaseException], ...]
        if spec.kind == "openai":
            import openai

            self._client = openai.AsyncOpenAI(
                api_key=key, base_url=spec.base_url, max_retries=0, timeout=timeout
            )
            self._boundary = (openai.OpenAIError, *_BOUNDARY)
        else:
            import anthropic

            self._client = anthropic.AsyncAnthropic(
                api_key=key, base_url=spec.base_url, max_retries=0, timeout=timeout
            )
            self._boundary = (anthropic.AnthropicError, *_BOUNDARY)

    def __repr__(self) -> str:
        return (
            f"ChatClient(provider={self.spec.name!r}, kind={self.spec.kind!r}, "
            f"model={self.model!r}, base_url={redact_urls(self.spec.base_url or '')!r}, "
            f"api_key={REDACTED!r})"
        )

    @property
    def sdk(self) -> openai.AsyncOpenAI | anthropic.AsyncAnthropic:
        """The SDK client, for the Batch API's calls (``rowpilot.llm.batch_client``)."""
        return self._client

    def provider_error(self, exc: BaseException) -> ProviderError:
        """An SDK or transport error as the ``ProviderError`` it maps to (key redacted)."""
        return self._map(exc)

    @property
    def boundary(self) -> tuple[type[BaseException], ...]:
        """The exceptions ``provider_error`` maps (this client's SDK's and the transport's)."""
        return self._boundary

    def _map(self, exc: BaseException) -> ProviderError:
        mapper = map_openai_error if self.spec.kind == "openai" else map_anthropic_error
        return mapper(exc, provider=self.spec.name, model=self.model, secret=self._secret)

    def _error(
        self, cls: type[ProviderError], message: str, headers: Mapping[str, str]
    ) -> ProviderError:
        return cls(
            _redact(message, self._secret),
            provider=self.spec.name,
            model=self.model,
            retry_after=parse_retry_after(headers),
        )

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        system: str | None = None,
        max_tokens: int,
        json_schema: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Completion:
        """One chat call. Raises a ``ProviderError`` for every provider failure."""
        try:
            if self.spec.kind == "openai":
                completion = await self._complete_openai(
                    cast("openai.AsyncOpenAI", self._client),
                    messages, system, max_tokens, json_schema, params or {},
                )  # fmt: skip
            else:
                completion = await self._complete_anthropic(
                    cast("anthropic.AsyncAnthropic", self._client),
                    messages, system, max_tokens, json_schema, params or {},
                )  # fmt: skip
        except self._boundary as exc:
            raise self._map(exc) from exc
        if completion.finish_reason == "content_filter":
            raise self._error(
                ContentFilterError,
                "the answer was refused by the content filter",
                completion.headers,
            )
        if completion.finish_reason == "length" and self.raise_on_length:
            raise self._error(
                OutputTruncatedError,
                f"the answer stopped at max_tokens={max_tokens}",
                completion.headers,
            )
        return completion

    async def _complete_openai(
        self,
        client: openai.AsyncOpenAI,
        messages: list[dict[str, Any]],
        system: str | None,
        max_tokens: int,
        json_schema: dict[str, Any] | None,
        params: dict[str, Any],
    ) -> Completion:
        all_messages = ([{"role": "system", "content": system}] if system else []) + messages
        extra = request_options(params)
        if json_schema is not None:
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": json_schema},
            }
        raw = await client.chat.completions.with_raw_response.create(
            model=self.model,
            messages=cast(Any, all_messages),
            max_tokens=max_tokens,
            **extra,
        )
        headers = {name.lower(): value for name, value in raw.headers.items()}
        response = raw.parse()
        if not response.choices:
            raise json.JSONDecodeError("the response has no choices", "", 0)
        choice = response.choices[0]
        usage = response.usage
        return Completion(
            text=choice.message.content or "",
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
            finish_reason=str(choice.finish_reason),
            raw_model=response.model,
            headers=headers,
            cached_tokens=_openai_cached(usage),
        )

    async def _complete_anthropic(
        self,
        client: anthropic.AsyncAnthropic,
        messages: list[dict[str, Any]],
        system: str | None,
        max_tokens: int,
        json_schema: dict[str, Any] | None,
        params: dict[str, Any],
    ) -> Completion:
        extra = request_options(params)
        if system is not None:
            extra["system"] = system
        if json_schema is not None:
            extra["output_config"] = {"format": {"type": "json_schema", "schema": json_schema}}
        raw = await client.messages.with_raw_response.create(
            model=self.model,
            messages=cast(Any, messages),
            max_tokens=max_tokens,
            **extra,
        )
        headers = {name.lower(): value for name, value in raw.headers.items()}
        response = await raw.parse()
        text = "".join(
            block.text for block in response.content if getattr(block, "type", None) == "text"
        )
        stop = str(response.stop_reason)
        return Completion(
            text=text,
            input_tokens=response.usage.input_tokens,
            output_tokens=response.usage.output_tokens,
            finish_reason=_ANTHROPIC_FINISH.get(stop, stop),
            raw_model=response.model,
            headers=headers,
            cached_tokens=_count(getattr(response.usage, "cache_read_input_tokens", None)),
            cache_apart=True,
        )

    async def preflight(self) -> list[str]:
        """List the models once (their ids): a wrong key or an unreachable server fails fast."""
        try:
            client = self._client.with_options(timeout=self.preflight_timeout)
            page = await client.models.list()
            return [model.id for model in page.data]
        except self._boundary as exc:
            raise self._map(exc) from exc

    async def aclose(self) -> None:
        """Close the SDK client and its connections."""
        await self._client.close()

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
