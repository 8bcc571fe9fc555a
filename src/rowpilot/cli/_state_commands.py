"""Commands over a job's state: ``status``, ``export``, ``failures``, ``merge``, ``verify``."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from rowpilot._config import build_config, read_job_file
from rowpilot._targets import scheme_of
from rowpilot.cli._app import _example, _exit, app
from rowpilot.cli._options import IncludeStaleOption, Json, SettingsCommand, option
from rowpilot.engine.items import Keyer, Selection, parse_rows, parse_shard
from rowpilot.engine.job import STATE_ROOT, state_directory
from rowpilot.errors import ConfigError, RowpilotError, UserError
from rowpilot.sinks import Sink, SinkOptions, open_sink
from rowpilot.sinks.atomic import check_writable
from rowpilot.sinks.exports import (
    ExportRecord,
    failure_entry,
    table_format,
    write_json_dir,
    write_table,
)
from rowpilot.sinks.gsheet import leave_out_written_columns
from rowpilot.sources import open_source
from rowpilot.state import operations as _state
from rowpilot.state.lock import is_locked
from rowpilot.state.registry import Registry

# -- status, export, failures -----------------------------------------------------------


@app.command(
    epilog=_example(
        "rowpilot status",
        "rowpilot status .rowpilot/diseases",
        "rowpilot status .rowpilot/job/shard-* --json",
    )
)
def status(
    states: Annotated[
        list[str] | None,
        typer.Argument(help="State directories or job files (default: every job in .rowpilot/)."),
    ] = None,
    as_json: Json = False,
) -> None:
    """Show how far each job (or shard) is, and the total."""
    folders = [_state_dir(s) for s in states] if states else _state.find_states(STATE_ROOT)
    if not folders:
        raise ConfigError(
            f"no job states in {STATE_ROOT}/", hint="run a job here first, or name a state folder"
        )
    found, broken = _statuses(folders)
    if broken and not found:
        raise broken[0]
    for error in broken:  # one unreadable state must not hide the others
        print(f"rowpilot: error: {error}", file=sys.stderr)
    if as_json:
        views = [{**vars(f), "pending": f.pending} for f in found]
        print(json.dumps({"states": views, "total": _status_total(found)}, indent=2, default=str))
        _exit(2 if broken else 0)
        return
    for f in found:
        print(_status_line(f))
        for open_batch in f.open_batches:
            print(_batch_line(open_batch))
        if f.spending.get("calls"):
            spent = f.spending
            print(
                f"  cost ${spent['cost_usd']:,.4f}: {int(spent['calls']):,} calls, "
                f"{int(spent['input_tokens']):,} input and {int(spent['output_tokens']):,} "
                "output tokens"
            )
    if len(found) > 1:
        total = _status_total(found)
        print(
            f"TOTAL  done {total['done']:,}  failed {total['failed']:,}"
            + (f"  of {total['total']:,}" if total["total"] is not None else "")
        )
    if broken:
        _exit(2)


def _statuses(folders: list[Path]) -> tuple[list[_state.StateStatus], list[RowpilotError]]:
    found: list[_state.StateStatus] = []
    broken: list[RowpilotError] = []
    for folder in folders:
        try:
            found.append(_state.status(folder))
        except UserError as error:
            broken.append(error)
    return found, broken


def _status_line(f: _state.StateStatus) -> str:
    of = f" of {f.total:,}" if f.total is not None else ""
    last = f.last_run["status"] if f.last_run else "none"
    running = "  RUNNING" if f.running else ""
    stale = f"  stale {f.stale:,}" if f.stale else ""
    counts = f"done {f.done:,}  failed {f.failed:,}{stale}{of}"
    return f"{f.state}  {counts}  runs {f.runs}  last run {last}{running}"


def _batch_line(batch: dict[str, Any]) -> str:
    age = batch["age_seconds"]
    ago = f"{age / 3600:.1f} h" if age >= 3600 else f"{age / 60:.0f} min"
    # The provider counts requests; a request may carry several rows (--batch-size).
    requests, rows = batch.get("requests", batch["rows"]), batch["rows"]
    done = f"{batch['done']:,} of {rows:,} rows"
    if requests != rows:
        done = f"{batch['done']:,} of {requests:,} requests ({rows:,} rows)"
    return (
        f"  open batch {batch['provider']} {batch['batch_id']}: {done} done at the last "
        f"look, submitted {ago} ago"
    )


def _status_total(found: list[_state.StateStatus]) -> dict[str, Any]:
    totals = [f.total for f in found]
    return {
        "done": sum(f.done for f in found),
        "failed": sum(f.failed for f in found),
        "total": None if None in totals else sum(t for t in totals if t is not None),
    }


@app.command(
    epilog=_example(
        "rowpilot export .rowpilot/reviews -o enriched.parquet",
        "rowpilot export job.toml --json-dir results/",
        "rowpilot export .rowpilot/reviews -o so-far.csv --partial",
    )
)
def export(
    state: Annotated[str, typer.Argument(help="State directory or job file.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Table to write.")] = None,
    json_dir: Annotated[Path | None, typer.Option(help="Write one JSON file per key here.")] = None,
    done_only: Annotated[bool, typer.Option("--done-only", help="Leave failed items out.")] = False,
    include_stale: IncludeStaleOption = False,
    partial: Annotated[
        bool,
        typer.Option("--partial", help="Export while a run is still going (what is done so far)."),
    ] = False,
    to: Annotated[
        str | None,
        typer.Option(
            "--to", help="Write the table to a new Google Sheets worksheet: gsheet://ID/NAME."
        ),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="--to: write over the worksheet if it exists.")
    ] = False,
    credentials: Annotated[
        Path | None, typer.Option(help="--to: the Google credentials file (as for run).")
    ] = None,
    sheets_write_rpm: Annotated[
        float, typer.Option(help="--to: Google Sheets write requests a minute at most.")
    ] = 60.0,
) -> None:
    """Write the enriched table or per-key JSON files from the registry, or the table to a
    Google Sheets worksheet (--to).

    While a run of the job is still going, it refuses (exit 1) unless --partial."""
    if output is None and json_dir is None and to is None:
        raise ConfigError(
            "nothing to export", hint="pass -o FILE, --json-dir DIR and/or --to gsheet://ID/NAME"
        )
    sheet = _sheet_sink(to, replace, credentials, sheets_write_rpm) if to is not None else None
    if output is not None:
        check_writable(output, what="output")
        table_format(output)
    folder = _state_dir(state)
    if not _export_allowed(folder, partial):
        _exit(1)
    registry = Registry(folder)
    try:
        _check_job_key(state, registry)
        records = functools.partial(registry.records, include_stale=include_stale)
        if output is not None:
            count = write_table(output, records, registry.input_columns(), done_only=done_only)
            print(f"wrote {count:,} rows to {output}")
        if json_dir is not None:
            report = write_json_dir(json_dir, functools.partial(records, status="done"))
            print(f"{json_dir}: {report.written:,} written, {report.unchanged:,} unchanged")
        if sheet is not None:
            print(sheet.write(registry))
    finally:
        registry.close()


def _sheet_sink(target: str, replace: bool, credentials: Path | None, rpm: float) -> Sink:
    """The sink of ``--to``, checked before the registry is read."""
    options = SinkOptions(
        credentials=str(credentials) if credentials is not None else None,
        replace=replace,
        write_rpm=rpm,
    )
    if scheme_of(target) != "gsheet":
        raise ConfigError(
            f"--to {target!r} is not a Google Sheets worksheet", hint="write gsheet://ID/NAME"
        )
    sink = open_sink(target, options, by_suffix=False)
    sink.check()
    return sink


def _export_allowed(folder: Path, partial: bool) -> bool:
    """A live run's state is a moving target: an export of it is partial, and says so."""
    if not is_locked(folder):
        return True
    now = _state.status(folder)
    of = f" of {now.total:,}" if now.total is not None else ""
    print(
        f"rowpilot: the run in {folder} is still going: {now.done:,}{of} done"
        + (
            "; exporting what is done so far (--partial)"
            if partial
            else " (hint: wait for it to end, or pass --partial to export what is done so far)"
        ),
        file=sys.stderr,
    )
    return partial


