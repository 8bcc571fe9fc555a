"""The brand-research task: search the web for each brand, then have an LLM analyse it.

Each brand makes two paid calls, both through rowpilot so that they are rate limited,
retried, priced against the run's --budget and journaled (a resumed or --force'd run
replays them instead of paying again):

1. ``ctx.call("search", search, query, ...)``: a POST to a web-search API, under the job's
   ``[limits.search]`` (its own rpm, apart from the model's). An HTTP error comes back as
   aiohttp's ``ClientResponseError``, whose status rowpilot reads: a 429 slows the search
   resource and waits its turn, a 5xx is retried, a 401 (a bad key) stops the run at once.
2. ``ctx.llm(prompt, schema=BrandAnalysis)``: the job's model (``[task] model``) reads the
   search results and fills the schema; the answer is validated (and repaired if need be).

Settings come from the environment, else from ``.env`` in the folder the run starts in
(as rowpilot reads the model's key): ``SEARCH_API_URL`` (default Tavily's search
endpoint), ``SEARCH_API_KEY``, and the model's ``OPENAI_API_KEY`` (read by rowpilot).
The keys are sent to their API and nowhere else: not in a step's arguments (which are
hashed into the journal's keys), not in a log line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import aiohttp
from dotenv import dotenv_values
from pydantic import BaseModel

from rowpilot import Ctx

DEFAULT_SEARCH_URL = "https://api.tavily.com/search"
SEARCH_COST_USD = 0.005  # what one search costs on the API's paid plan
MAX_RESULTS = 5
SEARCH_TIMEOUT_S = 30
SYSTEM = (
    "You analyse brands for an advertising agency. Use only the search results given. "
    "Classify the brand's category, the tone of its coverage (sentiment) and its main "
    "audience, say whether it is safe for advertisers to appear next to "
    "(advertiser_friendly), and summarise what the results say in one sentence."
)


class BrandAnalysis(BaseModel):
    category: Literal["food", "fashion", "tech", "beauty", "home", "finance", "travel", "other"]
    sentiment: Literal["positive", "mixed", "negative"]
    audience: Literal["youth", "families", "professionals", "everyone"]
    advertiser_friendly: bool
    summary: str


async def analyse_brand(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    found = await ctx.call("search", search, search_query(row), MAX_RESULTS, cost=SEARCH_COST_USD)
    results = found["results"]
    analysis = await ctx.llm(
        build_prompt(row, results), schema=BrandAnalysis, system=SYSTEM, max_tokens=300
    )
    ctx.log("brand", name=row["name"], sentiment=analysis.sentiment, sources=len(results))
    return brand_output(analysis, results)


def search_query(row: dict[str, Any]) -> str:
    return f"{row['name']} {row['sector']} brand {row['city']} Iran reviews news"


def build_prompt(row: dict[str, Any], results: list[dict[str, str]]) -> str:
    lines = [
        f"Brand: {row['name']}",
        f"Sector: {row['sector']}",
        f"City: {row['city']}, founded {row['founded']}",
        "",
        "Search results:",
    ]
    lines += [f"{n}. {r['title']} ({r['url']}): {r['snippet']}" for n, r in enumerate(results, 1)]
    return "\n".join(lines)


def brand_output(analysis: BrandAnalysis, results: list[dict[str, str]]) -> dict[str, Any]:
    """The row's output columns: the analysis, and where it came from."""
    return {
        **analysis.model_dump(),
        "sources": len(results),
        "top_source": results[0]["url"] if results else "",
    }


async def search(query: str, max_results: int) -> dict[str, Any]:
    """POST the query to the search API; the results' title, url and snippet."""
    url = setting("SEARCH_API_URL") or DEFAULT_SEARCH_URL
    key = setting("SEARCH_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"query": query, "max_results": max_results}
    timeout = aiohttp.ClientTimeout(total=SEARCH_TIMEOUT_S)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, json=body, headers=headers) as response,
        ):
            # An error status raises ClientResponseError (its .status and .headers say
            # 429/5xx/401 and retry-after to rowpilot); its message names no key.
            response.raise_for_status()
            answer = await response.json()
    except aiohttp.ClientConnectionError as exc:
        # A dropped or refused connection is a transport failure rowpilot retries.
        raise ConnectionError(f"search API {url}: {type(exc).__name__}") from None
    results = answer.get("results", [])[:max_results]
    # Only what the prompt uses is kept: it is what the journal stores.
    return {
        "results": [
            {
                "title": str(r.get("title", "")),
                "url": str(r.get("url", "")),
                "snippet": str(r.get("snippet") or r.get("content") or ""),
            }
            for r in results
        ]
    }


def setting(name: str) -> str | None:
    """The environment's value, else ``.env``'s in the working directory."""
    if name in os.environ:
        return os.environ[name]
    env_file = Path(".env")
    return dotenv_values(env_file).get(name) if env_file.is_file() else None
