"""LLM benchmarks: prompt tasks at the provider's rate-limit ceiling, against the simulator.

Run: .venv/bin/python bench/bench_llm.py [--quick]

Every run gets a fresh `rowpilot simulate` process of its own (buckets full, counters at
zero, and its CPU not charged to the client measured); its /stats give the requests, 429s
and tokens the provider saw. All requests ask max_tokens 64, so the tokens a request costs
at admission (prompt tokens + max_tokens, prompt tokens = characters / 4) are known.

1. Request-bound: one short chat request per row, rpm 6,000 (ceiling 100 requests/s), tpm
   2,000,000 (not reached), 300 ms latency. rowpilot's CLI told the limits; rowpilot
   learning them from the x-ratelimit-* headers; and the seed workflow, a ThreadPoolExecutor
   of 8 and of 64 workers calling the openai SDK with its default retries (max_retries=2).
2. Token-bound: ~1,500-token prompts, so tpm 2,000,000 binds and rpm does not: rowpilot told
   the limits versus the 64-worker pool; tokens/min counted as the simulator counts them.
3. Batching: rows at --batch-size 10 and 25: API calls made versus ceil(rows / batch), and
   every row's answer checked against the one the simulator derives from that row's text.

"run s" is the run itself: rowpilot's own elapsed (its summary line), or the pool's time
from the first submit to the last answer. "proc s" is the whole CLI process, start-up
included. "ok/s" counts answered (200) requests; a request that got a 429 is counted in
"429s", and a row is "failed" when the client gave up on it. A client that gives up on rows
ends sooner, so compare throughputs together with the rows done. The simulator's buckets
start full (one second's worth), so a short run can pass 1.0x the ceiling: each scenario
prints the best any client could do.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import csv
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _common import DATA, ROWPILOT, WORDS, machine, write_csv

RPM = 6_000
TPM = 2_000_000
LATENCY_MS = 300
MAX_TOKENS = 64
WORKERS = 64
MODEL = "gpt-4o-mini"
API_KEY = "sk-bench"
SHORT_PROMPT = "Classify: {text}"
LONG_PROMPT = "Summarize: {text}"
LONG_CHARS = 6_000
REQUESTS_CEILING = RPM / 60.0  # requests/s
TARGET_SHARE = 0.95
TARGET_429 = 0.01

_CHILDREN: set[subprocess.Popen[bytes]] = set()
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy


# -- data -----------------------------------------------------------------------------------


def short_csv(rows: int) -> Path:
    """Rows ``id,text`` with short, distinct texts (about 14 prompt tokens a request)."""

    def text(i: int) -> str:
        pick = random.Random(i).choice
        return f"order {i} arrived {pick(WORDS)} and the {pick(WORDS)} works {pick(WORDS)}"

    return write_csv(DATA / f"llm-short-{rows}.csv", rows, text)


def long_csv(rows: int) -> Path:
    """Rows ``id,text`` with texts of exactly LONG_CHARS characters."""

    def text(i: int) -> str:
        rng = random.Random(1_000_000 + i)
        words = [f"document {i}:"]
        length = len(words[0])
        while length < LONG_CHARS:
            words.append(rng.choice(WORDS))
            length += len(words[-1]) + 1
        return " ".join(words)[:LONG_CHARS].rstrip() + "."

    return write_csv(DATA / f"llm-long-{rows}-{LONG_CHARS}.csv", rows, text)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as source:
        return list(csv.DictReader(source))


def request_tokens(prompt: str, row: dict[str, str]) -> int:
    """The tokens one request costs at the simulator's admission: prompt + max_tokens."""
    return math.ceil(len(prompt.format(**row)) / 4) + MAX_TOKENS


# -- the simulator, in its own process ------------------------------------------------------


