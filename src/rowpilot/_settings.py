"""The one table of a job's settings: each one's name, default, TOML table, CLI flag, help,
the commands that show it, and the spellings it replaced.

One name per concept: the Python keyword, the ``JobConfig`` field, the TOML key and the
flag (``--`` and the name with dashes) are the same word. The exceptions are written in
the row, never elsewhere: a TOML key inside its own table may drop the table's name
(``[output] prefix`` is ``output_prefix``, ``[task] version`` is ``task_version``, the
``path`` of ``[source]`` and ``[output]`` is ``source`` and ``output``), and ``schema`` is
the field ``output_schema`` (pydantic's models reserve ``schema``).

``rowpilot._config`` reads job files through this table, ``rowpilot.cli._options`` builds
the commands' options from it, and tests/test_settings.py checks ``JobConfig`` and the
signatures of ``rowpilot.run`` / ``label`` / ``embed`` / ``dedupe`` against it.

A renamed setting keeps its old spelling for one release as an ``Alias``: it still works,
and each use prints one ``rowpilot: warning: ... is deprecated, use ...`` line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from dataclasses import field as _field
from typing import Any

from rowpilot.engine.events import warn

PROMPT_PANEL = "Prompt tasks"
WORKERS_HELP = (
    "Task calls at once (a call is one row, or one batch of rows where rows are batched), "
    "or auto: sized from the CPUs, memory, rate limits and throughput, and adjusted during "
    "the run."
)


@dataclass(frozen=True)
class Alias:
    """An old spelling of a setting: the keyword ``old`` (flag ``--old-with-dashes``) of
    ``commands``, and a key of the setting's TOML table when ``toml``."""

    old: str
    commands: tuple[str, ...]
    toml: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.old.replace("_", "-")


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    section: str | None = None  # its TOML table; None: not in a job file
    commands: tuple[str, ...] = ("run",)
    short: str | None = None  # a one-letter flag besides the long one
    key: str | None = None  # its TOML key, where the table's name is dropped
    field: str | None = None  # its JobConfig field, where pydantic reserves the name
    command_defaults: Mapping[str, Any] = _field(default_factory=dict)
    aliases: tuple[Alias, ...] = ()
    panel: str | None = None  # the help's panel

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def toml_key(self) -> str:
        return self.key or self.name

    @property
    def config_field(self) -> str:
        return self.field or self.name

    def default_for(self, command: str) -> Any:
        return self.command_defaults.get(command, self.default)

    def help_for(self, command: str) -> str:
        """The help with its default, so that the two are never typed twice."""
        default = self.default_for(command)
        if default is None or isinstance(default, bool) or default in ("", {}):
            return self.help
        return f"{self.help} (default: {default})"


_LOCAL = ("label", "embed", "dedupe")
_AUTO_OR_COUNT = "N or auto"

