"""Rehearse the opportunity-files pipeline end to end against the local simulator.

    python examples/opportunity-files/run.py --simulate [--workers 4] [--out DIR]

It starts rowpilot's simulator in this process on a free port (no key, no cost) and drives
the real `rowpilot` command in subprocesses:

1. `rowpilot run opportunities.jsonl --task tasks.py:extract_entities`: one item per
   opportunity; inside it, its files fan out with ctx.map (entities per file by ctx.llm
   with a schema), and the entities are consolidated per opportunity;
2. the entities of every opportunity, flattened to one row per mention, go through
   `rowpilot dedupe`: clusters of the same entity across the run, one canonical row each;
3. `rowpilot embed ... --vectors lancedb://...` with the bundled local model, batched inserts:
   one vector per canonical entity, and one per opportunity (its title and description);
4. a nearest-neighbour query on the opportunities table.

Everything is written under out/ (or --out). The same outputs come out whatever --workers.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rowpilot.simulator.server import Simulator, SimulatorConfig

HERE = Path(__file__).resolve().parent
MODEL = "openai/gpt-4o-mini"
MARKER = ".opportunity-files-example"  # marks an out/ folder this script may clear
# The simulator takes any key; the subprocesses get this placeholder, never a real key.
ENV = {
    **{k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")},
    "OPENAI_API_KEY": "simulator-placeholder-key",
    "PYTHONUNBUFFERED": "1",
}


def rowpilot_exe() -> str:
    """The rowpilot command of the Python running this script (its venv), else PATH's."""
    beside = Path(sys.executable).parent / "rowpilot"
    found = str(beside) if beside.exists() else shutil.which("rowpilot")
    if found is None:
        raise SystemExit("rowpilot is not installed: pip install 'rowpilot[vectors]'")
    return found


