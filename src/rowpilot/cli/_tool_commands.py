"""Commands that run no job: ``doctor`` and ``simulate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from rowpilot.cli._app import _example, app
from rowpilot.cli._options import Json, option

# -- doctor -----------------------------------------------------------------------------


@app.command(
    epilog=_example(
        "rowpilot doctor",
        "rowpilot doctor job.toml --json",
        "rowpilot doctor job.toml --shard 2/4",
    )
)
def doctor(
    job: Annotated[
        Path | None, typer.Argument(help="A TOML job file: show the settings it would run with.")
    ] = None,
    env_file: Annotated[Path | None, option("env_file", "doctor")] = None,
    shard: Annotated[str | None, option("shard", "doctor")] = None,
    shard_limits: Annotated[str | None, option("shard_limits", "doctor")] = None,
    as_json: Json = False,
) -> None:
    """Show the machine, which provider keys are set (never their values), and the workers,
    memory cap, limits and state directory a job would run with; runs nothing."""
    from rowpilot._doctor import diagnose, lines

    given = {"shard": shard, "shard_limits": shard_limits}
    report = diagnose(job, env_file, {k: v for k, v in given.items() if v is not None})
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return
    for line in lines(report):
        print(line)


# -- simulate ---------------------------------------------------------------------------


@app.command(
    epilog=_example(
        "rowpilot simulate --port 8900 --rpm 6000 --tpm 2000000 --latency-ms 300",
        "rowpilot simulate --error-503 0.02 --hang 0.01 --api-key sk-sim-local",
        "rowpilot simulate --rpm 500 --search-rpm 100 --search-latency-ms 400",
        "rowpilot simulate --tpm 300000 --token-accounting usage",
        "rowpilot simulate --completion-delay-s 3600 --batch-row-errors 0.05 --disagree gpt-4o=0.2",
    )
)
def simulate(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 picks a free one).")] = 8900,
    api_key: Annotated[str | None, typer.Option(help="Require this key (default: any).")] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated model names.")] = None,
    latency_ms: Annotated[float | None, typer.Option(help="Median latency in ms.")] = None,
    latency_jitter: Annotated[
        float | None, typer.Option(help="Lognormal sigma of latency.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for latency and faults.")] = None,
    rpm: Annotated[float | None, typer.Option(help="Requests per minute, per model.")] = None,
    tpm: Annotated[float | None, typer.Option(help="Tokens per minute, per model.")] = None,
    input_tpm: Annotated[
        float | None, typer.Option(help="Input tokens per minute, per model (Anthropic-style).")
    ] = None,
    output_tpm: Annotated[
        float | None,
        typer.Option(help="Output tokens per minute, per model, settled at the real count."),
    ] = None,
    token_accounting: Annotated[
        str | None,
        typer.Option(
            help="admission: prompt + max_tokens stay charged (OpenAI); usage: the unused "
            "max_tokens are given back when the answer is done (Anthropic)."
        ),
    ] = None,
    max_concurrent: Annotated[int | None, typer.Option(help="Requests in flight at most.")] = None,
    error_500: Annotated[float | None, typer.Option(help="Share of requests answered 500.")] = None,
    error_503: Annotated[float | None, typer.Option(help="Share answered 503.")] = None,
    hang: Annotated[float | None, typer.Option(help="Share that hang, then drop.")] = None,
    reset: Annotated[float | None, typer.Option(help="Share whose connection is reset.")] = None,
    malformed: Annotated[float | None, typer.Option(help="Share with a non-JSON body.")] = None,
    bad_content: Annotated[
        float | None, typer.Option(help="Share whose JSON answer is not JSON.")
    ] = None,
    missing_field: Annotated[
        float | None, typer.Option(help="Share whose JSON answer misses a field or row.")
    ] = None,
    refuse_word: Annotated[
        str | None, typer.Option(help="Refuse (content filter) every prompt with this word.")
    ] = None,
    search_rpm: Annotated[
        float | None, typer.Option(help="Requests per minute of POST /search, its own limit.")
    ] = None,
    search_latency_ms: Annotated[
        float | None, typer.Option(help="Median latency of POST /search (default: --latency-ms).")
    ] = None,
    disagree: Annotated[
        list[str] | None,
        typer.Option(
            help="MODEL=SHARE: that model answers against the rule on this share of rows "
            "(online and in batches); repeat for more models."
        ),
    ] = None,
    completion_delay_s: Annotated[
        float | None,
        typer.Option(help="Batch clock seconds until a batch's last row is done (default 0)."),
    ] = None,
    expire_after_s: Annotated[
        float | None,
        typer.Option(help="Batch clock seconds until a batch expires (default 86400)."),
    ] = None,
    batch_row_errors: Annotated[
        float | None, typer.Option(help="Share of batch rows answered as a server error.")
    ] = None,
    batch_bad_content: Annotated[
        float | None, typer.Option(help="Share of batch rows answered with content not JSON.")
    ] = None,
    batch_missing_field: Annotated[
        float | None,
        typer.Option(help="Share of batch rows answered without their last field (or row)."),
    ] = None,
    batch_errors_persist: Annotated[
        bool,
        typer.Option(
            "--batch-errors-persist",
            help="A batch row errs in every batch, not only the first it is submitted in.",
        ),
    ] = False,
    batch_max_requests: Annotated[
        int | None,
        typer.Option(help="Requests a batch may hold (default: 50,000 OpenAI, 100,000 Anthropic)."),
    ] = None,
    batch_max_bytes: Annotated[
        int | None,
        typer.Option(help="Bytes a batch may hold (default: 200 MiB OpenAI, 256 MiB Anthropic)."),
    ] = None,
    batch_queue_tokens: Annotated[
        int | None,
        typer.Option(help="OpenAI's enqueued prompt tokens per model across running batches."),
    ] = None,
) -> None:
    """Serve a local OpenAI/Anthropic-compatible API (with the Batch APIs) and a search API
    (POST /search) to rehearse jobs against (no cost). Move the batch clock with
    POST /batches/advance?seconds=N."""
    options = dict(locals())
    from rowpilot.simulator.server import SimulatorConfig, serve_forever

    serve_forever(SimulatorConfig.from_options(**options))