def _check_job_key(state_or_job: str, registry: Registry) -> None:
    """A job file says how it keys its rows: its state must have been keyed the same."""
    if state_or_job.endswith(".toml"):
        settings = read_job_file(Path(state_or_job))
        _state.check_key_definition(registry, _effective_key(settings))


def _effective_key(settings: dict[str, Any]) -> str | None:
    """The key column a job's settings give (a folder's default, ``path``, included)."""
    key = settings.get("key")
    if key is None and settings.get("source") and Path(settings["source"]).is_dir():
        return "path"
    return str(key) if key is not None else None


@app.command(
    epilog=_example("rowpilot failures .rowpilot/reviews", "rowpilot failures job.toml --traceback")
)
def failures(
    state: Annotated[str, typer.Argument(help="State directory or job file.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write JSONL here.")] = None,
    with_traceback: Annotated[
        bool, typer.Option("--traceback", help="Include tracebacks.")
    ] = False,
    include_stale: IncludeStaleOption = False,
) -> None:
    """List failed items as JSONL: key, row, error type, error, attempts."""
    registry = Registry(_state_dir(state))
    try:
        lines = [
            _failure_line(record, trace, with_traceback)
            for record, trace in registry.failures(include_stale=include_stale)
        ]
    finally:
        registry.close()
    text = "".join(line + "\n" for line in lines)
    if output is None:
        sys.stdout.write(text)
    else:
        from rowpilot.sinks.atomic import write_text_atomic

        write_text_atomic(output, text)
        print(f"wrote {len(lines):,} failures to {output}", file=sys.stderr)


def _failure_line(record: ExportRecord, trace: str | None, with_traceback: bool) -> str:
    entry = failure_entry(record)
    if with_traceback:
        entry["traceback"] = trace
    return json.dumps(entry, ensure_ascii=False)


