"""examples/question-review-loop end to end: a folder of questions, a multi-step task.

The rounds each question needs are worked out here from the simulator's own answer rules
applied to the example's prompts (pre-analysis, then generation and review per round,
the review's feedback leading the next generation), so the tests prove that the loop ran
as written and every answer reached its own question. Requests are counted at the
simulator and compared with the registry's journal of steps.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import BaseModel

from conftest import unmeasured, wait_until
from rowpilot.simulator.server import (
    Simulator,
    SimulatorConfig,
    _row_object,
    _schema_fields,
    _untagged_text,
)
from rowpilot.state.registry import REGISTRY_FILE

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "question-review-loop"
QUESTIONS = EXAMPLE / "questions"
ENV_EXAMPLE = EXAMPLE / ".env.example"


def load(name: str, path: Path) -> ModuleType:
    saved = list(sys.path)
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pydantic look their module up
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved  # run.py puts its folder first, to import review.py
    return module


REVIEW = load("review", EXAMPLE / "review.py")  # the name run.py imports it by
RUN = load("question_review_run", EXAMPLE / "run.py")
MAX_ROUNDS = REVIEW.read_settings(ENV_EXAMPLE).max_rounds


# -- what the simulator must answer ------------------------------------------------------


def answer(prompt: str, model: type[BaseModel]) -> Any:
    """The simulator's answer to ``prompt`` with ``model``'s schema (its rules 3 and 4)."""
    fields, _ = _schema_fields(model.model_json_schema(), batch=False)
    return model(**_row_object(_untagged_text(prompt), fields))


def expected_rounds(question: dict[str, Any]) -> int | None:
    """The round whose review passes, or None when none of MAX_ROUNDS does."""
    analysis = answer(REVIEW.analysis_prompt(question), REVIEW.Analysis)
    feedback = None
    for number in range(1, MAX_ROUNDS + 1):
        prompt = REVIEW.generation_prompt(question, analysis, feedback, number)
        draft = answer(prompt, REVIEW.Draft)
        prompt = REVIEW.review_prompt(question, analysis, draft, number)
        verdict = answer(prompt, REVIEW.Verdict)
        if verdict.approved:
            return number
        feedback = verdict.feedback
    return None


def questions() -> dict[str, dict[str, Any]]:
    paths = sorted(QUESTIONS.rglob("*.json"))
    return {path.relative_to(QUESTIONS).as_posix(): json.loads(path.read_text()) for path in paths}


EXPECTED = {key: expected_rounds(question) for key, question in questions().items()}


def test_the_shipped_questions_need_one_to_all_rounds() -> None:
    # The example shows every path of the loop: some pass at once, some after feedback,
    # some never (those become failures).
    assert len(EXPECTED) == 20
    assert {1, 2, MAX_ROUNDS, None} <= set(EXPECTED.values())


# -- running it ------------------------------------------------------------------------


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def review_logs(out: Path) -> list[Path]:
    return sorted((out / "state" / "logs").glob("*.review.jsonl"), key=os.path.getmtime)


def check_outcome(out: Path) -> None:
    """Every question finished: done in the expected round, or failed as not passed."""
    reviewed = {row["path"]: row for row in jsonl(out / "reviewed.jsonl")}
    assert sorted(reviewed) == sorted(EXPECTED)
    for key, rounds in EXPECTED.items():
        assert reviewed[key].get("rounds") == rounds, key
    failures = jsonl(out / "failures.jsonl")
    assert sorted(entry["key"] for entry in failures) == sorted(
        key for key, rounds in EXPECTED.items() if rounds is None
    )
    for entry in failures:
        assert entry["error_type"] == "ReviewRejected"
        assert f"not approved after {MAX_ROUNDS} round(s)" in entry["error"]


@pytest.mark.slow
def test_simulate_reviews_every_question_in_one_command(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVIEW_", "OPENAI_"))}
    command = [sys.executable, str(EXAMPLE / "run.py"), "--simulate", "--out", str(out)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    rejected = sum(rounds is None for rounds in EXPECTED.values())
    assert done.returncode == 1, done.stderr  # 1: some questions were never passed
    assert f"{len(EXPECTED) - rejected} done, {rejected} failed" in done.stdout
    check_outcome(out)
    # One review a line, with its key; a question retried after a fault (the simulator
    # drops 2% of calls with a 503) replays its earlier reviews, marked as replayed.
    (log,) = review_logs(out)
    lines = [line for line in jsonl(log) if not line["replayed"]]
    reviews = sorted((line["key"], line["round"]) for line in lines)
    assert reviews == sorted(
        (key, number)
        for key, rounds in EXPECTED.items()
        for number in range(1, (rounds or MAX_ROUNDS) + 1)
    )
    for line in lines:
        assert line["approved"] is (line["round"] == EXPECTED[line["key"]])
        assert line["question"] == questions()[line["key"]]["id"]
    # `rowpilot failures` reads the same failures from the registry.
    listed = subprocess.run(
        [sys.executable, "-m", "rowpilot", "failures", str(out / "state")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert listed.returncode == 0, listed.stderr
    assert [entry["key"] for entry in map(json.loads, listed.stdout.splitlines())] == [
        entry["key"] for entry in jsonl(out / "failures.jsonl")
    ]


def journal(state: Path) -> dict[str, str]:
    """Journaled steps (call key -> run id) of a registry another process writes."""
    try:
        with sqlite3.connect(f"file:{state / REGISTRY_FILE}?mode=ro", uri=True) as db:
            return dict(db.execute("SELECT call_key, run_id FROM calls").fetchall())
    except sqlite3.OperationalError:
        return {}


def chat_answered(sim: Simulator) -> int:
    return int(sim.stats()["requests"].get("chat.completions", {}).get("200", 0))


@pytest.mark.slow
def test_sigkill_then_resume_repeats_no_llm_call(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    settings = REVIEW.read_settings(ENV_EXAMPLE)
    env = RUN.child_env(ENV_EXAMPLE, simulated=True)
    with Simulator(SimulatorConfig(latency_ms=60, latency_jitter=0.3, seed=9)) as sim:
        command = RUN.cli_command(settings, out, ENV_EXAMPLE, sim.openai_base_url, progress=False)
        # In this folder: the command's paths are relative to the working directory.
        with (tmp_path / "stderr.txt").open("w") as stderr:
            process = subprocess.Popen(  # SIGKILLed: unmeasured
                command, env=unmeasured(env), stdout=subprocess.DEVNULL, stderr=stderr
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(journal(out / "state")) < 30:
            assert process.poll() is None, (tmp_path / "stderr.txt").read_text()
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=120)
        wait_until(lambda: sim.handling == 0, "the calls in flight at the kill")
        before = journal(out / "state")
        asked_before = chat_answered(sim)
        assert 30 <= len(before) < 90
        resumed = subprocess.run(command, env=env, capture_output=True, text=True)
        assert resumed.returncode == 1, resumed.stderr  # the questions never passed
        after = journal(out / "state")
        asked_by_resume = chat_answered(sim) - asked_before
        asked = chat_answered(sim)
    # Each step answered before the kill kept its answer and was not asked again: every
    # request of the resume is a step it journaled.
    assert all(after[key] == run_id for key, run_id in before.items())
    assert asked_by_resume == len(after) - len(before)
    # Over both runs, requests are the journaled steps, plus at most the calls that were
    # in flight when the process died (answered, never journaled).
    assert len(after) <= asked <= len(after) + settings.workers
    check_outcome(out)
    # The resumed run's review log marks the reviews it took from the journal.
    replayed = [line for line in jsonl(review_logs(out)[-1]) if line["replayed"]]
    assert replayed