class SimProcess:
    """`rowpilot simulate` on a free port in a child process, stopped on exit."""

    def __init__(self, work: Path, rpm: float, tpm: float, latency_ms: float) -> None:
        self.args = [ROWPILOT, "simulate", "--port", "0", "--latency-ms", str(latency_ms)]
        self.args += ["--rpm", str(rpm), "--tpm", str(tpm)]
        self.log = Path(tempfile.mkstemp(prefix="sim-", suffix=".log", dir=work)[1])
        self.url = ""

    def __enter__(self) -> SimProcess:
        with self.log.open("wb") as log:
            self.process = _spawn(self.args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not (match := re.search(r"listening on (http://\S+)", self.log.read_text())):
            if self.process.poll() is not None or time.monotonic() > deadline:
                _stop(self.process)
                raise RuntimeError(f"the simulator did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        self.url = match[1]
        self.stats()  # it answers
        return self

    def __exit__(self, *exc_info: object) -> None:
        _stop(self.process)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def stats(self) -> dict[str, Any]:
        with _LOCAL.open(f"{self.url}/stats", timeout=10) as response:
            stats: dict[str, Any] = json.load(response)
        return stats


def _spawn(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(args, **kwargs)
    _CHILDREN.add(process)
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.returncode is None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    _CHILDREN.discard(process)


def _stop_all() -> None:
    for process in list(_CHILDREN):
        with contextlib.suppress(OSError):
            _stop(process)


# -- one measured run -----------------------------------------------------------------------


@dataclass
class Run:
    scenario: str
    label: str
    rows: int
    run_s: float
    proc_s: float | None  # the CLI process, start-up included
    ok: int  # chat requests answered 200 (the simulator's count)
    chat: int  # chat requests in all, 429s included
    limited: int  # 429s
    input_tokens: int  # prompt tokens of the answered requests
    done: int
    failed: int
    client_calls: int | None = None  # provider calls as rowpilot counts them
    retries: int | None = None
    peak_mb: int | None = None
    errors: Counter[str] = field(default_factory=Counter)
    summary: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.run_s

    @property
    def tokens_per_min(self) -> float:
        """Admission tokens (prompt + max_tokens) of the answered requests, per minute."""
        return (self.input_tokens + self.ok * MAX_TOKENS) / self.run_s * 60.0

    @property
    def limited_share(self) -> float:
        return self.limited / self.chat if self.chat else 0.0


def _from_stats(stats: dict[str, Any]) -> tuple[int, int, int, int]:
    """(200s, chat requests in all, 429s, prompt tokens) of the chat endpoint."""
    chat = stats["requests"].get("chat.completions", {})
    total = sum(chat.values())
    return chat.get("200", 0), total, chat.get("429", 0), stats["tokens"]["input"]


def _child_env() -> dict[str, str]:
    env = {**os.environ, "OPENAI_API_KEY": API_KEY}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def rowpilot_cli(
    scenario: str,
    label: str,
    sim: SimProcess,
    data: Path,
    rows: int,
    prompt: str,
    work: Path,
    *,
    limits: bool,
    batch_size: int = 1,
    output: Path | None = None,
) -> Run:
    """`rowpilot run` over ``data`` against ``sim``; limits given (--rpm/--tpm) or learned."""
    state = Path(tempfile.mkdtemp(prefix="state-", dir=work))
    args = [ROWPILOT, "run", str(data), "--key", "id", "--prompt", prompt]
    args += ["--model", f"openai/{MODEL}", "--base-url", sim.base_url]
    args += ["--workers", str(WORKERS), "--batch-size", str(batch_size)]
    args += ["--max-tokens", str(MAX_TOKENS), "--state", str(state), "--no-progress"]
    if limits:
        args += ["--rpm", str(RPM), "--tpm", str(TPM)]
    if output is not None:
        args += ["--output", str(output)]
    wall, peak, code, out, err = _measured(args, cwd=work, env=_child_env())
    stats = sim.stats()
    ok, chat, limited, tokens = _from_stats(stats)
    number = _numbers(out)
    summary = out.strip().splitlines()
    summary += [f"[stderr] {line}" for line in err.strip().splitlines()]
    if code not in (0, 1):
        summary.append(f"[exit code {code}]")
    return Run(
        scenario,
        label,
        rows,
        run_s=number.get("elapsed", wall),
        proc_s=wall,
        ok=ok,
        chat=chat,
        limited=limited,
        input_tokens=tokens,
        done=int(number.get("done", 0)),
        failed=int(number.get("failed", rows)),
        client_calls=int(number["calls"]) if "calls" in number else None,
        retries=int(number.get("retries", 0)),
        peak_mb=peak,
        summary=summary,
        stats=stats,
    )


def _numbers(summary: str) -> dict[str, float]:
    """The figures of rowpilot's summary lines."""
    patterns = {
        "done": r"([\d,]+) done",
        "failed": r"([\d,]+) failed",
        "elapsed": r"elapsed ([\d.]+)s",
        "calls": r"([\d,]+) provider calls",
        "retries": r"^([\d,]+) retries",
    }
    found = {}
    for name, pattern in patterns.items():
        match = re.search(pattern, summary, re.MULTILINE)
        if match:
            found[name] = float(match[1].replace(",", ""))
    return found


def _measured(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int, int, str, str]:
    """Run a command; (wall seconds, peak RSS MB, exit code, stdout, stderr)."""
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        process = _spawn(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=errors)
        try:
            assert process.stdout is not None
            output = process.stdout.read().decode("utf-8", "replace")
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        finally:
            _stop(process)
        elapsed = time.perf_counter() - started
        errors.seek(0)
        stderr = errors.read().decode("utf-8", "replace")
    return elapsed, usage.ru_maxrss // 1024, process.returncode, output, stderr


def threadpool(
    scenario: str, label: str, sim: SimProcess, data: Path, prompt: str, workers: int
) -> Run:
    """The seed workflow: one openai SDK call per row from a thread pool, default retries."""
    import openai

    rows = read_rows(data)
    client = openai.OpenAI(base_url=sim.base_url, api_key=API_KEY)  # max_retries=2

    def one(row: dict[str, str]) -> str | None:
        try:
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": prompt.format(**row)}],
                max_tokens=MAX_TOKENS,
            )
        except openai.OpenAIError as exc:
            return type(exc).__name__
        return None

    pool = ThreadPoolExecutor(workers)
    started = time.perf_counter()
    try:
        outcomes = list(pool.map(one, rows))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    run_s = time.perf_counter() - started
    client.close()
    stats = sim.stats()
    ok, chat, limited, tokens = _from_stats(stats)
    errors = Counter(outcome for outcome in outcomes if outcome is not None)
    failed = sum(errors.values())
    return Run(
        scenario,
        label,
        len(rows),
        run_s=run_s,
        proc_s=None,
        ok=ok,
        chat=chat,
        limited=limited,
        input_tokens=tokens,
        done=len(rows) - failed,
        failed=failed,
        errors=errors,
        stats=stats,
    )


# -- reporting ------------------------------------------------------------------------------


def describe(run: Run, ceiling: str) -> None:
    """The figures of one run, as soon as it ends."""
    proc = f", process {run.proc_s:.2f}s" if run.proc_s is not None else ""
    rss = f", peak RSS {run.peak_mb} MB" if run.peak_mb is not None else ""
    print(f"  {run.label}: {run.rows:,} rows in {run.run_s:.2f}s{proc}{rss}")
    if ceiling == "requests":
        share = f"{run.ok_per_s / REQUESTS_CEILING:.1%} of the {REQUESTS_CEILING:.0f}/s ceiling"
    elif ceiling == "tokens":
        share = f"{run.tokens_per_min / TPM:.1%} of the {TPM:,} tokens/min ceiling"
    else:
        share = f"{run.rows / run.run_s:,.0f} rows/s"
    print(f"    {run.ok_per_s:,.1f} ok requests/s, {run.tokens_per_min:,.0f} tokens/min: {share}")
    print(
        f"    chat requests {run.chat:,} ({run.ok:,} ok), 429s {run.limited:,} "
        f"({run.limited_share:.1%}), failed rows {run.failed:,}, done {run.done:,}"
    )
    if run.errors:
        kinds = ", ".join(f"{kind} {n:,}" for kind, n in run.errors.most_common())
        print(f"    failed rows by exception: {kinds}")
    stats = run.stats
    print(
        f"    /stats: requests {json.dumps(stats.get('requests'))}, in_flight_max "
        f"{stats.get('in_flight_max')}, tokens {json.dumps(stats.get('tokens'))}"
    )
    for line in run.summary:
        print(f"    | {line}")


def table(runs: list[Run], batches: list[tuple[Run, int]]) -> None:
    print()
    print("Summary")
    head = (
        f"{'scenario':<14} {'run':<30} {'rows':>6} {'run s':>7} {'proc s':>7} {'ok/s':>7} "
        f"{'x ceil':>7} {'tokens/min':>11} {'429s':>6} {'429 %':>6} {'failed':>6}"
    )
    print(head)
    print("-" * len(head))
    for run in runs:
        share = (
            run.tokens_per_min / TPM
            if run.scenario == "token-bound"
            else run.ok_per_s / REQUESTS_CEILING
        )
        proc = f"{run.proc_s:.1f}" if run.proc_s is not None else "-"
        print(
            f"{run.scenario:<14} {run.label:<30} {run.rows:>6,} {run.run_s:>7.1f} {proc:>7} "
            f"{run.ok_per_s:>7.1f} {share:>7.3f} {run.tokens_per_min:>11,.0f} "
            f"{run.limited:>6,} {run.limited_share:>6.1%} {run.failed:>6,}"
        )
    for run, batch in batches:
        expected = math.ceil(run.rows / batch)
        print(
            f"{run.scenario:<14} {run.label:<30} {run.rows:>6,} {run.run_s:>7.1f} "
            f"{run.proc_s or 0:>7.1f}  calls {run.chat:,} (200s {run.ok:,}, rowpilot counts "
            f"{run.client_calls}) vs ceil(rows/{batch}) = {expected:,}, rows/call "
            f"{run.rows / max(run.chat, 1):.1f}, failed {run.failed:,}"
        )


def _best(rows: int, cost: float, per_s: float) -> str:
    """What the simulator's bucket allows at most: one second's worth at once, then the rate."""
    best_s = max(0.0, rows * cost - per_s) / per_s + LATENCY_MS / 1000
    return (
        f"best possible (bucket full at the start, then the rate, + one latency): "
        f"{best_s:.1f}s = {rows / best_s / (per_s / cost):.3f}x the ceiling"
    )


def check(targets: list[tuple[str, bool]], name: str, met: bool) -> None:
    targets.append((name, met))


# -- scenarios ------------------------------------------------------------------------------


def request_bound(rows: int, work: Path, runs: list[Run], targets: list[tuple[str, bool]]) -> None:
    data = short_csv(rows)
    cost = request_tokens(SHORT_PROMPT, read_rows(data)[0])
    print(
        f"\n1. request-bound: {rows:,} rows, one request per row, ~{cost} tokens per request "
        f"(tpm would allow {TPM / 60 / cost:,.0f}/s; rpm allows {REQUESTS_CEILING:.0f}/s)"
    )
    print(f"  {_best(rows, 1.0, REQUESTS_CEILING)}")
    ours: dict[str, Run] = {}
    for label, limits in (("rowpilot CLI, limits given", True), ("rowpilot CLI, learned", False)):
        with SimProcess(work, RPM, TPM, LATENCY_MS) as sim:
            run = rowpilot_cli(
                "request-bound", label, sim, data, rows, SHORT_PROMPT, work, limits=limits
            )
        describe(run, "requests")
        runs.append(run)
        ours[label] = run
        share = run.ok_per_s / REQUESTS_CEILING
        check(targets, f"{label}: >= 95% of ceiling ({share:.1%})", share >= TARGET_SHARE)
        check(
            targets,
            f"{label}: <= 1% 429s ({run.limited_share:.2%})",
            run.limited_share <= TARGET_429,
        )
        check(targets, f"{label}: 0 failed ({run.failed})", run.failed == 0 and run.done == rows)
    pools = {}
    for workers in (8, 64):
        with SimProcess(work, RPM, TPM, LATENCY_MS) as sim:
            label = f"ThreadPool {workers}, openai SDK"
            run = threadpool("request-bound", label, sim, data, SHORT_PROMPT, workers)
        describe(run, "requests")
        runs.append(run)
        pools[workers] = run
    given = ours["rowpilot CLI, limits given"]
    learned = ours["rowpilot CLI, learned"]
    print("  ratios:")
    for workers, pool in pools.items():
        print(
            f"    rowpilot (given) / ThreadPool {workers}: throughput "
            f"{given.ok_per_s / pool.ok_per_s:.2f}x; rows done {given.done:,} vs {pool.done:,}"
            f"; failed rows {given.failed:,} vs {pool.failed:,}; 429s {given.limited:,} vs "
            f"{pool.limited:,}"
        )
        print(
            f"    rowpilot (learned) / ThreadPool {workers}: throughput "
            f"{learned.ok_per_s / pool.ok_per_s:.2f}x; rows done {learned.done:,} vs "
            f"{pool.done:,}; failed rows {learned.failed:,} vs {pool.failed:,}; 429s "
            f"{learned.limited:,} vs {pool.limited:,}"
        )
    print(f"    rowpilot learned / given: throughput {learned.ok_per_s / given.ok_per_s:.2f}x")


def token_bound(rows: int, work: Path, runs: list[Run], targets: list[tuple[str, bool]]) -> None:
    data = long_csv(rows)
    cost = request_tokens(LONG_PROMPT, read_rows(data)[0])
    rate = TPM / 60 / cost
    print(
        f"\n2. token-bound: {rows:,} rows of {LONG_CHARS:,} characters, {cost:,} tokens per "
        f"request (prompt + max_tokens): tpm allows {rate:.1f} requests/s, rpm "
        f"{REQUESTS_CEILING:.0f}/s; about {rows / rate:.0f}s at the ceiling"
    )
    print(f"  {_best(rows, cost, TPM / 60)}")
    with SimProcess(work, RPM, TPM, LATENCY_MS) as sim:
        label = "rowpilot CLI, limits given"
        ours = rowpilot_cli("token-bound", label, sim, data, rows, LONG_PROMPT, work, limits=True)
    describe(ours, "tokens")
    runs.append(ours)
    share = ours.tokens_per_min / TPM
    check(targets, f"token-bound: >= 95% of tpm ({share:.1%})", share >= TARGET_SHARE)
    check(
        targets,
        f"token-bound: <= 1% 429s ({ours.limited_share:.2%})",
        ours.limited_share <= TARGET_429,
    )
    check(targets, f"token-bound: 0 failed ({ours.failed})", ours.failed == 0)
    with SimProcess(work, RPM, TPM, LATENCY_MS) as sim:
        pool = threadpool("token-bound", "ThreadPool 64, openai SDK", sim, data, LONG_PROMPT, 64)
    describe(pool, "tokens")
    runs.append(pool)
    print(
        f"  ratio rowpilot / ThreadPool 64: tokens/min "
        f"{ours.tokens_per_min / pool.tokens_per_min:.2f}x; rows done {ours.done:,} vs "
        f"{pool.done:,}; failed rows {ours.failed:,} vs {pool.failed:,}; 429s "
        f"{ours.limited:,} vs {pool.limited:,}"
    )


def batching(
    rows: int, work: Path, batches: list[tuple[Run, int]], targets: list[tuple[str, bool]]
) -> None:
    data = short_csv(rows)
    expected_answers = {row["id"]: row["text"] for row in read_rows(data)}
    print(f"\n3. batching: {rows:,} rows, no faults, same limits and latency")
    for batch in (10, 25):
        output = work / f"batch-{batch}.csv"
        with SimProcess(work, RPM, TPM, LATENCY_MS) as sim:
            label = f"rowpilot CLI, --batch-size {batch}"
            run = rowpilot_cli(
                "batching",
                label,
                sim,
                data,
                rows,
                SHORT_PROMPT,
                work,
                limits=True,
                batch_size=batch,
                output=output,
            )
        wrong = _wrong_answers(output, expected_answers)
        describe(run, "rows")
        expected = math.ceil(rows / batch)
        print(
            f"    API calls {run.chat:,} (200s {run.ok:,}, non-200 {run.chat - run.ok:,}; "
            f"rowpilot counts {run.client_calls}) for {rows:,} rows: {rows / max(run.chat, 1):.2f} "
            f"rows per call; ceil(rows/{batch}) = {expected:,}; rows with a wrong or missing "
            f"answer: {wrong:,}"
        )
        batches.append((run, batch))
        check(targets, f"batch {batch}: calls {run.chat} == {expected}", run.chat == expected)
        check(
            targets,
            f"batch {batch}: all {rows} done, answers right ({wrong} wrong)",
            run.done == rows and run.failed == 0 and wrong == 0,
        )


def _wrong_answers(output: Path, texts: dict[str, str]) -> int:
    """Rows whose answer is not the simulator's summary of that row's own text."""
    if not output.exists():
        return len(texts)
    seen = {row["id"]: row.get("answer") or "" for row in read_rows(output)}
    wrong = 0
    for key, text in texts.items():
        answer = " ".join(seen.get(key, "").split())
        if not answer.endswith(" ".join(text.split()).upper()):
            wrong += 1
    return wrong


# -- main -----------------------------------------------------------------------------------


@contextlib.contextmanager
def children_stopped() -> Iterator[None]:
    """Stop every child on the way out: normal end, exception, Ctrl-C or SIGTERM."""
    atexit.register(_stop_all)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        _stop_all()
        signal.signal(signal.SIGTERM, previous)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    quick = parser.parse_args().quick
    short_rows, long_rows, batch_rows = (200, 80, 200) if quick else (3_000, 700, 1_000)
    import openai

    import rowpilot

    print(f"bench_llm {'--quick ' if quick else ''}{datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {machine()}")
    print(f"rowpilot {rowpilot.__version__}, openai {openai.__version__}")
    print(
        f"simulator (own process, fresh per run): --rpm {RPM} --tpm {TPM} --latency-ms "
        f"{LATENCY_MS}, jitter default, buckets of one second (100 requests, "
        f"{TPM // 60:,} tokens)"
    )
    print(
        f"clients: model openai/{MODEL}, max_tokens {MAX_TOKENS}, rowpilot --workers {WORKERS}; "
        f"rows: {short_rows:,} request-bound, {long_rows:,} token-bound, {batch_rows:,} batching"
    )
    runs: list[Run] = []
    batches: list[tuple[Run, int]] = []
    targets: list[tuple[str, bool]] = []
    work = Path(tempfile.mkdtemp(prefix="rowpilot-bench-llm-"))
    started = time.perf_counter()
    try:
        with children_stopped():
            request_bound(short_rows, work, runs, targets)
            token_bound(long_rows, work, runs, targets)
            batching(batch_rows, work, batches, targets)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table(runs, batches)
    print()
    print("Targets" + (" (a --quick run is too short to judge them: see the full run)" * quick))
    for name, met in targets:
        print(f"  {'met   ' if met else 'MISSED'} {name}")
    print(f"\nbench_llm took {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("\ninterrupted: the simulators and runs started were stopped")
