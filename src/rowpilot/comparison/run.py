"""``rowpilot compare``: the job's prompt on one stable sample with each model, then
each model's cost, latency, invalid answers and agreement (the rules are in the package
docstring)."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rowpilot._config import JobConfig, build_config
from rowpilot.comparison.agreement import (
    NUMBER_TOLERANCE,
    FieldAgreement,
    FieldKind,
    agreement,
    checked_tolerance,
    field_kinds,
)
from rowpilot.comparison.agreement import reference_value as read_reference
from rowpilot.comparison.figures import ModelFigures, call_costs, outcome_counts
from rowpilot.comparison.report import Comparison
from rowpilot.comparison.sample import Sample, SampleSource, stable_sample
from rowpilot.engine.job import PreparedJob, prepare, run_sync
from rowpilot.errors import ConfigError, OutputPathError
from rowpilot.llm.cost import parse_price_overrides
from rowpilot.sinks.atomic import atomic_write, check_writable
from rowpilot.sinks.cells import cell_text, neutralise_cell
from rowpilot.sinks.exports import ExportRecord
from rowpilot.state.registry import Registry
from rowpilot.tasks.base import Task

# Settings of the job the comparison does not pass on: the job's outputs (it writes its own
# -o and nothing else) and its budget (the comparison's budget covers all the models).
_NOT_PASSED = ("output", "json_dir", "failures", "write_back", "vectors", "budget")


@dataclass(frozen=True)
class CompareRequest:
    """What to compare: the models (the first is the baseline without a reference), the
    sample's size, reference columns (``COLUMN`` for a one-field job, else
    ``FIELD=COLUMN``), the side-by-side CSV, the USD all the models' runs may spend and
    the numbers' relative tolerance."""

    models: tuple[str, ...]
    sample: int = 200
    reference: tuple[str, ...] = ()
    output: Path | None = None
    budget: float | None = None
    tolerance: float = NUMBER_TOLERANCE  # numbers agree within it, relative to the larger


def compare_job(settings: Mapping[str, Any], request: CompareRequest) -> Comparison:
    """Run the job of ``settings`` (as ``build_config`` takes them) on its stable sample
    with each of ``request.models`` and compare them."""
    models = _checked_models(request.models)
    tolerance = checked_tolerance(request.tolerance)
    base = _prompt_job(settings, models[0])
    whole = prepare(base)
    fields = tuple(whole.task.output_fields or ())
    columns = whole.scan.columns if whole.scan else list(whole.source.columns() or [])
    references = _references(request.reference, fields, columns)
    if request.output is not None:
        _check_output(request.output)
    sample = stable_sample(whole.source, whole.keyer, whole.selection, request.sample)
    source = SampleSource(whole.source, sample)
    configs = [_model_config(settings, whole, source, m, request.budget) for m in models]
    _preflight([prepare(config).task for config in configs])
    runs = _run_models(configs, request.budget)
    ran = configs[: len(runs.ended)]
    keys = [whole.keyer.item(row).key for row in sample.rows]
    outcomes = [_outputs(config.state, keys, base.output_prefix) for config in ran]
    comparison = _compare(whole, sample, ran, outcomes, references, tolerance)
    comparison.not_run = tuple(models[len(runs.ended) :])
    comparison.stop, comparison.exit_code = runs.stop, runs.exit_code
    comparison.answers = _answers(whole, sample, keys, ran, outcomes)
    if request.output is not None:
        written = write_answers(request.output, comparison.answers)
        comparison.written.append(f"wrote {written:,} rows to {request.output}")
    return comparison


def _checked_models(models: Sequence[str]) -> tuple[str, ...]:
    if not models:
        raise ConfigError("no models to compare", hint="pass --models M1 M2 ...")
    repeated = sorted({model for model in models if list(models).count(model) > 1})
    if repeated:
        raise ConfigError(f"--models names {repeated[0]} twice", hint="name each model once")
    for model in models:
        if model.partition("/")[0] == "local":
            raise ConfigError(
                f"{model} is the bundled local model, which answers no prompt",
                hint="compare provider models (openai/..., anthropic/...)",
            )
    return tuple(models)


def _prompt_job(settings: Mapping[str, Any], model: str) -> JobConfig:
    """The job as ``model`` would run it, without its outputs; refused unless a prompt job."""
    given = {name: value for name, value in settings.items() if name not in _NOT_PASSED}
    if given.get("task") is not None or given.get("embed"):
        raise ConfigError(
            "compare runs a prompt job, and this job runs a Python task or the local model",
            hint="give a job with a prompt (or labels) and fields: --prompt ... --fields ...",
        )
    if given.get("shard") is not None:
        raise ConfigError(
            "compare samples the whole job, and this job is a shard of it",
            hint="drop --shard (or [run] shard) for the comparison",
        )
    if given.get("prompt") is None and given.get("labels") is None:
        raise ConfigError(
            "compare runs a prompt job, and this job has no prompt",
            hint="give the job's prompt (--prompt, or prompt = in the job file) or --labels",
        )
    return build_config({**given, "model": model, "progress": given.get("progress", False)})


