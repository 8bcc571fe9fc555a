"""Token accounting: how much of a token ceiling rowpilot uses against a server that counts
tokens at admission (as OpenAI does) and one that settles them at real usage (as
Anthropic's output limit does).

Run: .venv/bin/python bench/bench_accounting.py [--quick]

A TPM-bound load: `rowpilot simulate --tpm 300000 --rpm 100000 --latency-ms 300` (a fresh
process per run, its buckets a second's worth), 600 rows (200 with --quick) of ~800
characters (~200 prompt tokens a request), answers of about 9 tokens, --max-tokens 50, 64
workers, the limits learned from the headers (a local server: the "learn" rule). Each
simulator mode once:

* "admission": the server keeps prompt + max_tokens charged; the ceiling is 300,000 of
  those a minute, and the share used counts them.
* "usage": the server gives back the unused max_tokens when an answer is done; the share
  used counts prompt + real completion tokens, as the server does.

"share" is the tokens the server counted per minute of rowpilot's own elapsed time, over
300,000 (the buckets start full, so a short run can pass 1.0 by up to a second's worth);
"429s" is their share of the chat requests; "rule" is the one the run logged at the end
(limits.accounting, then any limits.accounting_changed). The figures are a 2-core shared
machine's, with other work running: noisy. There is no "before" run: rowpilot before this
change measured 0.82 of the ceiling with 0 429s on the "usage" load (issue 13).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import DATA, ROWPILOT, machine, write_csv
from bench_llm import (
    SimProcess,
    _child_env,
    _from_stats,
    _measured,
    _numbers,
    children_stopped,
)

TPM = 300_000
RPM = 100_000  # high enough that tokens bind
LATENCY_MS = 300
MAX_TOKENS = 50
WORKERS = 64
TEXT_CHARS = 790  # with the template's "Classify: ", ~200 prompt tokens
MODEL = "gpt-4o-mini"
TARGET_SHARE = 0.95
TARGET_429 = 0.005


@dataclass
class Measured:
    mode: str
    rows: int
    done: int
    elapsed: float
    ok: int
    chat: int
    limited: int
    input_tokens: int
    output_tokens: int
    rule: str
    client: str = "this tree"

    @property
    def counted(self) -> int:
        """Tokens the server counted, by its own rule."""
        if self.mode == "usage":
            return self.input_tokens + self.output_tokens
        return self.input_tokens + self.ok * MAX_TOKENS

    @property
    def share(self) -> float:
        return self.counted / self.elapsed * 60.0 / TPM

    @property
    def limited_share(self) -> float:
        return self.limited / self.chat if self.chat else 0.0


def rows_csv(rows: int) -> Path:
    words = [
        "the",
        "parcel",
        "came",
        "late",
        "but",
        "the",
        "refund",
        "was",
        "quick",
        "and",
        "the",
        "screen",
        "is",
        "bright",
    ]

    def text(i: int) -> str:
        rng = random.Random(7_000_000 + i)
        body = f"review {i}:"
        while len(body) < TEXT_CHARS:
            body += " " + rng.choice(words)
        return body[:TEXT_CHARS]

    return write_csv(DATA / f"accounting-{rows}-{TEXT_CHARS}.csv", rows, text)


def final_rule(state: Path) -> str:
    rule = "?"
    for log in sorted((state / "logs").glob("*.jsonl")):
        for line in log.read_text(encoding="utf-8").splitlines():
            event = json.loads(line)
            if event["event"] == "limits.accounting":
                rule = str(event["rule"])
            elif event["event"] == "limits.accounting_changed":
                rule += f" -> {event['to']}"
    return rule


def measure(mode: str, data: Path, rows: int, work: Path, source: str | None) -> Measured:
    sim = SimProcess(work, rpm=RPM, tpm=TPM, latency_ms=LATENCY_MS)
    sim.args += ["--token-accounting", mode]
    with sim:
        state = Path(tempfile.mkdtemp(prefix="state-", dir=work))
        args = [ROWPILOT, "run", str(data), "--key", "id", "--prompt", "Classify: {text}"]
        args += ["--model", f"openai/{MODEL}", "--base-url", sim.base_url]
        args += ["--workers", str(WORKERS), "--max-tokens", str(MAX_TOKENS)]
        args += ["--state", str(state), "--no-progress"]
        env = _child_env()
        if source is not None:
            env["PYTHONPATH"] = source
        wall, _, code, out, err = _measured(args, cwd=work, env=env)
        if code not in (0, 1):
            print(out, err, sep="\n")
        stats = sim.stats()
    ok, chat, limited, input_tokens = _from_stats(stats)
    number = _numbers(out)
    return Measured(
        mode,
        rows,
        done=int(number.get("done", 0)),
        elapsed=number.get("elapsed", wall),
        ok=ok,
        chat=chat,
        limited=limited,
        input_tokens=input_tokens,
        output_tokens=int(stats["tokens"]["output"]),
        rule=final_rule(state),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="200 rows, for a smoke run")
    parser.add_argument("--before", metavar="SRC", help="also run the rowpilot of SRC")
    options = parser.parse_args()
    rows = 200 if options.quick else 600
    sources: dict[str, str | None] = {"this tree": None}
    if options.before:
        sources = {"before": options.before, **sources}
    print(f"bench_accounting {datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {machine()}")
    print(
        f"simulator: --tpm {TPM:,} --rpm {RPM:,} --latency-ms {LATENCY_MS}; rows {rows} of "
        f"~{TEXT_CHARS + 10} characters, --max-tokens {MAX_TOKENS}, --workers {WORKERS}"
    )
    data = rows_csv(rows)
    work = Path(tempfile.mkdtemp(prefix="rowpilot-bench-accounting-"))
    started = time.perf_counter()
    results: list[Measured] = []
    try:
        with children_stopped():
            for name, source in sources.items():
                for mode in ("admission", "usage"):
                    results.append(measure(mode, data, rows, work, source))
                    results[-1].client = name
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(
        f"{'rowpilot':<10} {'mode':<10} {'rows done':>9} {'run s':>6} {'tok/min':>9} "
        f"{'share':>6} {'429s':>6}  rule"
    )
    for m in results:
        print(
            f"{m.client:<10} {m.mode:<10} {m.done:>5}/{m.rows:<3} {m.elapsed:>6.1f} "
            f"{m.counted / m.elapsed * 60:>9,.0f} {m.share:>6.3f} {m.limited_share:>6.3f}  "
            f"{m.rule}"
        )
    print()
    for m in results:
        if m.client != "this tree":
            continue
        met = m.share >= TARGET_SHARE and m.limited_share <= TARGET_429 and m.done == m.rows
        print(
            f"  {'met   ' if met else 'MISSED'} {m.mode}: share >= {TARGET_SHARE}, 429s <= "
            f"{TARGET_429:.1%}, every row done"
        )
    print(f"\nbench_accounting took {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("\ninterrupted: the simulators and runs started were stopped")
