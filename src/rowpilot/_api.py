"""The library face: ``rowpilot.run(task, source, ...)``, the same engine as the CLI."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict, Unpack

from rowpilot import _settings
from rowpilot._config import build_config
from rowpilot._result import Result
from rowpilot._targets import scheme_of
from rowpilot.engine.job import run_sync
from rowpilot.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from rowpilot.local_model.dedupe import DedupeReport

PathLike = str | os.PathLike[str]


Workers = int | Literal["auto"]
BatchSize = int | Literal["auto"]


class _RunRenamed(TypedDict, total=False):
    """run()'s old keywords, kept for one release (rowpilot._settings has the new names)."""

    dedupe: Literal["first"] | None


def run(
    task: Callable[..., Any] | str | None = None,
    source: PathLike | Iterable[Mapping[str, Any]] | Any = None,
    *,
    key: str | None = None,
    workers: Workers = 8,
    max_workers: int = 256,
    executor: Literal["local", "process", "ray"] = "local",
    ray_address: str | None = None,
    ray_workers: int | None = None,
    max_memory: float | None = None,
    state: PathLike | None = None,
    name: str | None = None,
    limit: int | None = None,
    rows: str | tuple[int | None, int | None] | None = None,
    shard: str | tuple[int, int] | None = None,
    shard_limits: Literal["split", "full"] = "split",
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
    duplicates: Literal["first"] | None = None,
    trust_quotes: bool = False,
    follow_symlinks: bool = False,
    credentials: PathLike | None = None,
    sheet: str | None = None,
    header_row: int | None = None,
    output_prefix: str = "",
    keep_going: bool = False,
    grace: float = 30.0,
    progress: bool | None = False,
    model: str | None = None,
    base_url: str | None = None,
    prompt: str | None = None,
    system: str | None = None,
    schema: type[Any] | Mapping[str, Any] | None = None,
    fields: Mapping[str, str] | None = None,
    labels: list[str] | None = None,
    text_column: str | None = None,
    max_tokens: int | None = None,
    params: Mapping[str, Any] | None = None,
    structured: bool = True,
    repair_attempts: int = 2,
    batch_size: BatchSize = 1,
    call_timeout: float = 60.0,
    batch_api: bool = False,
    batch_fallback: Literal["batch", "online"] = "batch",
    detach: bool = False,
    batch_poll: float = 30.0,
    dashboard: bool = False,
    embed: bool = False,
    embed_batch: int = 512,
    threshold: float | None = None,
    budget: float | None = None,
    rpm: float | None = None,
    tpm: float | None = None,
    max_concurrent: int | None = None,
    cache: bool = True,
    env_file: PathLike | None = None,
    vectors: str | None = None,
    insert_batch: int = 1000,
    write_back: bool = False,
    write_batch: int = 200,
    write_interval: float = 5.0,
    sheets_write_rpm: float = 60.0,
    limits: Mapping[str, Mapping[str, float]] | None = None,
    prices: Mapping[str, Any] | None = None,
    providers: Mapping[str, Mapping[str, Any]] | None = None,
    **renamed: Unpack[_RunRenamed],
) -> Result:
    """Run ``task`` over every row of ``source``; resume where an earlier run stopped.

    ``task`` is a function ``(row) -> dict`` or ``(row, ctx) -> dict`` (sync or async),
    or a ``"module:function"`` / ``"file.py:function"`` string. ``source`` is a path to a
    CSV, JSONL, Parquet or Excel file, a pandas DataFrame, or any iterable of dicts. Rows are
    keyed by ``key`` (a column) or else by row number. Running the same call again skips
    done and unchanged rows. Example::

        result = rowpilot.run(classify, "reviews.csv", key="id", workers=16)
        df = result.to_pandas()

    Every keyword is a setting of the job, named as its CLI flag and TOML key are (the
    table in rowpilot._settings, listed in docs/settings.md).

    Output fields may not be named like input columns (a table would lose the input):
    ``output_prefix="out_"`` names them apart. The first items all failing alike stop
    the run early with their rows left pending, unless ``keep_going``.

    A DataFrame or another in-memory source gets its own state, named by a hash of its
    columns and keys (``.rowpilot/<name>-<hash>``), so two different frames never share
    one; pass ``state=`` to choose the folder.

    ``executor`` is where the calls run: ``"local"`` (this process: async tasks on its
    event loop, sync ones in ``workers`` threads), ``"process"`` (``workers`` worker
    processes, for CPU-bound Python: threads take turns on one core) or ``"ray"`` (Ray
    actors: ``ray_workers``, on ``ray_address`` or a local Ray); prompt tasks keep their
    HTTP calls in this process whatever is asked (docs/scaling.md).

    ``workers`` is how many task calls run at once (a call is one row, or one batch of
    rows where rows are batched); ``workers="auto"`` sizes the run from the CPUs, memory,
    rate limits and measured throughput, and keeps adjusting it (at most ``max_workers``);
    ``max_memory`` (MB) holds back new items while the process's resident memory is above
    it.

    Without a task, it runs a prompt: ``prompt`` (a template with ``{column}`` fields) and
    ``model`` ("openai/gpt-4o-mini"), or the local model's tasks (``embed=True`` with
    ``text_column``, and ``vectors="lancedb://PATH/TABLE"`` to write the vectors)::

        rowpilot.run(source="reviews.csv", key="id", model="openai/gpt-4o-mini",
                     prompt="Sentiment of: {text}", fields={"sentiment": "pos|neg|mixed"},
                     batch_size=10, budget=1.0)
    """
    if source is None:
        raise ConfigError("no source given", hint="pass source=PATH or a DataFrame")
    given = _settings.renamed({**renamed, **_explicit(locals())}, "run")
    return run_sync(build_config(_as_config(given)))


