"""The local model (local/wordllama): which executor to run ``embed_texts`` in.

Run: .venv/bin/python bench/bench_local_executor.py [--quick] [--dedupe]

1. 100,000 short texts embedded in chunks of 1,024: a plain loop in one thread, two
   threads, and a two-process pool (spawn, the model loaded once per process), with the
   tokenizer's own thread pool on (its default) and off (TOKENIZERS_PARALLELISM=false).
2. Whether embed_texts releases the GIL: how fast a pure-Python counter runs in a second
   thread while the first embeds, against the counter alone.
3. Storing a float32 (n, 256) result: microseconds per row to encode (and decode) a row
   as a JSON list of floats versus base64 of its raw bytes.
4. With --dedupe: dedupe_vectors and dedupe_clusters over all the texts.

The timings take the best of --repeat runs: the machine may be shared.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import machine

from rowpilot.local_model.model import (
    DEFAULT_DEDUPE_THRESHOLD,
    dedupe_clusters,
    dedupe_vectors,
    embed_texts,
    load_model,
)

CHUNK = 1024
TOPICS = ("cooking pasta", "the election", "football", "graphics cards", "gardening")


def texts(rows: int) -> list[str]:
    return [f"row number {i} of the benchmark about {TOPICS[i % len(TOPICS)]}" for i in range(rows)]


def chunks(items: list[str]) -> list[list[str]]:
    return [items[start : start + CHUNK] for start in range(0, len(items), CHUNK)]


def timed(run: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one run."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def best_of(repeat: int, run: Callable[[], object]) -> float:
    return min(timed(run)[0] for _ in range(repeat))


def loop(parts: list[list[str]]) -> None:
    for part in parts:
        embed_texts(part)


def threads(parts: list[list[str]], workers: int) -> None:
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(embed_texts, parts))


def _worker_setup(tokenizer_threads: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = tokenizer_threads
    load_model()


def start_pool(workers: int, tokenizer_threads: str) -> tuple[ProcessPoolExecutor, float]:
    """A pool whose processes have loaded the model, and the seconds that took."""
    context = multiprocessing.get_context("spawn")  # fork after tokenizer use disables it
    started = time.perf_counter()
    pool = ProcessPoolExecutor(workers, context, _worker_setup, (tokenizer_threads,))
    list(pool.map(embed_texts, [["warm up"]] * workers * 4))
    return pool, time.perf_counter() - started


def executors(rows: int, repeat: int) -> None:
    """Every variant once per round, best of the rounds: a busy spell hits them all alike."""
    parts = chunks(texts(rows))
    load_model()
    embed_texts(parts[0])  # warm: first-call costs are not the executor's
    pools = {tok: start_pool(2, tok) for tok in ("true", "false")}
    variants: dict[str, tuple[str, Callable[[], object]]] = {}
    for tok, label in (("true", "on"), ("false", "off")):
        pool = pools[tok][0]
        variants[f"1 thread     tokenizer threads {label}"] = (tok, lambda: loop(parts))
        variants[f"2 threads    tokenizer threads {label}"] = (tok, lambda: threads(parts, 2))
        variants[f"4 threads    tokenizer threads {label}"] = (tok, lambda: threads(parts, 4))
        variants[f"2 processes  tokenizer threads {label}"] = (
            tok,
            lambda pool=pool: list(pool.map(embed_texts, parts)),
        )
    best: dict[str, tuple[float, float]] = dict.fromkeys(variants, (float("inf"), 0.0))
    for _ in range(repeat):
        for name, (tok, run) in variants.items():
            os.environ["TOKENIZERS_PARALLELISM"] = tok  # read by the tokenizer at each call
            best[name] = min(best[name], timed(run))
    os.environ.pop("TOKENIZERS_PARALLELISM")
    for pool, _ in pools.values():
        pool.shutdown()
    print(f"1. {rows:,} texts in chunks of {CHUNK:,}, best of {repeat} rounds")
    base = next(iter(best.values()))[0]
    for name, (seconds, cpu) in best.items():
        extra = (
            f"pool start {pools['true' if name.endswith('on') else 'false'][1]:.2f} s"
            if "processes" in name
            else f"CPU {cpu / seconds:.2f} cores"
        )
        print(f"   {name:34s} {rows / seconds:>9,.0f} rows/s  x{base / seconds:4.2f}  ({extra})")


def gil(rows: int) -> None:
    parts = chunks(texts(rows))

    def count(stop: threading.Event, out: list[int]) -> None:
        n = 0
        while not stop.is_set():
            n += 1
        out.append(n)

    def counter_rate(during: Callable[[], object] | None, seconds: float) -> float:
        stop, out = threading.Event(), []
        thread = threading.Thread(target=count, args=(stop, out))
        started = time.perf_counter()
        thread.start()
        if during is None:
            time.sleep(seconds)
        else:
            during()
        stop.set()
        thread.join()
        return out[0] / (time.perf_counter() - started)

    alone = counter_rate(None, 1.0)
    embedding = counter_rate(lambda: loop(parts), 0)
    print("2. GIL: a pure-Python counter thread while another thread embeds")
    print(f"   counter alone {alone:,.0f}/s, during embedding {embedding:,.0f}/s")
    print(f"   -> the GIL is free about {embedding / alone:.0%} of the embedding time")


def storage(rows: int) -> None:
    vectors = embed_texts(texts(rows))
    as_json = [json.dumps(row.tolist()) for row in vectors[:10]]
    as_b64 = [base64.b64encode(row.tobytes()).decode("ascii") for row in vectors[:10]]
    cases = {
        "JSON list": (
            lambda: [json.dumps(row.tolist()) for row in vectors],
            lambda: [np.array(json.loads(text), np.float32) for text in as_json * (rows // 10)],
            len(as_json[0]),
        ),
        "base64": (
            lambda: [base64.b64encode(row.tobytes()).decode("ascii") for row in vectors],
            lambda: [np.frombuffer(base64.b64decode(t), np.float32) for t in as_b64 * (rows // 10)],
            len(as_b64[0]),
        ),
    }
    assert np.array_equal(np.array(json.loads(as_json[3]), np.float32), vectors[3])
    assert np.array_equal(np.frombuffer(base64.b64decode(as_b64[3]), np.float32), vectors[3])
    print(f"3. storing one (256,) float32 row, over {rows:,} rows (both round-trip exactly)")
    for name, (encode, decode, size) in cases.items():
        out_s, in_s = best_of(3, encode), best_of(3, decode)
        print(
            f"   {name:10s} encode {out_s / rows * 1e6:6.1f} us/row, decode "
            f"{in_s / rows * 1e6:6.1f} us/row, {size:,} bytes/row"
        )


def dedupe(rows: int) -> None:
    items = texts(rows)
    started = time.perf_counter()
    vectors = dedupe_vectors(items)
    made = time.perf_counter() - started
    tracemalloc.start()
    canonical = dedupe_clusters(vectors, DEFAULT_DEDUPE_THRESHOLD)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    clustered = time.perf_counter() - started - made
    clusters = len(np.unique(canonical))
    print(f"4. dedupe of {rows:,} texts: vectors {made:.1f} s, clusters {clustered:.1f} s")
    print(
        f"   {clusters:,} clusters at threshold {DEFAULT_DEDUPE_THRESHOLD}; dedupe_clusters "
        f"allocated at most {peak / 2**20:,.0f} MB for {vectors.nbytes / 2**20:,.0f} MB of vectors"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="20,000 rows, one repeat")
    parser.add_argument("--dedupe", action="store_true", help="also time dedupe (slow)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows, repeat = (20_000, 1) if args.quick else (100_000, args.repeat)
    print(machine())
    executors(rows, repeat)
    gil(rows // 5)
    storage(10_000)
    if args.dedupe:
        dedupe(rows)


if __name__ == "__main__":
    main()
