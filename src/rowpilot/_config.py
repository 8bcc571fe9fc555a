"""Job settings: one validated model, filled from a TOML job file and overridden by flags.

A job file has four tables; relative paths in it are relative to the file:

    name = "diseases"            # optional; names the default state directory

    [source]
    path = "diseases.csv"        # CSV, TSV, JSONL, Parquet or Excel (.xlsx)
    key = "cui"                  # optional; default: the row number
    encoding = "utf-8"           # optional
    format = "csv"               # optional; default: from the suffix
    duplicates = "first"         # optional; keep each key's first row (default: error)
    trust_quotes = false         # optional; CSV cells spanning lines that look like rows
    follow_symlinks = false      # optional; folder: read symlinks that lead outside it
    credentials = "key.json"     # optional; Google Sheets (path = "gsheet://ID/WORKSHEET")
    sheet = "Orders"             # optional; a workbook's sheet (default: the first)
    header_row = 3               # optional; a workbook's header row (default: first with a value)

    [task]
    function = "tasks.py:analyse"
    version = "v2"               # optional; default: a hash of the function's source

    # ... or a prompt task, no code (see docs/prompts.md):
    model = "openai/gpt-4o-mini"
    prompt = "Summarise: {text}"  # {column} fields
    system = "You are terse."    # optional
    fields = {summary = "str", score = "int"}   # or labels = [...], or schema = {JSON Schema}
    max_tokens = 300             # per row
    batch_size = 10              # rows per request, or "auto"
    params = {temperature = 0}

    [run]
    workers = 8                  # or "auto": sized from the machine, limits and throughput
    max_workers = 256            # the most "auto" may use
    executor = "local"           # or "process" (CPU-bound Python) or "ray"
    max_memory = 2000            # MB resident above which no new item is admitted
    timeout = 60                 # seconds per attempt
    max_attempts = 3
    retry_on = ["TimeoutError", "ConnectionError"]
    rows = "0:1516"
    shard = "1/10"
    shard_limits = "split"       # a shard paces at 1/N of each provider limit ("full": all)
    limit = 100
    state = ".rowpilot/diseases"
    budget = 5.0                 # USD this run may spend at most
    rpm = 500                    # the model's requests/min (else learned from the headers)
    tpm = 200000                 # tokens/min
    cache = true                 # reuse journaled answers and steps (false: ask again)
    keep_going = false           # true: no early stop when the first items fail alike
    batch_api = false            # true: the provider's Batch API, half price (docs/batch.md)
    batch_fallback = "batch"     # or "online": rows a batch errs on are asked online

    [limits."openai/gpt-4o-mini"]   # named limits: provider or provider/model
    rpm = 500
    max_concurrent = 20

    [prices."openai/gpt-4o-mini"]   # USD per million tokens; overrides genai-prices
    input = 0.15
    output = 0.60

    [providers.local]            # a custom OpenAI-compatible server: model "local/<name>"
    base_url = "http://127.0.0.1:8000/v1"
    api_key_env = "LOCAL_API_KEY"

    [output]
    prefix = "out_"              # optional; put before every output field name
    path = "enriched.csv"        # .csv, .jsonl, .parquet or .xlsx
    json_dir = "results"         # one JSON file per key
    failures = "failures.jsonl"
    write_back = true            # Google Sheets source: outputs into the same worksheet
    write_batch = 200            # rows per write-back request (or write_interval seconds)
    sheets_write_rpm = 60        # the Sheets API's write quota a minute
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rowpilot import _settings
from rowpilot._targets import scheme_of
from rowpilot.engine.items import parse_shard
from rowpilot.errors import ConfigError
from rowpilot.tasks.base import Task

_PATH_FIELDS = {"source", "state", "output", "json_dir", "failures", "env_file", "credentials"}


class JobConfig(BaseModel):
    """Every setting of a job. The CLI and ``rowpilot.run`` both build one of these."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)

    source: Any
    # A Task instance is a task of the user's own kind (rowpilot.Task), taken as it is.
    task: str | Task | Callable[..., Any] | None = None
    name: str | None = None
    key: str | None = None
    format: str | None = None
    encoding: str | None = None
    duplicates: Literal["first"] | None = None  # a repeated key: keep the first row
    trust_quotes: bool = False  # CSV: read quoted cells that span lines as they are
    follow_symlinks: bool = False  # folder: also read files that symlinks lead out to
    credentials: Path | None = None  # Google Sheets: a key or token file
    sheet: str | None = None  # a workbook's sheet, by name; None: the first
    header_row: int | None = Field(None, ge=1)  # a workbook's header row, from 1
    task_version: str | None = None
    workers: Annotated[int, Field(ge=1, le=10_000)] | Literal["auto"] = 8
    max_workers: int = Field(256, ge=1, le=10_000)  # the ceiling of workers="auto"
    executor: Literal["local", "process", "ray"] = "local"
    ray_address: str | None = None
    ray_workers: int | None = Field(None, ge=1, le=10_000)
    max_memory: float | None = Field(None, gt=0)  # MB of resident memory
    timeout: float | None = Field(None, gt=0)
    max_attempts: int = Field(3, ge=1)
    retry_on: list[str] | None = None
    retry_delay: float = Field(0.5, ge=0)
    max_retry_delay: float = Field(30.0, ge=0)
    rows: str | None = None
    shard: str | None = None
    shard_limits: Literal["split", "full"] = "split"  # a shard's part of each provider limit
    limit: int | None = Field(None, ge=0)
    force: bool = False
    force_before: float | None = None
    retry_failed: bool = False
    state: Path | None = None
    output: Path | str | None = None  # a URL (a registered sink's scheme) stays a string
    json_dir: Path | None = None
    failures: Path | None = None
    grace: float = Field(30.0, ge=0)
    keep_going: bool = False  # no early stop when the first items all fail alike
    output_prefix: str = ""  # before every output field name, apart from the inputs
    progress: bool | None = None
    command: str | None = None
    # prompt tasks
    model: str | None = None
    base_url: str | None = None  # another address for the model's provider (a simulator)
    prompt: str | None = None
    system: str | None = None
    output_schema: Any = None  # a JSON Schema dict or a pydantic model class
    fields: dict[str, str] | None = None
    labels: list[str] | None = None
    text_column: str | None = None
    max_tokens: int | None = Field(None, gt=0)
    params: dict[str, Any] = Field(default_factory=dict)
    structured: bool = True
    repair_attempts: int = Field(2, ge=0, le=10)
    batch_size: int | Literal["auto"] = 1
    call_timeout: float = Field(60.0, gt=0)  # seconds one LLM request may take
    batch_api: bool = False  # through the provider's Batch API (llm/batch.py)
    batch_fallback: Literal["batch", "online"] = "batch"
    detach: bool = False  # submit the batches and exit with status "waiting"
    dashboard: bool = False  # serve the live report on 127.0.0.1 while the run goes
    batch_poll: float = Field(30.0, gt=0)  # seconds between looks at open batches
    budget: float | None = Field(None, gt=0)
    rpm: float | None = Field(None, gt=0)
    tpm: float | None = Field(None, gt=0)
    max_concurrent: int | None = Field(None, ge=1)
    cache: bool = True
    env_file: Path | None = None
    limits: dict[str, dict[str, float]] = Field(default_factory=dict)
    prices: dict[str, Any] = Field(default_factory=dict)
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # built-in local tasks (local/wordllama)
    embed: bool = False
    embed_batch: int = Field(512, ge=1, le=100_000)
    threshold: float | None = Field(None, ge=-1, le=1)
    normalise: bool = False  # embed normalised text (rowpilot dedupe)
    vectors: str | None = None  # lancedb://PATH/TABLE
    insert_batch: int = Field(1000, ge=1)
    # Google Sheets write-back (sinks/gsheet.py)
    write_back: bool = False
    write_batch: int = Field(200, ge=1, le=10_000)
    write_interval: float = Field(5.0, gt=0)
    sheets_write_rpm: float = Field(60.0, gt=0)

    @field_validator("output", mode="before")
    @classmethod
    def _output_url_stays_text(cls, value: Any) -> Any:
        """A URL (``s3://...``: a registered sink's scheme) stays whole; a Path folds ``//``."""
        if value is None or (isinstance(value, str) and scheme_of(value) is not None):
            return value
        return Path(value)

    @property
    def workers_at_most(self) -> int:
        """Workers the run may use at once: the count given, or auto's ceiling."""
        return self.max_workers if self.workers == "auto" else self.workers

    @property
    def limits_share(self) -> float:
        """The part of each provider limit the run paces at: 1/N for a shard of N run by
        hand, which shares the account with the other shards (``shard_limits = "split"``);
        else the whole limit."""
        if self.shard is None or self.shard_limits == "full":
            return 1.0
        return 1.0 / parse_shard(self.shard)[1]

    @property
    def is_prompt(self) -> bool:
        return (
            self.task is None
            and not self.embed
            and (self.prompt is not None or self.labels is not None)
        )

    @property
    def is_local(self) -> bool:
        """A built-in task on the bundled local model: embed, or labels by similarity."""
        if self.embed:
            return True
        return self.labels is not None and (self.model or "").partition("/")[0] == "local"


