"""Embedding throughput (issues 4 and 13): rowpilot embed versus wordllama called in one loop.

Run: .venv/bin/python bench/bench_embed.py [--quick] [--rounds N]  (100,000 texts; 10,000
with --quick)

The same 100,000 short texts (the CSV `id,n,text` of bench/_common.py) embedded by:

* the baseline: read the CSV, call `embed_texts` on chunks of 512 in one plain loop, keep
  the vectors in memory (no state, nothing written);
* `rowpilot.embed` with 1 and with 2 workers: the same model and chunk size, every row's
  vector committed to the registry (raw float32, a group per transaction on a commit
  thread) before it counts as done; a fresh state each time, so the validation pass runs;
* the floor of durability: a minimal hand-written pipeline that reads the CSV with pyarrow,
  embeds each chunk and hands (key, text hash, raw vector) rows to a writer thread that
  commits them to SQLite (WAL, synchronous=NORMAL), with no validation, no resume logic and
  no export. No durable engine can beat it, so it bounds the ratio the issue asks for.

Rounds alternate (baseline, floor, rowpilot 1, rowpilot 2, ...) and the best of each is
kept, since the machine is shared; the load average is printed before and after. Ratios
are to the loop, and rowpilot's also to the floor.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import queue
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import machine, make_csv

import rowpilot
from rowpilot.local_model.model import embed_texts, load_model

CHUNK = 512


def baseline(path: Path) -> float:
    started = time.perf_counter()
    with path.open(newline="", encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    vectors = [embed_texts(texts[i : i + CHUNK]) for i in range(0, len(texts), CHUNK)]
    assert sum(len(v) for v in vectors) == len(texts)
    return time.perf_counter() - started


def durable_floor(path: Path, scratch: Path) -> float:
    import pyarrow.csv as pa_csv

    database = scratch / "floor.db"
    database.unlink(missing_ok=True)
    started = time.perf_counter()
    connection = sqlite3.connect(database, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("CREATE TABLE items (key TEXT PRIMARY KEY, fingerprint BLOB, vector BLOB)")
    table = pa_csv.read_csv(path)
    keys = table.column("id").to_pylist()
    texts = table.column("text").to_pylist()
    commits: queue.Queue[list[tuple[str, bytes, bytes]] | None] = queue.Queue(maxsize=4)

    def writer() -> None:
        while (rows := commits.get()) is not None:
            connection.executemany("INSERT INTO items VALUES (?, ?, ?)", rows)
            connection.commit()

    thread = threading.Thread(target=writer)
    thread.start()
    for start in range(0, len(texts), CHUNK):
        vectors = embed_texts(texts[start : start + CHUNK])
        commits.put(
            [
                (keys[start + i], hashlib.blake2b(texts[start + i].encode()).digest(), v.tobytes())
                for i, v in enumerate(vectors)
            ]
        )
    commits.put(None)
    thread.join()
    connection.close()
    return time.perf_counter() - started


def with_rowpilot(path: Path, workers: int, scratch: Path) -> float:
    state = scratch / f"state-{workers}"
    shutil.rmtree(state, ignore_errors=True)
    started = time.perf_counter()
    result = rowpilot.embed(
        path, key="id", text_column="text", workers=workers, embed_batch=CHUNK, state=state
    )
    elapsed = time.perf_counter() - started
    assert result.summary.done == result.summary.total
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = 10_000 if args.quick else 100_000
    path = make_csv(rows)
    load_model()  # loaded once per process, as rowpilot does: not part of either timing
    print(f"bench_embed {time.strftime('%Y-%m-%dT%H:%M:%S')}")
    print(f"machine: {machine()}")
    print(f"{rows:,} short texts, chunks of {CHUNK}, best of {args.rounds} alternating rounds")
    print(f"load average before: {_load()}")
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="rowpilot-bench-embed-") as scratch:
        for _ in range(args.rounds):
            runs = {
                "wordllama loop": lambda: baseline(path),
                "durable floor": lambda: durable_floor(path, Path(scratch)),
                "rowpilot, 1 worker": lambda: with_rowpilot(path, 1, Path(scratch)),
                "rowpilot, 2 workers": lambda: with_rowpilot(path, 2, Path(scratch)),
            }
            for name, run in runs.items():
                seconds = run()
                best[name] = min(best.get(name, seconds), seconds)
    base, floor = best["wordllama loop"], best["durable floor"]
    for name, seconds in best.items():
        rate = rows / seconds
        line = f"  {name:<22} {seconds:7.2f}s  {rate:>9,.0f} rows/s  ratio {base / seconds:.2f}"
        if name.startswith("rowpilot"):
            line += f"  (of the floor: {floor / seconds:.2f})"
        print(line)
    print(f"load average after: {_load()}")


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    main()