# -- merge, verify ----------------------------------------------------------------------


@app.command(
    epilog=_example("rowpilot merge .rowpilot/diseases/shard-* --into .rowpilot/diseases-all")
)
def merge(
    shards: Annotated[list[Path], typer.Argument(help="State directories to combine.")],
    into: Annotated[Path, typer.Option(help="State directory to merge into (created if new).")],
    as_json: Json = False,
) -> None:
    """Combine the registries of shards (or row ranges) into one.

    The merge builds a new registry beside the destination and moves it into place only
    when it is whole: a merge that is killed leaves the destination as it was."""
    report = _state.merge(shards, into)
    if as_json:
        print(json.dumps(vars(report), indent=2))
        return
    for source, count in report.per_source.items():
        print(f"{source}: {count:,} items")
    print(
        f"merged into {report.into}: {report.items:,} items, {report.conflicts:,} keys in "
        "more than one source (kept the done, newest outcome)"
    )


@app.command(
    cls=SettingsCommand,
    epilog=_example(
        "rowpilot verify job.toml",
        "rowpilot verify .rowpilot/diseases-all --source diseases.csv --key cui",
    ),
)
def verify(
    state_or_job: Annotated[str, typer.Argument(help="State directory or job file.")],
    source: Annotated[str | None, typer.Option(help="The input (default: the job file's).")] = None,
    key: Annotated[str | None, option("key", "verify")] = None,
    rows: Annotated[str | None, option("rows", "verify")] = None,
    shard: Annotated[str | None, option("shard", "verify")] = None,
    limit: Annotated[int | None, option("limit", "verify")] = None,
    duplicates: Annotated[str | None, option("duplicates", "verify")] = None,
    encoding: Annotated[str | None, option("encoding", "verify")] = None,
    format: Annotated[str | None, option("format", "verify")] = None,
    sheet: Annotated[str | None, option("sheet", "verify")] = None,
    header_row: Annotated[int | None, option("header_row", "verify")] = None,
    as_json: Json = False,
) -> None:
    """Check the registry against the source; exit 1 unless every row is done, once.

    The selection's options (--key, --rows, --duplicates, ...) are the ones the job ran with."""
    settings: dict[str, Any] = (
        read_job_file(Path(state_or_job)) if state_or_job.endswith(".toml") else {}
    )
    overrides = {
        "source": source,
        "key": key,
        "rows": rows,
        "shard": shard,
        "limit": limit,
        "duplicates": duplicates,
        "encoding": encoding,
        "format": format,
        "sheet": sheet,
        "header_row": header_row,
    }
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if "source" not in settings:
        raise ConfigError("verify needs the source", hint="pass --source FILE or a job file")
    if settings.get("dedupe") not in (None, "first"):
        raise ConfigError(
            f"--dedupe {settings['dedupe']!r} is unknown", hint="use --duplicates first"
        )
    opened = open_source(
        settings["source"],
        format=settings.get("format"),
        encoding=settings.get("encoding"),
        trust_quotes=bool(settings.get("trust_quotes")),
        follow_symlinks=bool(settings.get("follow_symlinks")),
        credentials=settings.get("credentials"),
        sheet=settings.get("sheet"),
        header_row=settings.get("header_row"),
    )
    leave_out_written_columns(opened, _state_dir(state_or_job))  # a sheet's outputs
    selection = Selection(
        rows=parse_rows(settings["rows"]) if settings.get("rows") else None,
        shard=parse_shard(settings["shard"]) if settings.get("shard") else None,
        limit=settings.get("limit"),
    )
    report = _state.verify(
        _state_dir(state_or_job),
        opened,
        Keyer(opened, settings.get("key")),
        selection,
        dedupe=settings.get("duplicates") == "first",
    )
    _print_verify(report, as_json)
    _exit(0 if report.complete else 1)


def _print_verify(report: _state.VerifyReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
        return
    print(
        f"expected {report.expected:,}  done {report.done:,}  failed {report.failed:,}  "
        f"missing {report.missing:,}  stale {report.stale:,}  not in source {report.extra:,}"
    )
    if report.dropped:
        print(
            f"  {report.dropped:,} rows repeat an earlier row's key (left out: --duplicates first)"
        )
    for kind, keys in report.examples.items():
        if keys:
            print(f"  {kind}: {', '.join(repr(k) for k in keys)}")
    if report.duplicates:
        print(f"  duplicates in the source: {report.duplicates}")
    for problem in report.vectors:
        print(f"  vectors: {problem}")
    print("complete" if report.complete else "INCOMPLETE")


def _state_dir(state_or_job: str) -> Path:
    """A state directory, or the one a job file's settings point at (named as a run of
    that job would name it: rowpilot.engine.job.state_directory)."""
    if not state_or_job.endswith(".toml"):
        return Path(state_or_job)
    settings = read_job_file(Path(state_or_job))
    if "prompt" not in settings and "labels" not in settings and "embed" not in settings:
        settings.setdefault("task", "x:y")  # only the name and the shard matter here
    config = build_config(settings)
    return state_directory(config, config.name or "job")