def _references(
    given: Sequence[str], fields: Sequence[str], columns: Sequence[str]
) -> dict[str, str]:
    """``FIELD=COLUMN`` (or a bare ``COLUMN`` for a job of one field) as field -> column."""
    mapped: dict[str, str] = {}
    for entry in given:
        name, equals, column = entry.partition("=")
        if not equals:
            if len(fields) != 1:
                raise ConfigError(
                    f"--reference {entry}: the job answers {len(fields)} fields "
                    f"({', '.join(fields)}), so say which one the column holds",
                    hint=f"write --reference FIELD={entry}",
                )
            name, column = fields[0], entry
        if name not in fields:
            raise ConfigError(
                f"--reference {entry}: the job has no output field {name!r}",
                hint=f"its fields are {', '.join(fields)}",
            )
        if column not in columns:
            raise ConfigError(
                "the reference column is not in the input",
                column=column,
                hint=f"the columns are {', '.join(repr(c) for c in columns[:12])}",
            )
        mapped[name] = column
    return mapped


def _check_output(path: Path) -> None:
    if path.suffix.lower() != ".csv":
        raise OutputPathError(
            f"compare writes its answers as CSV, and {path} is not a .csv",
            hint="give -o compare.csv",
        )
    check_writable(path)


def _model_config(
    settings: Mapping[str, Any],
    whole: PreparedJob,
    source: SampleSource,
    model: str,
    budget: float | None,
) -> JobConfig:
    """``model``'s run of the sample, in a state of its own beside the job's (with the
    whole budget: its preflight then refuses a model without a price before any run;
    each run gets what the earlier ones left)."""
    given = {name: value for name, value in settings.items() if name not in _NOT_PASSED}
    name = whole.state.name
    state = whole.state.parent / f"{name}-compare" / _folder_name(model)
    return build_config(
        {
            **given,
            "source": source,
            "model": model,
            "state": state,
            "name": f"{name}-compare-{_folder_name(model)}",
            "budget": budget,
            "progress": given.get("progress", False),
        }
    )


def _folder_name(model: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in model).strip("._") or "model"


def _preflight(tasks: Sequence[Task]) -> None:
    """Every model's key and name checked before the first one spends anything."""

    async def check_all() -> None:
        for task in tasks:
            try:
                await task.preflight()
            finally:
                await task.close()

    _run(check_all())


def _run(coroutine: Coroutine[Any, Any, None]) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coroutine)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:  # inside a running loop (Jupyter)
        pool.submit(asyncio.run, coroutine).result()


@dataclass
class _Runs:
    ended: list[Path] = field(default_factory=list)  # the state of each model run so far
    stop: str | None = None
    exit_code: int = 0


def _run_models(configs: Sequence[JobConfig], budget: float | None) -> _Runs:
    """Each model's run in turn, each under what the budget has left; a run the budget
    stops (exit 3), or that is interrupted or aborted, ends the comparison, the models
    after it not run."""
    runs = _Runs()
    spent = 0.0
    for config in configs:
        left = None if budget is None else budget - spent
        if left is not None and left <= 0:
            runs.stop = f"budget reached: ${spent:,.4f} of ${budget:,.4f} spent"
            runs.exit_code = 3
            return runs
        result = run_sync(config.model_copy(update={"budget": left}))
        spent += result.summary.cost_usd
        runs.ended.append(result.state)
        runs.exit_code = max(runs.exit_code, result.summary.exit_code)
        if result.summary.status in _ENDS_THE_COMPARISON:
            said = result.summary.stop_reason or result.summary.status.replace("_", " ")
            runs.stop = f"{said} ({config.model}); run the same command again to go on"
            return runs
    return runs


# A run that ended so stops the comparison (the models after it are not run); one whose
# rows all failed does not: the next model may answer them.
_ENDS_THE_COMPARISON = frozenset({"budget_reached", "interrupted", "aborted"})