SETTINGS: tuple[Setting, ...] = (
    # [source]
    Setting(
        "source",
        None,
        "The input (CSV, TSV, JSONL, Parquet, Excel, a folder, gsheet://ID/WORKSHEET); on run, "
        "over a job file's.",
        "source",
        ("run",),
        key="path",
    ),
    Setting(
        "key",
        None,
        "Key column (default: the row number).",
        "source",
        ("run", "label", "embed", "dedupe", "verify"),
    ),
    Setting("encoding", None, "Input encoding (default: utf-8).", "source", ("run", "verify")),
    Setting(
        "format",
        None,
        "Input format: csv, tsv, jsonl, parquet, excel.",
        "source",
        ("run", "verify"),
    ),
    Setting(
        "duplicates",
        None,
        "What to do with a row whose key repeats an earlier row's: 'first' keeps the first "
        "(default: stop with an error).",
        "source",
        ("run", "verify"),
        aliases=(Alias("dedupe", ("run", "verify"), toml=True),),
    ),
    Setting(
        "trust_quotes",
        False,
        "CSV: read quoted values that span lines as they are, even where their lines look "
        "like rows or the file's quotes do not pair up (a quote never closed, or followed by a "
        "stray character, is still an error).",
        "source",
    ),
    Setting(
        "follow_symlinks",
        False,
        "Folder: also read files whose symlinks lead outside the folder.",
        "source",
    ),
    Setting(
        "credentials",
        None,
        "Google Sheets: a service account's key file, or an authorized user's token (default: "
        "GOOGLE_APPLICATION_CREDENTIALS, then gspread's files in ~/.config/gspread).",
        "source",
    ),
    Setting(
        "sheet",
        None,
        "Workbook: the sheet to read, by its name (default: the first).",
        "source",
        ("run", "verify", *_LOCAL),
    ),
    Setting(
        "header_row",
        None,
        "Workbook: the number of the header row, counted from 1 as the sheet shows it "
        "(default: the first row with a value).",
        "source",
        ("run", "verify", *_LOCAL),
    ),
    # [task]
    Setting(
        "task",
        None,
        "module:function or path/to/file.py:function.",
        "task",
        short="-t",
        key="function",
    ),
    Setting(
        "task_version",
        None,
        "Version of the task (default: a hash of its source).",
        "task",
        key="version",
    ),
    Setting(
        "model",
        None,
        "provider/model, e.g. openai/gpt-4o-mini.",
        "task",
        ("run", "label", "embed"),
        command_defaults={"embed": "local/wordllama"},
        panel=PROMPT_PANEL,
    ),
    Setting(
        "base_url",
        None,
        "Another address for the model's provider, e.g. http://127.0.0.1:8900/v1 "
        "(rowpilot simulate).",
        "task",
        ("run", "label", "estimate"),
        panel=PROMPT_PANEL,
    ),
    Setting(
        "prompt",
        None,
        "Prompt template with {column} fields: a prompt task, no code.",
        "task",
        panel=PROMPT_PANEL,
    ),
    Setting(
        "system",
        None,
        "System prompt.",
        "task",
        ("run", "label"),
        aliases=(Alias("instructions", ("label",)),),
        panel=PROMPT_PANEL,
    ),
    Setting(
        "schema",
        None,
        "JSON Schema of each row's answer (on the command line: a .json file).",
        "task",
        field="output_schema",
        panel=PROMPT_PANEL,
    ),
    Setting("fields", None, "Output fields and their types: {name = type}.", "task", ()),
    Setting(
        "labels",
        None,
        "Labels to decide per row, one true/false column each: --labels a b c.",
        "task",
        ("run", "label"),
        panel=PROMPT_PANEL,
    ),
    Setting(
        "text_column",
        None,
        "The column that holds the text (of --labels, embed and dedupe).",
        "task",
        ("run", *_LOCAL),
        panel=PROMPT_PANEL,
    ),
    Setting(
        "max_tokens",
        None,
        "Answer tokens per row at most, a positive integer (default: the output schema's "
        "bound, else 512; see docs/prompts.md).",
        "task",
        ("run", "label", "estimate"),
        panel=PROMPT_PANEL,
    ),
    Setting(
        "params",
        {},
        "Model parameter name=value (repeatable).",
        "task",
        aliases=(Alias("param", ("run",)),),
        panel=PROMPT_PANEL,
    ),
    Setting(
        "structured", True, "Ask for JSON through the provider's structured output.", "task", ()
    ),
    Setting("repair_attempts", 2, "Requests to repair an answer that is not valid.", "task", ()),
    Setting(
        "batch_size",
        1,
        f"Rows per request ({_AUTO_OR_COUNT}).",
        "task",
        ("run", "label"),
        command_defaults={"label": 10},
        panel=PROMPT_PANEL,
    ),
    Setting(
        "batch_api",
        False,
        "Ask through the provider's Batch API: half price, answers within 24h (docs/batch.md).",
        "run",
        ("run", "label"),
        panel=PROMPT_PANEL,
    ),
    Setting(
        "batch_fallback",
        "batch",
        "Rows a batch answered with an error or left unanswered: 'batch' (a later batch) "
        "or 'online'.",
        "run",
        ("run", "label"),
        panel=PROMPT_PANEL,
    ),
    Setting(
        "dashboard",
        False,
        "Serve a live page of the run (the report's, refreshing) on 127.0.0.1; the URL, "
        "with its access token, is printed at start; it stops with the run.",
        "run",
        ("run", "label"),
    ),
    Setting(
        "detach",
        False,
        "With --batch-api: submit the batches and exit (status 'waiting'); the same "
        "command again collects them.",
        "run",
        ("run", "label"),
        panel=PROMPT_PANEL,
    ),
    Setting(
        "batch_poll",
        30.0,
        "Seconds between looks at open batches.",
        "run",
        ("run", "label"),
        panel=PROMPT_PANEL,
    ),
    Setting(
        "call_timeout",
        60.0,
        "Seconds one LLM request may take before it is dropped and retried.",
        "task",
        panel=PROMPT_PANEL,
    ),
    Setting("embed", False, "Embed the text column with the local model.", "task", ()),
    Setting(
        "embed_batch",
        512,
        "Texts the local model embeds at once.",
        "task",
        ("embed",),
    ),
    Setting(
        "threshold",
        None,
        "Similarity from which a label applies, or rows are duplicates (-1..1).",
        "task",
        ("label", "dedupe"),
    ),
    # [run]
    Setting(
        "workers",
        8,
        WORKERS_HELP,
        "run",
        ("run", *_LOCAL, "estimate"),
        short="-w",
        command_defaults={"label": 4, "embed": 1, "dedupe": 1, "estimate": None},
    ),
    Setting("max_workers", 256, "The most workers auto may use.", "run"),
    Setting(
        "executor",
        "local",
        "Where the task's calls run: local (this process; threads for sync tasks), process "
        "(worker processes, for CPU-bound Python; --workers of them) or ray (Ray actors). "
        "Prompt tasks keep their HTTP calls in this process.",
        "run",
        ("run", "label", "embed"),
    ),
    Setting(
        "ray_address",
        None,
        "The Ray cluster for --executor ray: auto (a running one) or ray://host:10001 "
        "(default: a local Ray with this machine's CPUs).",
        "run",
    ),
    Setting(
        "ray_workers",
        None,
        "Ray actors for --executor ray (default: one per CPU in the cluster).",
        "run",
    ),
    Setting(
        "max_memory",
        None,
        "MB of resident memory above which no new item is admitted (in-flight ones go on; "
        "with nothing in flight, one at a time).",
        "run",
    ),
    Setting("timeout", None, "Seconds per attempt.", "run"),
    Setting("max_attempts", 3, "Attempts per item.", "run"),
    Setting(
        "retry_on",
        None,
        "Exception type to retry (repeatable; default: timeouts and connection errors; "
        "Exception retries all).",
        "run",
    ),
    Setting(
        "retry_delay", 0.5, "Seconds of backoff before the first retry; doubles each time.", "run"
    ),
    Setting("max_retry_delay", 30.0, "The longest backoff between retries, in seconds.", "run", ()),
    Setting("rows", None, "Row range A:B (0-based, B excluded).", "run", ("run", "verify")),
    Setting(
        "shard",
        None,
        "Shard K/N (1-based), split by key hash.",
        "run",
        ("run", "verify", "doctor"),
    ),
    Setting(
        "shard_limits",
        "split",
        "How a shard paces: split (1/N of each provider limit, as N shards side by side "
        "share the account) or full (the whole limit: the shards run one at a time, or on "
        "accounts of their own).",
        "run",
        ("run", "doctor"),
    ),
    Setting(
        "limit",
        None,
        "Only the first N selected rows.",
        "run",
        ("run", "label", "embed", "estimate", "verify"),
    ),
    Setting(
        "state",
        None,
        "State directory (default: .rowpilot/<job name>).",
        "run",
        ("run", *_LOCAL, "estimate"),
    ),
    Setting("grace", 30.0, "Seconds in-flight items get to finish after Ctrl-C.", "run"),
    Setting("force", False, "Redo every selected item.", "run"),
    Setting("retry_failed", False, "Retry items that failed in earlier runs.", "run"),
    Setting(
        "budget",
        None,
        "USD this run may spend; it stops before passing it.",
        "run",
        ("run", "label"),
        panel=PROMPT_PANEL,
    ),
    Setting(
        "rpm",
        None,
        "Requests/min of the model (default: learned).",
        "run",
        ("run", "label", "estimate"),
        panel=PROMPT_PANEL,
    ),
    Setting(
        "tpm",
        None,
        "Tokens/min of the model (default: learned).",
        "run",
        ("run", "label", "estimate"),
        panel=PROMPT_PANEL,
    ),
    Setting("max_concurrent", None, "Requests in flight at most.", "run", panel=PROMPT_PANEL),
    Setting(
        "cache",
        True,
        "Reuse journaled answers; --no-cache pays again.",
        "run",
        ("run", "label"),
        panel=PROMPT_PANEL,
    ),
    Setting(
        "env_file",
        None,
        "File of API keys (default: ./.env).",
        "run",
        ("run", "label", "doctor"),
        panel=PROMPT_PANEL,
    ),
    Setting(
        "keep_going",
        False,
        "Do not stop when the first items all fail alike (only those rows are bad).",
        "run",
    ),
    Setting("name", None, "Job name (names the state directory).", None),
    Setting(
        "progress",
        None,
        "Show progress (default: a bar on a terminal).",
        None,
        ("run", *_LOCAL),
    ),
    # [output]
    Setting(
        "output",
        None,
        "Write the enriched table (.csv, .jsonl, .parquet).",
        "output",
        ("run", *_LOCAL),
        short="-o",
        key="path",
    ),
    Setting("json_dir", None, "Write one JSON file per key here.", "output"),
    Setting("failures", None, "Write failed items as JSONL.", "output"),
    Setting(
        "output_prefix",
        "",
        "Put this before every output field name (e.g. out_), so outputs named like input "
        "columns do not clash with them.",
        "output",
        key="prefix",
    ),
    Setting(
        "vectors",
        None,
        "Also write the vectors to a store: lancedb://PATH/TABLE.",
        "output",
        ("embed",),
        aliases=(Alias("to", ("embed",)),),
    ),
    Setting("insert_batch", 1000, "Vectors per vector-store write.", "output", ("embed",)),
    Setting(
        "write_back",
        False,
        "Google Sheets source: write each item's outputs into its worksheet, by key, as items "
        "finish (cells edited by hand are reported, never overwritten).",
        "output",
    ),
    Setting(
        "write_batch", 200, "Write-back: rows per write (or write_interval, if sooner).", "output"
    ),
    Setting(
        "write_interval",
        5.0,
        "Write-back: seconds the first finished row waits at most for its write.",
        "output",
    ),
    Setting(
        "sheets_write_rpm",
        60.0,
        "Google Sheets write requests a minute at most (the API's quota per user).",
        "output",
    ),
)

