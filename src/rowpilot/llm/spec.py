"""A prompt task's settings: ``PromptSpec`` (its version is a hash of what decides an
answer) and how a job's settings build one, every setting checked (``ConfigError`` if
not). max_tokens is the user's, else the output schema's bound (``answer_bound``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rowpilot._config import JobConfig
from rowpilot.errors import ConfigError
from rowpilot.llm.answer_bound import DEFAULT_MAX_TOKENS, AnswerTokens, choose_answer_tokens
from rowpilot.llm.cost import Price, parse_price_overrides
from rowpilot.llm.environ import load_environ
from rowpilot.llm.labels import label_names, split_label
from rowpilot.llm.limits import Limits
from rowpilot.llm.providers import ProviderSpec, parse_model
from rowpilot.llm.schema import OutputSchema, schema_of
from rowpilot.llm.template import PromptTemplate

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "LABEL_SYSTEM",
    "PromptSpec",
    "build_prompt_spec",
    "build_step_spec",
]

AUTO_BATCH_TOKENS = 3_000  # --batch-size auto: prompt tokens per request
AUTO_BATCH_ROWS = 50  # --batch-size auto: rows per request at most


@dataclass(frozen=True)
class PromptSpec:
    """Everything a prompt task needs, checked; the task's version is a hash of it."""

    model: str  # provider/model
    template: PromptTemplate
    system: str | None
    schema: OutputSchema
    max_tokens: int  # per row
    params: Mapping[str, Any]
    batch_size: int  # rows per request at most (1: no batching)
    batch_tokens: int | None  # close a batch at this many estimated prompt tokens
    structured: bool
    repair_attempts: int
    cache: bool
    budget: float | None
    limits: Limits
    prices: Mapping[str, Price]
    providers: Mapping[str, ProviderSpec]
    call_timeout: float
    workers: int  # requests at once
    environ: Mapping[str, str] = field(repr=False, compare=False)  # holds keys: never shown
    share: float = 1.0  # the part of the limits this process paces at (a shard's 1/N)
    answer_tokens: AnswerTokens | None = None  # how max_tokens was chosen (None: given)
    # --batch-api (rowpilot.llm.batch): none of these changes an answer, so none is in the
    # version
    batch_api: bool = False
    batch_fallback: str = "batch"  # or "online"
    detach: bool = False
    batch_poll: float = 30.0
    batch_rounds: int = 3  # batches a row may be in before it fails (the run's max_attempts)

    @property
    def batching(self) -> bool:
        return self.batch_size > 1

    @property
    def tokens(self) -> AnswerTokens:
        """max_tokens per request and why (``answer_bound``)."""
        return self.answer_tokens or AnswerTokens.flat(self.max_tokens, "given", "given")

    @property
    def keyed_max_tokens(self) -> int:
        """The max_tokens the task's version and its row answers' keys hold.

        A JSON answer cut at max_tokens is never an output (it is asked again, then
        fails), so a complete answer does not depend on the limit: these keep the old
        default, 512, whatever limit is asked with. A registry written before the limit
        came from the schema keeps its version, and a run with --max-tokens then without
        redoes nothing. A text answer cut at the limit *is* the output: the given limit
        stays in its version."""
        if self.schema.is_text and self.tokens.source == "given":
            return self.max_tokens
        return DEFAULT_MAX_TOKENS

    def version(self) -> str:
        determining = {
            "model": self.model,
            "template": self.template.template,
            "system": self.system,
            "schema": self.schema.fingerprint(),
            "max_tokens": self.keyed_max_tokens,
            "params": dict(self.params),
            "structured": self.structured,
        }
        text = json.dumps(determining, sort_keys=True, default=str)
        return "prompt-" + hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


# -- from a job's settings ---------------------------------------------------------------

LABEL_SYSTEM = (
    "You label texts. For each label, answer true when it applies to the text, else false."
)


def build_prompt_spec(config: JobConfig, environ: Mapping[str, str] | None = None) -> PromptSpec:
    """The prompt task a job describes, with every setting checked (ConfigError if not)."""
    if config.model is None:
        raise ConfigError(
            "a prompt task needs a model",
            hint="pass --model provider/model, e.g. openai/gpt-4o-mini",
        )
    providers = _custom_providers(config.providers)
    spec, model = parse_model(config.model, providers)
    if config.base_url is not None:
        spec = dataclasses.replace(spec, base_url=config.base_url)
        providers[spec.name] = spec
    auto = config.batch_size == "auto"
    schema = _schema(config)
    batch_size = AUTO_BATCH_ROWS if auto else int(config.batch_size)
    tokens = choose_answer_tokens(
        given=config.max_tokens,
        schema=None if schema.is_text else schema.json_schema(),
        what=_holds(config, schema),
        model=config.model,
        params=config.params,
        batch_size=batch_size,
    )
    return PromptSpec(
        model=config.model,
        template=_template(config),
        system=_system(config),
        schema=schema,
        max_tokens=tokens.per_row,
        params=dict(config.params),
        batch_size=batch_size,
        batch_tokens=AUTO_BATCH_TOKENS if auto else None,
        structured=config.structured,
        repair_attempts=config.repair_attempts,
        cache=config.cache,
        budget=config.budget,
        limits=_limits(config, spec.name, model),
        prices=parse_price_overrides(config.prices),
        providers=providers,
        call_timeout=config.call_timeout,
        workers=config.workers_at_most,  # auto: the scheduler sizes below this
        environ=environ if environ is not None else load_environ(config.env_file),
        share=config.limits_share,
        answer_tokens=tokens,
        batch_api=config.batch_api,
        batch_fallback=config.batch_fallback,
        detach=config.detach,
        batch_poll=config.batch_poll,
        batch_rounds=config.max_attempts,
    )


