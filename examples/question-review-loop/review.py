"""A multi-agent review loop over survey questions, one question file per item.

For each question: the reviewer analyses it (variable name, measurement level, what the
SPSS syntax must get right); the transformer writes the syntax; the reviewer reviews it
and either passes it or sends feedback for the next attempt, up to ``REVIEW_MAX_ROUNDS``
rounds. A question still not passed after the last round raises ``ReviewRejected``: the
item fails and lands in the failures JSONL, with the last feedback.

Every ``ctx.llm`` call goes through rowpilot's limits, retries and budget, and is
journaled before it returns: a resumed or retried question replays its answered steps
for free. Each review is logged with ``ctx.log("review", ...)`` to
``<state>/logs/<run>.review.jsonl``.

Settings come from the env file (``REVIEW_ENV_FILE``, else ``.env`` beside this file);
the real environment wins over the file, as it does for rowpilot's own keys.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import BaseModel

from rowpilot import Ctx

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = "openai/gpt-4o-mini"


# -- settings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    model: str = DEFAULT_MODEL
    base_url: str | None = None  # None: the provider's own address
    max_rounds: int = 3
    workers: int = 8


def env_file() -> Path:
    return Path(os.environ.get("REVIEW_ENV_FILE") or HERE / ".env")


def read_settings(path: Path) -> Settings:
    """The ``REVIEW_*`` settings of ``path`` (if it exists), the real environment winning."""
    values = {k: v for k, v in dotenv_values(path).items() if v} if path.is_file() else {}
    values.update({k: v for k, v in os.environ.items() if k.startswith("REVIEW_") and v})
    return Settings(
        model=values.get("REVIEW_MODEL", DEFAULT_MODEL),
        base_url=values.get("REVIEW_BASE_URL"),
        max_rounds=int(values.get("REVIEW_MAX_ROUNDS", "3")),
        workers=int(values.get("REVIEW_WORKERS", "8")),
    )


@cache
def settings() -> Settings:
    return read_settings(env_file())


# -- what each agent answers ----------------------------------------------------------


class Analysis(BaseModel):
    variable: str
    level: Literal["nominal", "ordinal", "scale"]
    checklist: str


class Draft(BaseModel):
    syntax: str


class Verdict(BaseModel):
    approved: bool
    feedback: str


class ReviewRejected(Exception):
    """The reviewer did not pass the syntax within the allowed rounds."""


REVIEWER = (
    "You are a survey methodologist. You check survey questions and the SPSS syntax "
    "written for them, strictly but briefly."
)
TRANSFORMER = (
    "You write SPSS syntax for survey questions: VARIABLE LABELS, VALUE LABELS for every "
    "answer option, and MISSING VALUES where a code means no answer."
)


# -- prompts: pure functions of the question and earlier answers -------------------------


def describe(question: dict[str, Any]) -> str:
    options = "; ".join(question.get("options") or []) or "none (free answer)"
    return (
        f"Question {question['id']} ({question['type']}): {question['text']}\n"
        f"Answer options: {options}"
    )


def analysis_prompt(question: dict[str, Any]) -> str:
    return (
        f"{describe(question)}\n"
        "Name an SPSS variable for it, give its measurement level, and list what its "
        "syntax must get right."
    )


def generation_prompt(
    question: dict[str, Any], analysis: Analysis, feedback: str | None, number: int
) -> str:
    # The feedback leads the prompt: a new attempt must read it first.
    retry = f"Attempt {number}. Reviewer feedback on the last attempt: {feedback}\n"
    return (
        f"{retry if feedback else ''}{describe(question)}\n"
        f"Variable: {analysis.variable} (level {analysis.level}).\n"
        f"Checklist: {analysis.checklist}\n"
        "Write the SPSS syntax."
    )


def review_prompt(question: dict[str, Any], analysis: Analysis, draft: Draft, number: int) -> str:
    # The round's number, not the number of rounds: raising REVIEW_MAX_ROUNDS leaves the
    # earlier rounds' prompts as they were, so a retried question replays them for free.
    return (
        f"Review round {number}.\n"
        f"{describe(question)}\n"
        f"Checklist: {analysis.checklist}\n"
        f"Syntax:\n{draft.syntax}\n"
        "Does the syntax meet all points of the checklist? If not, say what to change."
    )


# -- the task -------------------------------------------------------------------------


async def review_question(row: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    """One question file (the folder source's row: path, name, suffix, size, text)."""
    question = json.loads(row["text"])
    model, rounds = settings().model, settings().max_rounds
    analysis = await ctx.llm(
        analysis_prompt(question), model=model, system=REVIEWER, schema=Analysis
    )
    feedback: str | None = None
    for number in range(1, rounds + 1):
        draft = await ctx.llm(
            generation_prompt(question, analysis, feedback, number),
            model=model,
            system=TRANSFORMER,
            schema=Draft,
        )
        replays_before = ctx.usage.cached
        verdict = await ctx.llm(
            review_prompt(question, analysis, draft, number),
            model=model,
            system=REVIEWER,
            schema=Verdict,
        )
        ctx.log(
            "review",
            question=question["id"],
            round=number,
            approved=verdict.approved,
            feedback=verdict.feedback,
            # True when the verdict came from the journal (a resumed or retried question).
            replayed=ctx.usage.cached > replays_before,
        )
        if verdict.approved:
            return {
                "question": question["id"],
                "variable": analysis.variable,
                "level": analysis.level,
                "syntax": draft.syntax,
                "rounds": number,
            }
        feedback = verdict.feedback
    raise ReviewRejected(
        f"{question['id']} not approved after {rounds} round(s); last feedback: {feedback}"
    )