def _explicit(given: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in given.items() if name != "renamed"}


_MAPPINGS = ("params", "limits", "prices", "providers", "fields")
_PATHS = ("state", "output", "json_dir", "failures", "env_file", "credentials")


def _as_config(given: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword settings as JobConfig's fields: paths as paths, ranges as text."""
    settings: dict[str, Any] = {}
    for name, value in given.items():
        if value is None and name in (*_MAPPINGS, *_PATHS):
            continue
        setting = _settings.BY_NAME.get(name)
        settings[setting.config_field if setting else name] = value
    for name in _PATHS:
        if name in settings and scheme_of(os.fspath(settings[name])) is None:
            settings[name] = Path(settings[name])  # a URL stays whole: a Path folds "//"
    for name in _MAPPINGS:
        if name in settings:
            settings[name] = dict(settings[name])
    settings["rows"] = _range_text(settings.get("rows"), ":")
    settings["shard"] = _range_text(settings.get("shard"), "/")
    return settings


def _range_text(value: str | tuple[Any, Any] | None, separator: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    first, second = value
    return f"{'' if first is None else first}{separator}{'' if second is None else second}"


class _LabelRenamed(TypedDict, total=False):
    instructions: str | None


def label(
    source: PathLike | Iterable[Mapping[str, Any]] | Any,
    *,
    text_column: str,
    labels: list[str],
    model: str | None = None,
    base_url: str | None = None,
    threshold: float | None = None,
    batch_size: BatchSize = 10,
    workers: Workers = 4,
    executor: Literal["local", "process", "ray"] = "local",
    key: str | None = None,
    system: str | None = None,
    max_tokens: int | None = None,
    batch_api: bool = False,
    batch_fallback: Literal["batch", "online"] = "batch",
    detach: bool = False,
    batch_poll: float = 30.0,
    dashboard: bool = False,
    limit: int | None = None,
    budget: float | None = None,
    rpm: float | None = None,
    tpm: float | None = None,
    cache: bool = True,
    env_file: PathLike | None = None,
    output: PathLike | None = None,
    state: PathLike | None = None,
    name: str | None = None,
    summary: bool = True,
    progress: bool | None = False,
    sheet: str | None = None,
    header_row: int | None = None,
    **renamed: Unpack[_LabelRenamed],
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
    given = _settings.renamed({**renamed, **_explicit(locals())}, "label")
    del given["summary"]
    if model is None:
        given["model"] = default_label_model(env_file)
    given["name"] = name or _job_name(source, "labels", sheet)
    result = run(**given)
    from rowpilot.llm.labels import label_summary

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
    from rowpilot.llm.environ import load_environ

    environ = load_environ(Path(env_file) if env_file is not None else None)
    return "openai/gpt-4o-mini" if environ.get("OPENAI_API_KEY") else "local/wordllama"


class _EmbedRenamed(TypedDict, total=False):
    to: str | None


def embed(
    source: PathLike | Iterable[Mapping[str, Any]] | Any,
    *,
    text_column: str,
    key: str | None = None,
    vectors: str | None = None,
    output: PathLike | None = None,
    embed_batch: int = 512,
    insert_batch: int = 1000,
    workers: Workers = 1,
    executor: Literal["local", "process", "ray"] = "local",
    limit: int | None = None,
    state: PathLike | None = None,
    name: str | None = None,
    progress: bool | None = False,
    sheet: str | None = None,
    header_row: int | None = None,
    **renamed: Unpack[_EmbedRenamed],
) -> Result:
    """Embed a text column with the bundled local model; ``vectors="lancedb://PATH/TABLE"``
    also writes the vectors to LanceDB (keyed: a re-run never duplicates one). Example::

        result = rowpilot.embed("docs.csv", key="id", text_column="body")
        vectors = result.to_pandas()["embedding"]
    """
    given = _settings.renamed({**renamed, **_explicit(locals())}, "embed")
    given["name"] = name or _job_name(source, "embed", sheet)
    return run(embed=True, **given)


def dedupe(
    source: PathLike | Iterable[Mapping[str, Any]] | Any,
    *,
    text_column: str,
    key: str | None = None,
    threshold: float | None = None,
    workers: Workers = 1,
    state: PathLike | None = None,
    name: str | None = None,
    progress: bool | None = False,
    summary: bool = True,
    sheet: str | None = None,
    header_row: int | None = None,
) -> tuple[pd.DataFrame, DedupeReport]:
    """Group near-duplicate texts (casing, punctuation and word order aside).

    Returns the rows with ``cluster`` (0, 1, ...) and ``canonical_key`` (the key of the
    cluster's first row) and a report. Example::

        frame, report = rowpilot.dedupe("companies.csv", key="id", text_column="name")
    """
    from rowpilot.local_model.dedupe import clusters_table
    from rowpilot.local_model.model import DEFAULT_DEDUPE_THRESHOLD

    settings: dict[str, Any] = {
        "source": source,
        "embed": True,
        "normalise": True,
        "text_column": text_column,
        "key": key,
        "workers": workers,
        "name": name or _job_name(source, "dedupe", sheet),
        "progress": progress,
        "sheet": sheet,
        "header_row": header_row,
    }
    if state is not None:
        settings["state"] = Path(state)
    result = run_sync(build_config(settings))
    chosen = DEFAULT_DEDUPE_THRESHOLD if threshold is None else threshold
    frame, report = clusters_table(result.state, chosen)
    if summary:
        print("\n".join(report.lines()))
    return frame, report


def _job_name(source: Any, kind: str, sheet: str | None = None) -> str:
    """A built-in command's job name: the file's stem (and a workbook's sheet, so two
    sheets never share a state) and the kind of work."""
    if isinstance(source, str | os.PathLike):
        stem = Path(source).stem if sheet is None else f"{Path(source).stem}-{sheet}"
        return f"{stem}-{kind}"
    return kind


def compare(
    job: PathLike | Iterable[Mapping[str, Any]] | Any = None,
    *,
    models: Sequence[str],
    sample: int = 200,
    reference: str | Sequence[str] | None = None,
    output: PathLike | None = None,
    budget: float | None = None,
    tolerance: float = 0.01,
    source: PathLike | Iterable[Mapping[str, Any]] | Any = None,
    key: str | None = None,
    prompt: str | None = None,
    system: str | None = None,
    schema: type[Any] | Mapping[str, Any] | None = None,
    fields: Mapping[str, str] | None = None,
    labels: list[str] | None = None,
    text_column: str | None = None,
    base_url: str | None = None,
    batch_size: BatchSize | None = None,
    max_tokens: int | None = None,
    params: Mapping[str, Any] | None = None,
    workers: Workers | None = None,
    rpm: float | None = None,
    tpm: float | None = None,
    max_concurrent: int | None = None,
    cache: bool | None = None,
    env_file: PathLike | None = None,
    state: PathLike | None = None,
    name: str | None = None,
    limit: int | None = None,
    rows: str | tuple[int | None, int | None] | None = None,
    format: str | None = None,
    encoding: str | None = None,
    sheet: str | None = None,
    header_row: int | None = None,
    output_prefix: str | None = None,
    prices: Mapping[str, Any] | None = None,
    providers: Mapping[str, Mapping[str, Any]] | None = None,
    limits: Mapping[str, Mapping[str, float]] | None = None,
    progress: bool | None = None,
    summary: bool = True,
) -> pd.DataFrame:
    """Run a prompt job's stable sample with each of ``models``; return a row per model.

    ``job`` is a TOML job file, or the source (a path, a DataFrame) with the job given by
    the keywords (as ``run`` takes them; a keyword also overrides the job file's setting).
    The sample is the ``sample`` rows with the smallest key hashes: the same rows run
    after run. Each model's run is journaled in its own state beside the job's, so calling
    it again pays nothing; ``budget`` (USD) is what all the runs may spend together.
    Agreement is per output field with ``reference`` (an input column: ``"COLUMN"`` for a
    one-field job, else ``"FIELD=COLUMN"`` entries), else with the first model; numbers
    agree within ``tolerance`` of the larger (0.5: within a factor of 2).
    ``output`` writes the answers side by side as CSV. The frame's columns and
    ``attrs`` (``answers``: the side-by-side table) are in docs/compare.md. Example::

        frame = rowpilot.compare("job.toml", models=["openai/gpt-4o-mini",
                                 "anthropic/claude-haiku-4-5"], sample=200)
    """
    given = {
        name: value
        for name, value in _as_config(_explicit(locals())).items()
        if value is not None and name not in _COMPARE_ONLY
    }
    from rowpilot._config import read_job_file
    from rowpilot.comparison import CompareRequest, compare_job

    settings: dict[str, Any] = {}
    if isinstance(job, str | os.PathLike) and os.fspath(job).endswith(".toml"):
        settings = read_job_file(Path(job))
    elif job is not None:
        settings["source"] = job
    settings.update(given)
    references = (reference,) if isinstance(reference, str) else tuple(reference or ())
    request = CompareRequest(
        models=tuple(models),
        sample=sample,
        reference=references,
        output=Path(output) if output is not None else None,
        budget=budget if budget is not None else settings.get("budget"),
        tolerance=tolerance,
    )
    comparison = compare_job(settings, request)
    if summary:
        print("\n".join(comparison.lines()))
    return comparison.to_pandas()


# compare()'s own keywords, not settings of the job (its output and budget mean the
# comparison's, not a run's).
_COMPARE_ONLY = ("job", "models", "sample", "reference", "output", "budget", "tolerance", "summary")