def build_config(settings: Mapping[str, Any]) -> JobConfig:
    """Validate settings; a bad value is a ConfigError naming the setting."""
    try:
        config = JobConfig(**settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(part) for part in first["loc"]) or "settings"
        raise ConfigError(
            f"{name}: {first['msg']}", hint="see `rowpilot run --help` for the settings"
        ) from None
    _check_task_kind(config)
    _check_batch_settings(config)
    return config


def _check_batch_settings(config: JobConfig) -> None:
    """--batch-api is for prompt tasks and Python tasks' can-wait ctx.llm steps, on a source
    that can be read twice (the batch pass reads the rows, then the run commits them; a
    Python task's parked items are read again); --detach waits for nothing without it."""
    if config.detach and not config.batch_api:
        raise ConfigError(
            "--detach leaves batches to wait", hint="add --batch-api, or drop --detach"
        )
    if not config.batch_api:
        return  # the local model refuses it with its other API settings
    if isinstance(config.source, Iterator):
        raise ConfigError(
            "--batch-api reads the rows twice (the batches, then the run), and a one-shot "
            "iterator can be read once",
            hint="pass a list of rows or a DataFrame",
        )


def _check_task_kind(config: JobConfig) -> None:
    prompt_given = config.prompt is not None or config.labels is not None or config.embed
    if config.is_local and config.prompt is not None:
        raise ConfigError(
            "the local model compares texts; it cannot answer a prompt",
            hint="use --labels (or rowpilot embed) with local/wordllama, or an LLM for --prompt",
        )
    if config.is_local and config.text_column is None:
        raise ConfigError("the local tasks need the text's column", hint="pass --text-column NAME")
    _check_local_settings(config)
    if config.vectors is not None and not config.embed:
        raise ConfigError(
            "only rowpilot embed writes vectors", hint="drop --vectors, or use rowpilot embed"
        )
    if config.task is None and not prompt_given:
        raise ConfigError(
            "no task given",
            hint="pass --task module:function, or --prompt TEMPLATE --model provider/model",
        )
    if config.task is not None and prompt_given:
        raise ConfigError(
            "both a task function and a prompt were given",
            hint="a job runs either --task or --prompt/--labels, not both",
        )
    if config.batch_size != "auto" and config.batch_size < 1:
        raise ConfigError("batch_size must be at least 1, or 'auto'", hint="--batch-size 10")