def sh(*args: str) -> None:
    """Run `rowpilot ARGS` in the example folder; print the command and its output."""
    print(f"$ rowpilot {' '.join(args)}", flush=True)
    done = subprocess.run(
        [rowpilot_exe(), *args],
        cwd=HERE,
        env=ENV,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    print(done.stdout, end="", flush=True)
    if done.returncode != 0:
        print(done.stderr, end="", file=sys.stderr, flush=True)
        raise SystemExit(f"rowpilot {args[0]} exited {done.returncode}")


def relative(path: Path) -> str:
    return os.path.relpath(path, HERE)


def fresh_folder(out: Path) -> None:
    if out.exists():
        if not (out / MARKER).exists() and any(out.iterdir()):
            raise SystemExit(f"{out} exists and was not made by this script: choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by run.py; run.py clears this folder on its next run\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def fanout_peak(state: Path) -> tuple[int, int]:
    """(file extractions logged, the most that ran at once) from the task's fanout log."""
    lines = [
        json.loads(line)
        for log in (state / "logs").glob("*.fanout.jsonl")
        for line in log.read_text(encoding="utf-8").splitlines()
    ]
    return len(lines), max((line["in_flight"] for line in lines), default=0)


def mentions(by_opportunity: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per entity per opportunity, in source order (dedupe numbers clusters so)."""
    return [
        {
            "id": f"{row['id']}#{number:02d}",
            "opportunity": row["id"],
            "name": entity["name"],
            "type": entity["type"],
        }
        for row in by_opportunity
        for number, entity in enumerate(row["entities"])
    ]


def canonical_entities(clusters: list[dict[str, str]]) -> list[dict[str, Any]]:
    """One row per cluster: the canonical mention's name, the most given type, where."""
    groups: dict[str, list[dict[str, str]]] = {}
    for row in clusters:
        groups.setdefault(row["canonical_key"], []).append(row)
    canonical = []
    for key, rows in groups.items():
        first = next(row for row in rows if row["id"] == key)
        types = Counter(row["type"] for row in rows)
        canonical.append(
            {
                "id": key,
                "name": first["name"],
                "type": types.most_common(1)[0][0],
                "mentions": len(rows),
                "opportunities": " ".join(sorted({row["opportunity"] for row in rows})),
            }
        )
    return canonical


def nearest_lines(vectors: Path, table: str, key: str, titles: dict[str, str]) -> list[str]:
    """The opportunities nearest to ``key`` in LanceDB, as printed lines."""
    import lancedb

    found = lancedb.connect(str(vectors)).open_table(table)
    [own] = found.search().where(f"key = '{key}'").select(["vector"]).to_list()
    near = found.search(own["vector"]).limit(4).select(["key", "_distance"]).to_list()
    lines = [f"nearest to {key} ({titles[key]}):"]
    lines += [f"  {n['key']}  {n['_distance']:.4f}  {titles[n['key']]}" for n in near]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulate", action="store_true", help="run against the simulator")
    parser.add_argument("--workers", type=int, default=4, help="task functions at once [4]")
    parser.add_argument("--out", type=Path, default=HERE / "out", help="output folder [out/]")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="simulated latency")
    args = parser.parse_args()
    if not args.simulate:
        raise SystemExit(
            "run.py rehearses against the local simulator: pass --simulate. "
            "For a real provider, run the commands in README.md."
        )
    out = args.out.resolve()
    fresh_folder(out)
    started = time.perf_counter()
    workers = str(args.workers)
    config = SimulatorConfig(latency_ms=args.latency_ms, latency_jitter=0.3, seed=3)
    with Simulator(config) as sim:
        print(f"simulator at {sim.openai_base_url}")
        print("\n== 1. entities from every file, files in parallel inside each opportunity")
        extract_state = out / "state" / "extract"
        sh(
            "run",
            "opportunities.jsonl",
            "--task",
            "tasks.py:extract_entities",
            "--key",
            "id",
            "--model",
            MODEL,
            "--base-url",
            sim.openai_base_url,
            "--workers",
            workers,
            "--state",
            relative(extract_state),
            "-o",
            relative(out / "entities-by-opportunity.jsonl"),
            "--no-progress",
        )
    extracted, peak = fanout_peak(extract_state)
    print(f"{extracted} file extractions, at most {peak} at once (--workers {workers})")
    by_opportunity = read_jsonl(out / "entities-by-opportunity.jsonl")

    print("\n== 2. one entity per cluster across the run: rowpilot dedupe")
    rows = mentions(by_opportunity)
    write_csv(out / "entity-mentions.csv", rows)
    print(f"{len(rows)} entity mentions in {len(by_opportunity)} opportunities")
    sh(
        "dedupe",
        relative(out / "entity-mentions.csv"),
        "--key",
        "id",
        "--text-column",
        "name",
        "--workers",
        workers,
        "--state",
        relative(out / "state" / "dedupe"),
        "-o",
        relative(out / "entity-clusters.csv"),
        "--no-progress",
    )
    with (out / "entity-clusters.csv").open(newline="", encoding="utf-8") as handle:
        canonical = canonical_entities(list(csv.DictReader(handle)))
    write_csv(out / "entities.csv", canonical)
    print(f"{len(canonical)} canonical entities, e.g.:")
    for entity in sorted(canonical, key=lambda e: -int(e["mentions"]))[:3]:
        where = entity["opportunities"]
        print(f"  {entity['name']:<10} {entity['mentions']:>3} mentions in {where}")

    print("\n== 3. embeddings with the local model, batched inserts into LanceDB")
    vectors = out / "vectors"
    sh(
        "embed",
        relative(out / "entities.csv"),
        "--key",
        "id",
        "--text-column",
        "name",
        "--embed-batch",
        "32",
        "--insert-batch",
        "16",
        "--workers",
        workers,
        "--vectors",
        f"lancedb://{relative(vectors)}/entities",
        "--state",
        relative(out / "state" / "embed-entities"),
        "--no-progress",
    )
    texts = [
        {"id": row["id"], "text": f"{row['title']}. {row['description']}"}
        for row in read_jsonl(HERE / "opportunities.jsonl")
    ]
    write_csv(out / "opportunity-texts.csv", texts)
    sh(
        "embed",
        relative(out / "opportunity-texts.csv"),
        "--key",
        "id",
        "--text-column",
        "text",
        "--embed-batch",
        "8",
        "--insert-batch",
        "8",
        "--workers",
        workers,
        "--vectors",
        f"lancedb://{relative(vectors)}/opportunities",
        "--state",
        relative(out / "state" / "embed-opportunities"),
        "--no-progress",
    )

    print("\n== 4. nearest neighbours in LanceDB")
    titles = {row["id"]: row["text"].split(". ")[0] for row in texts}
    for line in nearest_lines(vectors, "opportunities", "OPP-001", titles):
        print(line)
    print(f"\ndone in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