def _compare(
    whole: PreparedJob,
    sample: Sample,
    configs: Sequence[JobConfig],
    outcomes: Sequence[Mapping[str, _Outcome]],
    references: Mapping[str, str],
    tolerance: float,
) -> Comparison:
    """Each model's figures; agreement per field with its reference column, else with the
    first model (which, without a reference, is the baseline and has none)."""
    fields = tuple(whole.task.output_fields or ())
    kinds = _kinds(whole.config, fields)
    overrides = parse_price_overrides(whole.config.prices or {})
    keys = [whole.keyer.item(row).key for row in sample.rows]
    baseline = _Baseline(keys, [row[2] for row in sample.rows], outcomes[:1], references, tolerance)
    figures: list[ModelFigures] = []
    for index, config in enumerate(configs):
        assert config.model is not None
        assert config.state is not None
        ended = [outcomes[index][key][:2] for key in keys if key in outcomes[index]]
        rows, answered, invalid = outcome_counts(ended)
        compared = [name for name in fields if index > 0 or name in references]
        figures.append(
            ModelFigures(
                model=config.model,
                rows=rows,
                answered=answered,
                invalid=invalid,
                costs=call_costs(config.state, overrides),
                agreement=tuple(baseline.agreement(n, kinds[n], outcomes[index]) for n in compared),
            )
        )
    return Comparison(
        figures,
        total=sample.total,
        sample=len(sample.rows),
        fields=fields,
        kinds=kinds,
        answers=[],
        baseline=configs[0].model or "" if configs else "",
        references=dict(references),
        tolerance=tolerance,
    )


_Outcome = tuple[str, str | None, dict[str, Any] | None]  # status, cause, the fields' values


def _outputs(state: Path | None, keys: Sequence[str], prefix: str) -> dict[str, _Outcome]:
    """The sample's outcomes in a model's state (an earlier, larger sample's left out)."""
    assert state is not None
    wanted = set(keys)
    registry = Registry(state)
    try:
        records = [r for r in registry.records() if r.key in wanted] if registry.exists else []
    finally:
        registry.close()
    return {r.key: (r.status, r.cause, _fields_of(r, prefix)) for r in records}


def _fields_of(record: ExportRecord, prefix: str) -> dict[str, Any] | None:
    if record.status != "done" or record.output is None:
        return None
    return {name[len(prefix) :]: value for name, value in record.output.items()}


def _kinds(config: JobConfig, fields: Sequence[str]) -> dict[str, FieldKind]:
    from rowpilot.llm.spec import build_prompt_spec

    return field_kinds(build_prompt_spec(config).schema.json_schema(), fields)


class _Baseline:
    """What each field's answers are compared with: its reference column, else the first
    model's answers (``first``: one model's outcomes, none when no model ran)."""

    def __init__(
        self,
        keys: Sequence[str],
        inputs: Sequence[dict[str, Any]],
        first: Sequence[Mapping[str, _Outcome]],
        references: Mapping[str, str],
        tolerance: float,
    ) -> None:
        self.keys = keys
        self.inputs = dict(zip(keys, inputs, strict=True))
        self.first = first[0] if first else {}
        self.references = references
        self.tolerance = tolerance

    def agreement(
        self, name: str, kind: FieldKind, outcomes: Mapping[str, _Outcome]
    ) -> FieldAgreement:
        pairs = []
        for key in self.keys:
            value = _value(outcomes.get(key), name)
            if name in self.references:
                cell = self.inputs[key].get(self.references[name])
                pairs.append((value, read_reference(cell, kind, value)))
            else:
                pairs.append((value, _value(self.first.get(key), name)))
        return agreement(name, kind, pairs, self.tolerance)


def _value(outcome: _Outcome | None, name: str) -> Any:
    if outcome is None or outcome[2] is None:
        return None
    return outcome[2].get(name)


def _answers(
    whole: PreparedJob,
    sample: Sample,
    keys: Sequence[str],
    configs: Sequence[JobConfig],
    outcomes: Sequence[Mapping[str, _Outcome]],
) -> list[dict[str, Any]]:
    """The answers side by side: the key, the inputs, then ``MODEL:FIELD`` per model and
    field. The key's column is ``key``, unless an input column has that name: then that
    column, when it is the key, else ``row_key``."""
    columns = whole.scan.columns if whole.scan else list(whole.source.columns() or [])
    fields = whole.task.output_fields or ()
    key_column = "row_key" if "key" in columns else "key"
    if whole.keyer.key_column == "key":
        key_column = ""  # the input's own key column says it
    table: list[dict[str, Any]] = []
    for key, (_, _, inputs) in zip(keys, sample.rows, strict=True):
        row: dict[str, Any] = {key_column: key} if key_column else {}
        row.update((column, inputs.get(column)) for column in columns)
        for config, answered in zip(configs, outcomes, strict=True):
            for name in fields:
                row[f"{config.model}:{name}"] = _value(answered.get(key), name)
        table.append(row)
    return table


def write_answers(path: Path, answers: Sequence[Mapping[str, Any]]) -> int:
    """The side-by-side table as CSV, written atomically, every cell formula-neutralised."""
    if not answers:
        raise OutputPathError(f"no answers to write to {path}", hint="no model ran")
    columns = list(answers[0])
    with atomic_write(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([neutralise_cell(name) for name in columns])
        for row in answers:
            writer.writerow([neutralise_cell(cell_text(row[name])) for name in columns])
    return len(answers)