# ``rowpilot compare`` takes a prompt job's settings as run does, except the model (it has
# --models), what a run writes (it writes its own -o) and what only a long run needs.
_COMPARE = frozenset(
    {
        *("source", "key", "encoding", "format", "duplicates", "trust_quotes", "credentials"),
        *("sheet", "header_row", "rows", "limit", "state", "name", "progress"),
        *("base_url", "prompt", "system", "schema", "labels", "text_column", "max_tokens"),
        *("params", "batch_size", "call_timeout", "workers", "timeout", "max_attempts"),
        *("budget", "rpm", "tpm", "max_concurrent", "cache", "env_file", "output_prefix"),
        "keep_going",
    }
)
SETTINGS = tuple(
    replace(s, commands=(*s.commands, "compare")) if s.name in _COMPARE else s for s in SETTINGS
)

BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}
# Tables whose keys are names of the user's (a provider, a model), taken whole.
NAMED_TABLES = ("limits", "prices", "providers")


def toml_keys(section: str) -> dict[str, str]:
    """A TOML table's keys, each to its JobConfig field."""
    return {s.toml_key: s.config_field for s in SETTINGS if s.section == section}


def toml_aliases(section: str) -> dict[str, Setting]:
    return {
        alias.old: setting
        for setting in SETTINGS
        if setting.section == section
        for alias in setting.aliases
        if alias.toml
    }


def sections() -> tuple[str, ...]:
    return tuple(dict.fromkeys(s.section for s in SETTINGS if s.section is not None))


def for_command(command: str) -> tuple[Setting, ...]:
    return tuple(s for s in SETTINGS if command in s.commands)


def flag_aliases(command: str) -> dict[str, str]:
    """The old flags ``command`` still takes, each to its new flag."""
    return {
        alias.flag: setting.flag
        for setting in SETTINGS
        for alias in setting.aliases
        if command in alias.commands
    }


def deprecated(old: str, new: str) -> None:
    warn(f"{old} is deprecated, use {new}")


def renamed(given: Mapping[str, Any], command: str) -> dict[str, Any]:
    """Keyword settings with their old names (``command``'s) replaced, one warning each."""
    settings = dict(given)
    for setting in SETTINGS:
        for alias in setting.aliases:
            if command in alias.commands and alias.old in settings:
                value = settings.pop(alias.old)
                deprecated(f"{alias.old}=", f"{setting.name}=")
                if value is not None:
                    settings[setting.name] = value
    return settings
