"""The demo task: score each review with a tiny word lexicon.

The short sleep stands in for the latency of an API call, so the demo shows what
parallel workers buy: the same job with --workers 1 takes about 30 times longer.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from rowpilot import Ctx

POSITIVE = {
    "happy",
    "great",
    "excellent",
    "exceeded",
    "fast",
    "helpful",
    "sturdy",
    "easy",
    "works",
    "lighter",
    "recommend",
}
NEGATIVE = {
    "disappointed",
    "broke",
    "poor",
    "back",
    "long",
    "damaged",
    "confusing",
    "noisy",
    "different",
    "not",
}
SIMULATED_API_LATENCY = 0.03


async def analyse(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    await asyncio.sleep(SIMULATED_API_LATENCY)
    words = re.findall(r"[a-z']+", row["text"].lower())
    score = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
    sentiment = "positive" if score > 0 else "negative" if score < 0 else "neutral"
    if sentiment == "positive" and int(row["stars"]) <= 2:
        ctx.logger.info("review %s: positive words but %s stars", ctx.key, row["stars"])
    return {"sentiment": sentiment, "score": score, "words": len(words)}