def _holds(config: JobConfig, schema: OutputSchema) -> str:
    """What a row's answer holds, for the reason its max_tokens was chosen."""
    count = len(schema.field_names)
    noun = "label" if config.labels is not None else "field"
    return f"{count} {noun}{'s' if count != 1 else ''}"


def build_step_spec(
    config: JobConfig, model: str, environ: Mapping[str, str], workers: int
) -> PromptSpec:
    """The session settings for a Python task's ``ctx.llm`` calls to ``model``.

    The job's ``--base-url`` goes to the provider of the job's own model, and ``--rpm``,
    ``--tpm`` and ``--max-concurrent`` limit that model; other models take their
    ``[limits]`` tables only.
    """
    providers = _custom_providers(config.providers)
    spec, name = parse_model(model, providers)
    default = config.model is not None and model == config.model
    if config.base_url is not None and config.model is not None:
        default_provider, _ = parse_model(config.model, providers)
        if default_provider.name == spec.name:
            spec = dataclasses.replace(spec, base_url=config.base_url)
            providers[spec.name] = spec
    return PromptSpec(
        model=model,
        template=PromptTemplate.column("ctx.llm"),  # never rendered: the task writes prompts
        system=None,
        schema=OutputSchema.text(),
        max_tokens=config.max_tokens or DEFAULT_MAX_TOKENS,  # a call's schema may tighten it
        params=dict(config.params),
        batch_size=1,
        batch_tokens=None,
        structured=config.structured,
        repair_attempts=config.repair_attempts,
        cache=config.cache,
        budget=config.budget,
        limits=_limits(config, spec.name, name, flags=default),
        prices=parse_price_overrides(config.prices),
        providers=providers,
        call_timeout=config.call_timeout,
        workers=workers,
        environ=environ,
        share=config.limits_share,
        answer_tokens=AnswerTokens.flat(
            config.max_tokens or DEFAULT_MAX_TOKENS,
            "default" if config.max_tokens is None else "given",
            "default" if config.max_tokens is None else "given",
        ),
        # for steps that can wait (ctx.llm(..., can_wait=True)), as for a prompt task
        batch_api=config.batch_api,
        batch_fallback=config.batch_fallback,
        detach=config.detach,
        batch_poll=config.batch_poll,
        batch_rounds=config.max_attempts,
    )


def _template(config: JobConfig) -> PromptTemplate:
    if config.prompt is not None:
        return PromptTemplate(config.prompt)
    if config.text_column is None:
        raise ConfigError(
            "labels need the column that holds the text", hint="pass --text-column NAME"
        )
    return PromptTemplate.column(config.text_column)


def _system(config: JobConfig) -> str | None:
    if config.labels is None:
        return config.system
    system = config.system if config.system is not None else LABEL_SYSTEM
    described = [split_label(label) for label in config.labels if ":" in label]
    if described:  # "name: description" labels: the model is told what each name means
        system += "\nWhat the labels mean:\n" + "\n".join(
            f"- {name}: {description}" for name, description in described
        )
    return system


def _schema(config: JobConfig) -> OutputSchema:
    given = [
        name
        for name, value in (
            ("schema", config.output_schema),
            ("fields", config.fields),
            ("labels", config.labels),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise ConfigError(
            f"the output is described twice ({' and '.join(given)})",
            hint="give one of schema, fields or labels",
        )
    if config.labels is not None:
        return OutputSchema.from_labels(label_names(config.labels))
    if config.fields is not None:
        return OutputSchema.from_fields(config.fields)
    return schema_of(config.output_schema)


def _limits(config: JobConfig, provider: str, model: str, *, flags: bool = True) -> Limits:
    """Flags win over ``[limits."provider/model"]``, which wins over ``[limits.provider]``."""
    merged: dict[str, float] = {}
    for name in (provider, f"{provider}/{model}"):
        table = config.limits.get(name, {})
        unknown = set(table) - {"rpm", "tpm", "max_concurrent", "input_tpm", "output_tpm"}
        if unknown:
            raise ConfigError(
                f"[limits.{name!r}] has an unknown setting {sorted(unknown)[0]!r}",
                hint="limits take rpm, tpm, max_concurrent, input_tpm and output_tpm",
            )
        merged.update(table)
    for name in ("rpm", "tpm", "max_concurrent"):
        value = getattr(config, name) if flags else None
        if value is not None:
            merged[name] = value
    concurrent = merged.get("max_concurrent")
    return Limits(
        rpm=merged.get("rpm"),
        tpm=merged.get("tpm"),
        max_concurrent=int(concurrent) if concurrent is not None else None,
        input_tpm=merged.get("input_tpm"),
        output_tpm=merged.get("output_tpm"),
    )


def _custom_providers(table: Mapping[str, Mapping[str, Any]]) -> dict[str, ProviderSpec]:
    providers = {}
    for name, entry in table.items():
        unknown = set(entry) - {"base_url", "api_key_env", "kind"}
        kind = entry.get("kind", "openai")
        if unknown or kind not in ("openai", "anthropic") or not entry.get("base_url"):
            raise ConfigError(
                f"[providers.{name}] must give base_url (and may give api_key_env, kind)",
                hint='e.g. base_url = "http://127.0.0.1:8000/v1", api_key_env = "MY_KEY", '
                'kind = "openai" or "anthropic"',
            )
        providers[name] = ProviderSpec(name, kind, str(entry["base_url"]), entry.get("api_key_env"))
    return providers
