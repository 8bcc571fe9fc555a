"""Rehearse the disease-incidence job end to end against the local simulator.

    python examples/disease-incidence/run.py --simulate [--count 15000] [--out DIR]

It starts rowpilot's simulator in this process on a free port (no key, no cost) and drives
the real `rowpilot` command in subprocesses, as you would in a shell:

1. make_data.py writes diseases.csv (15,000 synthetic diseases keyed by CUI);
2. a 200-row sample with gpt-4o and with gpt-4o-mini, compared by compare.py;
3. ten shards side by side (`--shard K/10`, ten processes), each writing one JSON file per
   key. Shard 7 is pointed, on purpose, at a second simulator playing a gateway whose
   content filter refuses every disease named "carcinoma": it ends with failures;
4. `rowpilot merge` of the ten shards and `rowpilot verify`: INCOMPLETE;
5. shard 7 run again alone (`--retry-failed`), merged in, verified complete;
6. `rowpilot export --json-dir`: one JSON file per CUI, counted and checked for duplicates.

Everything is written under out/ (or --out); the commands against a real provider are in
README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import compare
from make_data import write_diseases

from rowpilot.simulator.server import Simulator, SimulatorConfig

HERE = Path(__file__).resolve().parent
SHARDS = 10
FAILING_SHARD = 7
REFUSED_WORD = "carcinoma"  # the gateway's content filter refuses these diseases
SAMPLE_ROWS = "0:200"
MODELS = ("openai/gpt-4o", "openai/gpt-4o-mini")  # reference, then the cheaper candidate
MARKER = ".disease-incidence-example"  # marks an out/ folder this script may clear
# The simulator takes any key; the subprocesses get this placeholder, never a real key.
ENV = {
    **{k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")},
    "OPENAI_API_KEY": "simulator-placeholder-key",
    "PYTHONUNBUFFERED": "1",
}


def sh(*args: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    """Run `rowpilot ARGS` in the example folder, print the command and its output."""
    print(f"$ rowpilot {' '.join(args)}", flush=True)
    done = subprocess.run(
        [compare.rowpilot_exe(), *args],
        cwd=HERE,
        env=ENV,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if not quiet:
        print(done.stdout, end="", flush=True)
    if done.returncode != 0 and (check or not quiet):
        print(done.stderr, end="", file=sys.stderr, flush=True)
    if check and done.returncode != 0:
        raise SystemExit(f"rowpilot {args[0]} exited {done.returncode}")
    return done


def relative(path: Path) -> str:
    return os.path.relpath(path, HERE)


def fresh_folder(out: Path) -> None:
    if out.exists():
        if not (out / MARKER).exists() and any(out.iterdir()):
            raise SystemExit(f"{out} exists and was not made by this script: choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by run.py; run.py clears this folder on its next run\n")


def shard_command(out: Path, k: int, base_url: str, *extra: str) -> list[str]:
    return [
        "run",
        "job.toml",
        "--shard",
        f"{k}/{SHARDS}",
        "--state",
        relative(out / "state" / f"shard-{k}-of-{SHARDS}"),
        "--json-dir",
        relative(out / "json" / f"shard-{k}"),
        "--base-url",
        base_url,
        "--no-progress",
        *extra,
    ]


def sample_and_compare(out: Path, base_url: str, count: int) -> None:
    print(f"\n== 1. a {SAMPLE_ROWS} sample with each model, then cost and answers side by side")
    states = [out / "sample" / model.split("/")[-1] for model in MODELS]
    commands = [
        [
            "run",
            "job.toml",
            "--rows",
            SAMPLE_ROWS,
            "--model",
            model,
            "--state",
            relative(state),
            "--base-url",
            base_url,
            "--no-progress",
        ]
        for model, state in zip(MODELS, states, strict=True)
    ]
    # The two samples are independent jobs: run them at the same time, print in order.
    running = [
        subprocess.Popen(
            [compare.rowpilot_exe(), *args],
            cwd=HERE,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for args in commands
    ]
    for args, process in zip(commands, running, strict=True):
        output, _ = process.communicate(timeout=600)
        print(f"$ rowpilot {' '.join(args)}\n{output}", end="")
        if process.returncode != 0:
            raise SystemExit(f"the {args[6]} sample exited {process.returncode}")
    print(f"$ python compare.py {' '.join(relative(s) for s in states)} --full-rows {count}")
    compare.main([str(states[0]), str(states[1]), "--full-rows", str(count)])


def run_shards(out: Path, base_url: str, gateway_url: str) -> dict[int, int]:
    print(f"\n== 2. {SHARDS} shards side by side, one process each")
    print(
        f"(shard {FAILING_SHARD} goes through {gateway_url}, a gateway that refuses "
        f"'{REFUSED_WORD}': it fails on purpose)"
    )
    (out / "json").mkdir()
    (out / "logs").mkdir()
    processes: dict[int, subprocess.Popen[str]] = {}
    for k in range(1, SHARDS + 1):
        url = gateway_url if k == FAILING_SHARD else base_url
        args = shard_command(out, k, url)
        print(f"$ rowpilot {' '.join(args)} &")
        log = (out / "logs" / f"shard-{k}.txt").open("w", encoding="utf-8")
        processes[k] = subprocess.Popen(
            [compare.rowpilot_exe(), *args],
            cwd=HERE,
            env=ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        log.close()  # the child holds its own copy of the file
    codes = {k: process.wait(timeout=600) for k, process in processes.items()}
    print("$ wait")
    for k, code in codes.items():
        first = (out / "logs" / f"shard-{k}.txt").read_text(encoding="utf-8").splitlines()
        print(f"shard {k:>2}: exit {code}  {first[0] if first else ''}")
    print_overlap(out)
    return codes


def print_overlap(out: Path) -> None:
    """How far the shards' runs overlapped in time, from their registries' run records."""
    states = [str(out / "state" / f"shard-{k}-of-{SHARDS}") for k in range(1, SHARDS + 1)]
    views = compare.rowpilot_json("status", *states, "--json")["states"]
    spans = [(view["last_run"]["started_at"], view["last_run"]["ended_at"]) for view in views]
    starts = [start for start, _ in spans]
    # The most runs in progress at one moment: the most spans holding some run's start.
    together = max(sum(a <= start <= b for a, b in spans) for start in starts)
    print(
        f"side by side: the {SHARDS} runs started within {max(starts) - min(starts):.2f} s of "
        f"each other, and {together} of them were running at the same moment"
    )


def merge_and_verify(out: Path, shards: list[int]) -> int:
    """Merge ``shards`` into out/state/all (made on the first merge), then verify it."""
    merged = relative(out / "state" / "all")
    states = [relative(out / "state" / f"shard-{k}-of-{SHARDS}") for k in shards]
    sh("merge", *states, "--into", merged)
    verify = sh("verify", merged, "--source", "diseases.csv", "--key", "cui", check=False)
    return verify.returncode


def check_json_files(out: Path, count: int) -> None:
    """The seed's checks, done on rowpilot's index: one file per key, no duplicates."""
    results = out / "results"
    index = [json.loads(line) for line in (results / "_index.jsonl").read_text().splitlines()]
    files = sorted(p.name for p in results.glob("*.json"))
    keys = Counter(entry["key"] for entry in index)
    print(
        f"{relative(results)}: {len(files):,} JSON files, {len(keys):,} keys in _index.jsonl, "
        f"{sum(1 for n in keys.values() if n > 1)} duplicate keys"
    )
    per_shard = Counter(
        json.loads(line)["key"]
        for index_file in (out / "json").glob("shard-*/_index.jsonl")
        for line in index_file.read_text().splitlines()
    )
    print(
        f"{relative(out / 'json')}/shard-*: {sum(per_shard.values()):,} JSON files over "
        f"{SHARDS} folders, {sum(1 for n in per_shard.values() if n > 1)} keys in two folders"
    )
    if not (len(files) == len(keys) == count == sum(per_shard.values()) == len(per_shard)):
        raise SystemExit("the JSON files do not match the source one to one")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulate", action="store_true", help="run against the simulator")
    parser.add_argument("--count", type=int, default=15_000, help="diseases [15000]")
    parser.add_argument("--out", type=Path, default=HERE / "out", help="output folder [out/]")
    parser.add_argument("--latency-ms", type=float, default=40.0, help="simulated latency")
    args = parser.parse_args()
    if not args.simulate:
        raise SystemExit(
            "run.py rehearses against the local simulator: pass --simulate. "
            "For a real provider, run the commands in README.md."
        )
    out = args.out.resolve()
    fresh_folder(out)
    started = time.perf_counter()
    write_diseases(HERE / "diseases.csv", args.count)
    print(f"wrote {args.count:,} diseases to diseases.csv")
    config = SimulatorConfig(latency_ms=args.latency_ms, latency_jitter=0.3, seed=7)
    gateway = SimulatorConfig(
        latency_ms=args.latency_ms, latency_jitter=0.3, seed=7, refuse_word=REFUSED_WORD
    )
    with Simulator(config) as sim, Simulator(gateway) as filtered:
        print(f"simulator at {sim.openai_base_url}, gateway at {filtered.openai_base_url}")
        sample_and_compare(out, sim.openai_base_url, args.count)
        codes = run_shards(out, sim.openai_base_url, filtered.openai_base_url)
        states = [relative(out / "state" / f"shard-{k}-of-{SHARDS}") for k in codes]
        sh("status", *states)

        print("\n== 3. merge the shards and verify against the source")
        if merge_and_verify(out, list(codes)) == 0:
            raise SystemExit(f"shard {FAILING_SHARD} was meant to fail, and the merge is complete")
        listed = sh("failures", states[FAILING_SHARD - 1], quiet=True).stdout.splitlines()
        print(f"{len(listed)} failures in shard {FAILING_SHARD}; the first:")
        print(listed[0] if listed else "")
        failed = [k for k, code in codes.items() if code != 0]
        print(f"failed shards: {failed}")

        print(f"\n== 4. rerun the failed shard{'s' if len(failed) > 1 else ''} alone")
        for k in failed:
            sh(*shard_command(out, k, sim.openai_base_url, "--retry-failed"))
        sh("status", *states)

        print("\n== 5. merge the rerun shard in, verify, and export one JSON file per key")
        if merge_and_verify(out, failed) != 0:
            raise SystemExit("the merge is still incomplete")
        sh("export", relative(out / "state" / "all"), "--json-dir", relative(out / "results"))
        check_json_files(out, args.count)
    spent = compare.rowpilot_json("status", *(str(HERE / s) for s in states), "--json")["states"]
    cost = sum(view["spending"].get("cost_usd", 0.0) for view in spent)
    calls = sum(int(view["spending"].get("calls", 0)) for view in spent)
    print(f"the {SHARDS} shards cost ${cost:.4f} in {calls:,} requests (the sample aside)")
    print(f"\ndone in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
