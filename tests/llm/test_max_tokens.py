"""max_tokens end to end: chosen from the schema, a cut answer asked again once at twice
the limit, journaled so that nothing is paid twice, and task versions that do not move
when only the limit does. Real simulator on 127.0.0.1, real SQLite, the official SDK.

The simulator cuts an answer longer than max_tokens x 4 characters and finishes with
``length``; a three-label answer such as ``{"racist": false, "sexist": true,
"homophobic": false}`` is 50 to 56 characters: cut at 10 tokens (40 characters), whole at
20 (80)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import rowpilot
from conftest import Simulators
from rowpilot._config import build_config
from rowpilot._estimate import sample_and_project
from rowpilot.llm.prompt import row_cache_key
from rowpilot.simulator.server import Simulator, SimulatorConfig
from rowpilot.state.registry import REGISTRY_FILE
from rowpilot.tasks.factory import build_task

KEY = "sk-" + "maxtokens-0b9d2c61e4"
MODEL = "openai/gpt-4o-mini"
LABELS = ["racist", "sexist", "homophobic"]
TEXTS = [f"row {i} says {word} things" for i, word in enumerate(["kind", "racist", "quiet"] * 2)]


@pytest.fixture
def keyed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


@pytest.fixture
def sim(simulator_for: Simulators) -> Simulator:
    return simulator_for(SimulatorConfig(api_key=KEY, latency_ms=2))


def write_rows(path: Path, n: int = len(TEXTS)) -> Path:
    rows = [{"id": f"k{i}", "text": text} for i, text in enumerate(TEXTS[:n])]
    path.write_text("id,text\n" + "".join(f"{r['id']},{r['text']}\n" for r in rows))
    return path


def label_run(sim: Simulator, tmp_path: Path, **settings: Any) -> rowpilot.Result:
    defaults: dict[str, Any] = {
        "key": "id",
        "model": MODEL,
        "base_url": sim.openai_base_url,
        "text_column": "text",
        "labels": LABELS,
        "state": tmp_path / "state",
        "env_file": None,
        "batch_size": 1,
    }
    return rowpilot.run(source=tmp_path / "data.csv", **{**defaults, **settings})


def answered(sim: Simulator) -> int:
    return int(sim.stats()["requests"].get("chat.completions", {}).get("200", 0))


def events(state: Path, name: str) -> list[dict[str, Any]]:
    found = []
    for log in sorted((state / "logs").glob("*.jsonl")):
        for line in log.read_text().splitlines():
            event = json.loads(line)
            if event["event"] == name:
                found.append(event)
    return found


# -- the limit asked with ---------------------------------------------------------------


def test_a_label_run_fits_a_tokens_limit_the_old_default_could_never_pass(
    simulator_for: Simulators, keyed_env: None, tmp_path: Path
) -> None:
    """A minute's bucket of 2,000 tokens: a batch of 6 rows asked with 512 per row (3,072
    plus its prompt) could never pass; asked with the schema's bound it does, without a
    429. The chosen limit and its reason are logged once."""
    sim = simulator_for(SimulatorConfig(api_key=KEY, latency_ms=2, tpm=2000, window_s=60))
    write_rows(tmp_path / "data.csv")
    result = label_run(sim, tmp_path, batch_size=6)
    assert result.summary.done == len(TEXTS)
    assert sim.stats()["rate_limited"] == 0
    chosen = events(tmp_path / "state", "max_tokens.chosen")
    assert len(chosen) == 1
    assert chosen[0]["source"] == "schema" and chosen[0]["max_tokens"] < 100
    assert chosen[0]["why"].startswith("from the schema: 3 labels, bound ")
    settings = {"labels": LABELS, "text_column": "text", "batch_size": 6, "env_file": None}
    task = build_task(build_config({"source": "x.csv", "model": MODEL, **settings}))
    limit, why = chosen[0]["max_tokens"], chosen[0]["why"]
    assert task.choices()["max_tokens"] == f"{limit} per row ({why})"


def test_free_text_keeps_the_default_and_says_why_once(
    sim: Simulator, keyed_env: None, tmp_path: Path
) -> None:
    write_rows(tmp_path / "data.csv", 3)
    rowpilot.run(
        source=tmp_path / "data.csv",
        key="id",
        prompt="Summarise: {text}",
        model=MODEL,
        base_url=sim.openai_base_url,
        state=tmp_path / "state",
        env_file=None,
    )
    (chosen,) = events(tmp_path / "state", "max_tokens.chosen")
    assert (chosen["max_tokens"], chosen["source"]) == (512, "default")
    assert chosen["why"] == "default 512: free text"


# -- a cut answer ------------------------------------------------------------------------


def test_a_cut_answer_is_asked_again_at_twice_the_limit_and_a_rerun_pays_nothing(
    sim: Simulator, keyed_env: None, tmp_path: Path
) -> None:
    write_rows(tmp_path / "data.csv")
    result = label_run(sim, tmp_path, max_tokens=10)
    assert result.summary.done == len(TEXTS), [r.error for r in result.failures()]
    assert answered(sim) == 2 * len(TEXTS)  # cut at 10, whole at 20
    cuts = events(tmp_path / "state", "answer.cut")
    assert [(c["max_tokens"], c["again"]) for c in cuts] == [(10, 20)] * len(TEXTS)
    # The retried answer is the row's journaled answer: a forced rerun asks nothing.
    again = label_run(sim, tmp_path, max_tokens=10, force=True)
    assert again.summary.done == len(TEXTS) and again.summary.cached == len(TEXTS)
    assert answered(sim) == 2 * len(TEXTS)


def test_an_anthropic_answer_stopped_at_max_tokens_is_asked_again_too(
    sim: Simulator, keyed_env: None, tmp_path: Path
) -> None:
    write_rows(tmp_path / "data.csv", 2)
    provider = {"base_url": sim.anthropic_base_url, "kind": "anthropic"}
    result = label_run(
        sim,
        tmp_path,
        model="simant/claude-haiku-4-5",
        base_url=None,
        providers={"simant": {**provider, "api_key_env": "ANTHROPIC_API_KEY"}},
        max_tokens=10,
    )
    assert result.summary.done == 2, [r.error for r in result.failures()]
    assert sim.stats()["requests"]["messages"]["200"] == 2 * 2
    assert len(events(tmp_path / "state", "answer.cut")) == 2


def test_a_second_cut_is_the_truncation_error_and_a_resume_pays_only_new_requests(
    sim: Simulator, keyed_env: None, tmp_path: Path
) -> None:
    write_rows(tmp_path / "data.csv", 3)  # fewer than the early-stop probe's 5
    result = label_run(sim, tmp_path, max_tokens=5)
    assert result.summary.failed == 3
    assert answered(sim) == 2 * 3  # at 5, then at 10: cut both times
    for record in result.failures():
        assert record.cause == "length"
        assert "stopped at max_tokens=5 (asked again at 10)" in (record.error or "")
        assert "--max-tokens" in (record.error or "")
    # At 10 the request was journaled (the retry above): replayed, not paid; at 20, paid.
    resumed = label_run(sim, tmp_path, max_tokens=10, retry_failed=True)
    assert resumed.summary.done == 3
    assert answered(sim) == 2 * 3 + 3


# -- versions: the limit is not what an answer is ------------------------------------------


def test_a_run_with_max_tokens_then_without_redoes_nothing(
    sim: Simulator, keyed_env: None, tmp_path: Path
) -> None:
    write_rows(tmp_path / "data.csv")
    first = label_run(sim, tmp_path, max_tokens=200)
    assert first.summary.done == len(TEXTS)
    paid = answered(sim)
    again = label_run(sim, tmp_path)  # the schema's bound now
    assert again.summary.skipped == len(TEXTS) and again.summary.done == 0
    assert answered(sim) == paid


@pytest.mark.parametrize(
    ("settings", "version"),
    [
        # What rowpilot wrote before max_tokens came from the schema (pinned): a default
        # job keeps its version, so a registry from then resumes without redoing a row.
        ({"labels": ["spam", "urgent"], "text_column": "text"}, "prompt-88b3a48c39b6a77f"),
        # A given limit no longer moves a JSON answer's version: this one was
        # prompt-2ab001b7fd415d8a; its rows are redone once from the journal, unpaid.
        (
            {"labels": ["spam", "urgent"], "text_column": "text", "max_tokens": 40},
            "prompt-88b3a48c39b6a77f",
        ),
        # A text answer cut at the limit is the output: its limit stays in its version.
        ({"prompt": "Say {text}"}, "prompt-8885fa5628faf90e"),
        ({"prompt": "Say {text}", "max_tokens": 40}, "prompt-b0db54d11c6cbb7c"),
    ],
)
def test_task_versions_from_before_the_schema_bound_are_kept(
    settings: dict[str, Any], version: str
) -> None:
    config = build_config({"source": "x.csv", "model": MODEL, "env_file": None, **settings})
    assert build_task(config).version == version


def test_estimate_shows_the_limit_chosen_and_why(
    sim: Simulator, keyed_env: None, tmp_path: Path
) -> None:
    write_rows(tmp_path / "data.csv")
    config = build_config(
        {
            "source": str(tmp_path / "data.csv"),
            "key": "id",
            "model": MODEL,
            "base_url": sim.openai_base_url,
            "text_column": "text",
            "labels": LABELS,
            "state": str(tmp_path / "state"),
            "env_file": None,
            "progress": False,
        }
    )
    _, projection = asyncio.run(sample_and_project(config, 2))
    assert any(
        line.startswith("max_tokens ") and "per row (from the schema: 3 labels" in line
        for line in projection.lines()
    )


def test_row_answers_keyed_by_a_given_limit_before_are_still_found(
    sim: Simulator, keyed_env: None, tmp_path: Path
) -> None:
    """Before, a JSON task's row answers were keyed by the limit it was given; such a task
    changes version once, and its rows are redone from those answers, unpaid."""
    write_rows(tmp_path / "data.csv")
    label_run(sim, tmp_path, max_tokens=40)
    paid = answered(sim)
    provider = "openai"
    model = MODEL.split("/", 1)[1]
    spec = build_task(build_config({"source": "x.csv", "model": MODEL, "labels": LABELS,
                                    "text_column": "text", "env_file": None})).spec  # type: ignore[attr-defined]  # fmt: skip
    with sqlite3.connect(tmp_path / "state" / REGISTRY_FILE) as db:  # as rowpilot wrote them
        for text in TEXTS:
            now, before = (
                row_cache_key(provider, model, spec.system, text, spec.schema, {}, limit)
                for limit in (512, 40)
            )
            moved = db.execute("UPDATE answers SET row_key = ? WHERE row_key = ?", (before, now))
            assert moved.rowcount == 1
    # In batches of 3 no request is the one journaled: only the row answers can answer.
    again = label_run(sim, tmp_path, max_tokens=40, force=True, batch_size=3)
    assert again.summary.done == len(TEXTS) and again.summary.cached == len(TEXTS)
    assert answered(sim) == paid


def test_a_cut_batch_is_asked_again_whole_at_twice_the_limit_before_it_is_split(
    sim: Simulator, keyed_env: None, tmp_path: Path
) -> None:
    """Two rows' answer is about 150 characters: cut at 2 x 12 tokens (96 characters),
    whole at 48; each batch costs its cut request and its retry, and none is split."""
    write_rows(tmp_path / "data.csv")
    result = label_run(sim, tmp_path, max_tokens=12, batch_size=2)
    assert result.summary.done == len(TEXTS), [r.error for r in result.failures()]
    assert result.summary.splits == 0
    assert answered(sim) == 2 * len(TEXTS) // 2
    cuts = events(tmp_path / "state", "answer.cut")
    assert [(c["rows"], c["max_tokens"], c["again"]) for c in cuts] == [(2, 24, 48)] * 3


def test_rowpilot_label_takes_max_tokens(sim: Simulator, keyed_env: None, tmp_path: Path) -> None:
    write_rows(tmp_path / "data.csv", 2)
    frame = rowpilot.label(
        tmp_path / "data.csv",
        text_column="text",
        labels=LABELS,
        key="id",
        model=MODEL,
        base_url=sim.openai_base_url,
        batch_size=1,
        max_tokens=10,
        state=tmp_path / "state",
        env_file=None,
        summary=False,
    )
    assert len(frame) == 2
    (chosen,) = events(tmp_path / "state", "max_tokens.chosen")
    assert (chosen["max_tokens"], chosen["source"]) == (10, "given")
    assert answered(sim) == 2 * 2  # cut at 10, whole at 20
