"""The library face: ``rowpilot.run(task, source, ...)``, the same engine as the CLI."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rowpilot._config import build_config
from rowpilot._engine import run_sync
from rowpilot._result import Result
from rowpilot.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from rowpilot._dedupe import DedupeReport

PathLike = str | os.PathLike[str]


def run(
    task: Callable[..., Any] | str | None = None,
    source: PathLike | Iterable[Mapping[str, Any]] | Any = None,
    *,
    key: str | None = None,
    workers: int | Literal["auto"] = 8,
    max_workers: int = 256,
    max_memory: float | None = None,
    state: PathLike | None = None,
    name: str | None = None,
    limit: int | None = None,
    rows: str | tuple[int | None, int | None] | None = None,
    shard: str | tuple[int, int] | None = None,
    force: bool = False,
    retry_failed: bool = False,
    timeout: float | None = None,
    max_attempts: int = 3,
    retry_on: list[str] | None = None,
    retry_delay: float = 0.5,
    max_retry_delay: float = 30.0,
    task_version: str | None = None,
    output: PathLike | None = None,
    json_dir: PathLike | None = None,
    failures: PathLike | None = None,
    encoding: str | None = None,
    format: str | None = None,
    dedupe: Literal["first"] | None = None,
    trust_quotes: bool = False,
    follow_symlinks: bool = False,
    output_prefix: str = "",
    keep_going: bool = False,
    grace: float = 30.0,
    progress: bool | None = False,
    **prompt: Any,
) -> Result:
    """Run ``task`` over every row of ``source``; resume where an earlier run stopped.

    ``task`` is a function ``(row) -> dict`` or ``(row, ctx) -> dict`` (sync or async),
    or a ``"module:function"`` / ``"file.py:function"`` string. ``source`` is a path to a
    CSV, JSONL or Parquet file, a pandas DataFrame, or any iterable of dicts. Rows are
    keyed by ``key`` (a column) or else by row number. Running the same call again skips
    done and unchanged rows. Example::

        result = rowpilot.run(classify, "reviews.csv", key="id", workers=16)
        df = result.to_pandas()

    Output fields may not be named like input columns (a table would lose the input):
    ``output_prefix="out_"`` names them apart. The first items all failing alike stop
    the run early with their rows left pending, unless ``keep_going``.

    A DataFrame or another in-memory source gets its own state, named by a hash of its
    columns and keys (``.rowpilot/<name>-<hash>``), so two different frames never share
    one; pass ``state=`` to choose the folder.

    ``workers="auto"`` sizes the run from the CPUs, memory, rate limits and measured
    throughput, and keeps adjusting it (at most ``max_workers``); ``max_memory`` (MB) holds
    back new items while the process's resident memory is above it.

    Without a task, it runs a prompt: ``prompt`` (a template with ``{column}`` fields),
    ``model`` ("openai/gpt-4o-mini"), and optionally ``base_url``, ``system``, ``schema``
    (a pydantic model or a JSON Schema dict), ``fields``, ``labels``/``text_column``,
    ``batch_size``, ``max_tokens``, ``params``, ``budget``, ``rpm``, ``tpm``,
    ``max_concurrent``, ``cache``, ``limits``, ``prices``, ``providers``, ``env_file``::

        rowpilot.run(source="reviews.csv", key="id", model="openai/gpt-4o-mini",
                     prompt="Sentiment of: {text}", fields={"sentiment": "pos|neg|mixed"},
                     batch_size=10, budget=1.0)
    """
    if source is None:
        raise ConfigError("no source given", hint="pass source=PATH or a DataFrame")
    settings: dict[str, Any] = {
        "task": task,
        "source": source,
        "key": key,
        "workers": workers,
        "max_workers": max_workers,
        "max_memory": max_memory,
        "name": name,
        "limit": limit,
        "rows": _range_text(rows, ":"),
        "shard": _range_text(shard, "/"),
        "force": force,
        "retry_failed": retry_failed,
        "timeout": timeout,
        "max_attempts": max_attempts,
        "retry_on": retry_on,
        "retry_delay": retry_delay,
        "max_retry_delay": max_retry_delay,
        "task_version": task_version,
        "encoding": encoding,
        "format": format,
        "dedupe": dedupe,
        "trust_quotes": trust_quotes,
        "follow_symlinks": follow_symlinks,
        "output_prefix": output_prefix,
        "keep_going": keep_going,
        "grace": grace,
        "progress": progress,
        **_prompt_settings(prompt),
    }
    for field, value in (
        ("state", state),
        ("output", output),
        ("json_dir", json_dir),
        ("failures", failures),
    ):
        if value is not None:
            settings[field] = Path(value)
    return run_sync(build_config(settings))


def _range_text(value: str | tuple[Any, Any] | None, separator: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    first, second = value
    return f"{'' if first is None else first}{separator}{'' if second is None else second}"


_PROMPT_SETTINGS = frozenset(
    {
        "model",
        "base_url",
        "prompt",
        "system",
        "fields",
        "labels",
        "text_column",
        "batch_size",
        "max_tokens",
        "params",
        "structured",
        "repair_attempts",
        "call_timeout",
        "threshold",
        "embed_batch",
        "budget",
        "rpm",
        "tpm",
        "max_concurrent",
        "cache",
        "env_file",
        "limits",
        "prices",
        "providers",
    }
)


def _prompt_settings(given: Mapping[str, Any]) -> dict[str, Any]:
    settings = dict(given)
    if "schema" in settings:
        settings["output_schema"] = settings.pop("schema")
    unknown = set(settings) - _PROMPT_SETTINGS - {"output_schema"}
    if unknown:
        raise ConfigError(
            f"run() got an unknown setting {sorted(unknown)[0]!r}",
            hint="see help(rowpilot.run) for the settings",
        )
    if settings.get("env_file") is not None:
        settings["env_file"] = Path(settings["env_file"])
    return settings


def label(
    source: PathLike | Iterable[Mapping[str, Any]] | Any,
    *,
    text_column: str,
    labels: list[str],
    model: str | None = None,
    batch_size: int | str = 10,
    workers: int = 4,
    key: str | None = None,
    instructions: str | None = None,
    output: PathLike | None = None,
    state: PathLike | None = None,
    name: str | None = None,
    summary: bool = True,
    progress: bool | None = False,
    **settings: Any,
) -> pd.DataFrame:
    """Add one boolean column per label to a table of texts; return the enriched table.

    Several rows go in each request (``batch_size``), ``workers`` requests at once, and a
    run stopped halfway resumes where it stopped. Without ``model`` it is
    ``openai/gpt-4o-mini`` when an ``OPENAI_API_KEY`` is set (or in ``.env``), else the
    bundled ``local/wordllama`` (similarity to each label, ``threshold`` to decide). With
    ``summary`` it prints each label's count and share (also in
    ``df.attrs["label_summary"]``). Example::

        df = rowpilot.label("comments.csv", text_column="text",
                            labels=["racist", "sexist", "homophobic"], batch_size=10)
    """
    from rowpilot._labels import label_summary

    if model is None:
        model = default_label_model(settings.get("env_file"))
    result = run(
        source=source,
        key=key,
        workers=workers,
        state=state,
        name=name or _job_name(source, "labels"),
        output=output,
        progress=progress,
        model=model,
        text_column=text_column,
        labels=labels,
        batch_size=batch_size,
        system=instructions,
        **settings,
    )
    frame = result.to_pandas()
    counts = label_summary(result, labels)
    frame.attrs["label_summary"] = {
        "rows": counts.rows,
        "counts": counts.counts,
        "shares": {label: counts.share(label) for label in counts.counts},
    }
    if summary:
        print("\n".join(counts.lines()))
    return frame


def default_label_model(env_file: PathLike | None = None) -> str:
    """``openai/gpt-4o-mini`` when an OpenAI key is at hand, else the bundled local model."""
    from rowpilot._environ import load_environ

    environ = load_environ(Path(env_file) if env_file is not None else None)
    return "openai/gpt-4o-mini" if environ.get("OPENAI_API_KEY") else "local/wordllama"


def embed(
    source: PathLike | Iterable[Mapping[str, Any]] | Any,
    *,
    text_column: str,
    key: str | None = None,
    to: str | None = None,
    output: PathLike | None = None,
    embed_batch: int = 512,
    insert_batch: int = 1000,
    workers: int = 1,
    state: PathLike | None = None,
    name: str | None = None,
    progress: bool | None = False,
) -> Result:
    """Embed a text column with the bundled local model; ``to="lancedb://PATH/TABLE"`` also
    writes the vectors to LanceDB (keyed: a re-run never duplicates one). Example::

        result = rowpilot.embed("docs.csv", key="id", text_column="body")
        vectors = result.to_pandas()["embedding"]
    """
    settings: dict[str, Any] = {
        "source": source,
        "embed": True,
        "text_column": text_column,
        "key": key,
        "vectors": to,
        "embed_batch": embed_batch,
        "insert_batch": insert_batch,
        "workers": workers,
        "name": name or _job_name(source, "embed"),
        "progress": progress,
    }
    for field, value in (("state", state), ("output", output)):
        if value is not None:
            settings[field] = Path(value)
    return run_sync(build_config(settings))


def dedupe(
    source: PathLike | Iterable[Mapping[str, Any]] | Any,
    *,
    text_column: str,
    key: str | None = None,
    threshold: float | None = None,
    workers: int = 1,
    state: PathLike | None = None,
    name: str | None = None,
    progress: bool | None = False,
    summary: bool = True,
) -> tuple[pd.DataFrame, DedupeReport]:
    """Group near-duplicate texts (casing, punctuation and word order aside).

    Returns the rows with ``cluster`` (0, 1, ...) and ``canonical_key`` (the key of the
    cluster's first row) and a report. Example::

        frame, report = rowpilot.dedupe("companies.csv", key="id", text_column="name")
    """
    from rowpilot._dedupe import clusters_table
    from rowpilot._local import DEFAULT_DEDUPE_THRESHOLD

    settings: dict[str, Any] = {
        "source": source,
        "embed": True,
        "normalise": True,
        "text_column": text_column,
        "key": key,
        "workers": workers,
        "name": name or _job_name(source, "dedupe"),
        "progress": progress,
    }
    if state is not None:
        settings["state"] = Path(state)
    result = run_sync(build_config(settings))
    chosen = DEFAULT_DEDUPE_THRESHOLD if threshold is None else threshold
    frame, report = clusters_table(result.state, chosen)
    if summary:
        print("\n".join(report.lines()))
    return frame, report


def _job_name(source: Any, kind: str) -> str:
    if isinstance(source, str | os.PathLike):
        return f"{Path(source).stem}-{kind}"
    return kind
