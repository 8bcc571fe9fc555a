"""The opportunity task: named entities from every file of an opportunity, files in parallel.

    rowpilot run opportunities.jsonl --task tasks.py:extract_entities --key id \\
        --model openai/gpt-4o-mini --workers 8 -o out/entities-by-opportunity.jsonl

One item is one opportunity (a row of opportunities.jsonl). Its files fan out inside the
item with ``ctx.map``: up to ``FILE_WORKERS`` at once, and never more task functions in
total than the run's ``--workers`` (a sub-item beyond the parent's own slot waits for a
free worker), so opportunities x files cannot oversubscribe the provider or the machine.
Every ``ctx.llm`` answer is journaled, so a resumed or retried opportunity does not pay
for the files it had already done. The entities come back consolidated per opportunity:
each one once, with the files it was found in.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from rowpilot import Ctx

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"  # the manifest's file names are relative to this folder
FILE_WORKERS = 4  # files of one opportunity at once; --workers caps the run's total
SYSTEM = (
    "Extract the named entities (organizations, people, places, products) that the "
    "document mentions. List each entity once, with the name as written."
)


class Entity(BaseModel):
    name: str
    type: Literal["organization", "person", "place", "product", "other"]


class FileEntities(BaseModel):
    entities: list[Entity]


class Gauge:
    """How many file extractions run at this moment in this process, and the peak.

    The task logs it on every extraction (``logs/<run>.fanout.jsonl``) so the fan-out can
    be checked against ``--workers`` after the run, from outside the process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # sync sub-items would run in threads
        self.now = 0
        self.peak = 0

    def __enter__(self) -> int:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            return self.now

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


IN_FLIGHT = Gauge()


async def extract_file(name: str, ctx: Ctx) -> dict[str, Any]:
    """One file's entities. ``name`` is short ("OPP-007/notes.txt") on purpose: a failed
    sub-item is named by its repr in the parent's error, clipped at 60 characters."""
    with IN_FLIGHT as now:
        ctx.log("fanout", file=name, in_flight=now)
        # Short local files: reading them on the event loop costs less than a thread hop.
        text = (DATA / name).read_text(encoding="utf-8")
        answer: FileEntities = await ctx.llm(
            text, system=SYSTEM, schema=FileEntities, max_tokens=400, temperature=0
        )
    return {"file": name, "entities": [entity.model_dump() for entity in answer.entities]}


def normalised(name: str) -> str:
    """The consolidation key: case, accents, punctuation and spacing folded."""
    decomposed = unicodedata.normalize("NFKD", name.casefold())
    bare = "".join(char for char in decomposed if not unicodedata.combining(char))
    return " ".join(re.findall(r"\w+", bare))


def consolidate(per_file: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each entity once per opportunity, in order of first mention, with its files.

    The first surface form (stripped of edge punctuation) names it; its type is the one
    given most often (ties: the first given), so a model's occasional slip is outvoted.
    """
    found: dict[str, dict[str, Any]] = {}
    votes: dict[str, dict[str, int]] = {}
    for extracted in per_file:
        for entity in extracted["entities"]:
            key = normalised(entity["name"])
            if not key:
                continue
            entry = found.setdefault(
                key, {"name": entity["name"].strip(" \t,.;:!?\"'()[]"), "files": []}
            )
            if extracted["file"] not in entry["files"]:
                entry["files"].append(extracted["file"])
            counts = votes.setdefault(key, {})
            counts[entity["type"]] = counts.get(entity["type"], 0) + 1
    return [
        {
            "name": entry["name"],
            "type": max(votes[key], key=votes[key].__getitem__),
            "files": entry["files"],
        }
        for key, entry in found.items()
    ]


async def extract_entities(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    per_file = await ctx.map(row["files"], extract_file, workers=FILE_WORKERS)
    entities = consolidate(per_file)
    return {"entities": entities, "entity_count": len(entities), "file_count": len(per_file)}