# What only a model behind an API uses: the local model has no tokens, rate or price.
_API_SETTINGS = ("base_url", "system", "max_tokens", "budget", "rpm", "tpm", "max_concurrent")


def _check_local_settings(config: JobConfig) -> None:
    """A setting the local model cannot use is refused, not silently dropped: a --budget
    or --rpm that does nothing would be believed."""
    if not config.is_local:
        return
    given = [name for name in _API_SETTINGS if getattr(config, name) is not None]
    given += [name for name in ("limits", "params", "batch_api", "detach") if getattr(config, name)]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ConfigError(
            f"the local model takes no prompt and has no tokens, rate limits or price: "
            f"{flags} would do nothing",
            hint=f"drop {'it' if len(given) == 1 else 'them'}, or give an API model "
            "(--model provider/model)",
        )


def read_job_file(path: Path) -> dict[str, Any]:
    """Flatten a TOML job file into settings, resolving paths against its folder."""
    if not path.is_file():
        raise ConfigError(f"job file {path} does not exist", hint="check the path")
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", hint="fix the job file") from None
    settings: dict[str, Any] = {"name": document.pop("name", path.stem)}
    for section, table in document.items():
        settings.update(_section(path, section, table))
    return _resolve_paths(settings, path.parent)


def _section(path: Path, section: str, table: Any) -> dict[str, Any]:
    if section in _settings.NAMED_TABLES and isinstance(table, dict):
        return {section: table}
    if section not in _settings.sections() or not isinstance(table, dict):
        tables = [*_settings.sections(), *_settings.NAMED_TABLES]
        raise ConfigError(
            f"{path}: unknown table [{section}]",
            hint=f"the tables are {', '.join(f'[{name}]' for name in tables)}",
        )
    fields = _settings.toml_keys(section)
    table = _renamed_keys(path, section, table)
    unknown = set(table) - set(fields)
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting {section}.{sorted(unknown)[0]}",
            hint=f"[{section}] takes {', '.join(sorted(fields))}",
        )
    return {fields[name]: value for name, value in table.items()}


def _renamed_keys(path: Path, section: str, table: dict[str, Any]) -> dict[str, Any]:
    renamed = dict(table)
    for old, setting in _settings.toml_aliases(section).items():
        if old in renamed:
            _settings.deprecated(f"{path}: [{section}] {old}", setting.toml_key)
            renamed[setting.toml_key] = renamed.pop(old)
    return renamed


def _resolve_paths(settings: dict[str, Any], base: Path) -> dict[str, Any]:
    for name in _PATH_FIELDS & settings.keys():
        if scheme_of(str(settings[name])) is None:  # a URL (gsheet://...) stays whole
            settings[name] = os.path.normpath(base / settings[name])
    task = settings.get("task")
    if isinstance(task, str):
        target, sep, function = task.rpartition(":")
        if sep and (target.endswith(".py") or "/" in target):
            settings["task"] = f"{os.path.normpath(base / target)}:{function}"
    return settings
