"""``rowpilot compare`` and ``rowpilot.compare`` against the simulator on 127.0.0.1.

Three simulated models answer by the simulator's rule, two of them against it on a set
share of rows (``disagree``: a row whose draw, a hash of its text, falls below the share).
So which rows each model answers differently is known row by row before the run, and the
agreement figures are checked for equality with that prediction, not for plausibility.
The sample is predicted the same way, from the documented rule (the smallest blake2b-64
key hashes), computed here on its own.
"""

from __future__ import annotations

import csv
import hashlib
import math
import random
import re
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest

import rowpilot
from rowpilot.simulator.server import Simulator, SimulatorConfig, _row_object, disagreement_draw
from rowpilot.state.registry import REGISTRY_FILE

if TYPE_CHECKING:
    from conftest import Cli, Simulators

# A fake key, assembled so that secret scanners do not take this file for a leak.
CANARY = "sk-" + "canary-c0a1e5ce"
BASELINE, FIFTH, HALF = "openai/gpt-4o-mini", "openai/gpt-4o", "openai/gpt-4.1-mini"
MODELS = (BASELINE, FIFTH, HALF)
SHARES = {BASELINE: 0.0, FIFTH: 0.2, HALF: 0.5}
OPTIONS = ["pos", "neg", "mixed"]
FIELDS = {"sentiment": "pos|neg|mixed", "score": "int", "note": "str", "flag": "bool"}
SCHEMA = {
    "sentiment": {"type": "string", "enum": OPTIONS},
    "score": {"type": "integer"},
    "note": {"type": "string"},
    "flag": {"type": "boolean"},
}
PROMPT = "Judge: {text}"
ROWS, SAMPLE = 150, 60


@pytest.fixture
def sim(simulator_for: Simulators, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    disagree = {model.split("/")[1]: share for model, share in SHARES.items() if share}
    return simulator_for(SimulatorConfig(api_key=CANARY, disagree=disagree))


def texts(n: int) -> list[str]:
    # Short texts: the score (the text's length, + 1 against the rule) then differs by
    # more than the 1% tolerance, so a contrary number is a disagreement.
    rng = random.Random(15)
    words = ["good", "bad", "mixed", "flag", "neg", "calm", "loud", "pos"]
    return [f"row {i} " + " ".join(rng.choices(words, k=rng.randint(2, 5))) for i in range(n)]


def write_job(
    folder: Path,
    sim: Simulator,
    *,
    prices: float = 1.0,
    shuffle: int = 0,
    priced: tuple[str, ...] = MODELS,
) -> Path:
    rows = [
        # "comment" is a cell a spreadsheet would run as a formula, unless neutralised
        {"id": f"k{i:03d}", "text": text, "gold": _gold(i, text), "comment": "=1+1"}
        for i, text in enumerate(texts(ROWS))
    ]
    if shuffle:
        random.Random(shuffle).shuffle(rows)
    pd.DataFrame(rows).to_csv(folder / "in.csv", index=False)
    fields = ", ".join(f'{name} = "{kind}"' for name, kind in FIELDS.items())
    priced = "\n".join(
        f'[prices."{model}"]\ninput = {prices}\noutput = {prices * 4}' for model in priced
    )
    job = folder / "job.toml"
    job.write_text(
        f'[source]\npath = "in.csv"\nkey = "id"\n[run]\nstate = "state"\n'
        f'[task]\nprompt = "{PROMPT}"\nfields = {{{fields}}}\n{priced}\n',
        encoding="utf-8",
    )
    return job


def _gold(index: int, text: str) -> str:
    """The rule's sentiment on two rows of three, the next option on the third."""
    right = rule(text)["sentiment"]
    return right if index % 3 else OPTIONS[(OPTIONS.index(right) + 1) % 3]


def rule(text: str) -> dict[str, Any]:
    return _row_object(PROMPT.format(text=text), SCHEMA)


def against(model: str, text: str) -> bool:
    """Whether the simulator answers this row against the rule for ``model``."""
    return disagreement_draw(PROMPT.format(text=text)) < SHARES[model]


def expected_sample(folder: Path) -> list[dict[str, str]]:
    """The documented rule: the rows with the SAMPLE smallest blake2b-64 key hashes."""
    with (folder / "in.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))

    return sorted(rows, key=lambda row: documented_key(row["id"]))[:SAMPLE]


def share_text(count: int, of: int) -> str:
    return f"{count / of:.1%}"


def compare_args(job: Path, sim: Simulator, *extra: str) -> list[str]:
    return ["compare", str(job), "--models", *MODELS, "--sample", str(SAMPLE),
            "--base-url", sim.openai_base_url, *extra]  # fmt: skip


def chat_requests(sim: Simulator) -> int:
    return int(sim.stats()["requests"].get("chat.completions", {}).get("200", 0))


def model_lines(stdout: str, model: str) -> list[str]:
    lines = stdout.splitlines()
    start = lines.index(model)
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("  ")), None)
    return lines[start + 1 : end]


# -- agreement: exactly what the simulator's rule predicts ----------------------------------


def test_agreement_with_the_reference_and_the_first_model_is_what_the_rules_predict(
    sim: Simulator, cli: Cli, tmp_path: Path
) -> None:
    job = write_job(tmp_path, sim)
    done = cli(*compare_args(job, sim, "--reference", "sentiment=gold", "-o", "compare.csv"))
    assert done.returncode == 0, done.stderr
    assert f"stable sample of {SAMPLE} of {ROWS} rows" in done.stdout
    assert (
        "(agreement with sentiment: reference column 'gold'; other fields: openai/gpt-4o-mini; "
        "numbers within 1%)"
    ) in done.stdout
    sample = expected_sample(tmp_path)
    for model in MODELS:
        with_gold = sum(answer(model, row["text"]) == row["gold"] for row in sample)
        assert 0 < with_gold < SAMPLE  # the check can fail
        (line,) = [x for x in model_lines(done.stdout, model) if x.startswith("  agreement")]
        assert line.startswith(
            f"  agreement: sentiment {share_text(with_gold, SAMPLE)} agree ({SAMPLE} rows)"
        ), line
        paid = math.fsum(cost for _, cost in journal(state_of(tmp_path, model)))
        per_1000 = paid / SAMPLE * 1000  # a [prices] override: the batch price too
        assert f"  cost per 1,000 rows: ${per_1000:,.4f} online, ${per_1000:,.4f} batch" in (
            model_lines(done.stdout, model)
        )
        if model == BASELINE:
            assert line == line.split(", ")[0]  # no other field: it is their baseline
            continue
        agreeing = sum(not against(model, row["text"]) for row in sample)
        assert 0 < agreeing < SAMPLE  # the shares bite on this sample
        shown = share_text(agreeing, SAMPLE)
        assert f", score {shown} agree ({SAMPLE} rows), note " in line
        assert line.endswith(
            f"similarity, {shown} equal ({SAMPLE} rows), flag {shown} agree ({SAMPLE} rows)"
        )
    check_side_by_side(tmp_path / "compare.csv", sample)
    assert f"wrote {SAMPLE} rows to compare.csv" in done.stdout
    # A one-field job's reference needs no field name; this job has four.
    bare = cli(*compare_args(job, sim, "--reference", "gold"))
    assert bare.returncode == 2
    assert "say which one the column holds" in bare.stderr


def answer(model: str, text: str) -> str:
    """The sentiment ``model`` answers: the rule's, or the next option against it."""
    right = rule(text)["sentiment"]
    return OPTIONS[(OPTIONS.index(right) + 1) % 3] if against(model, text) else right


def check_side_by_side(path: Path, sample: list[dict[str, str]]) -> None:
    """-o's CSV: the key, the inputs (formula-neutralised), each model's fields."""
    with path.open(encoding="utf-8", newline="") as handle:
        header, *cells = list(csv.reader(handle))
    assert header == ["key", "id", "text", "gold", "comment"] + [
        f"{model}:{field}" for model in MODELS for field in FIELDS
    ]
    by_key = {r["id"]: r for r in sample}
    assert sorted(line[0] for line in cells) == sorted(by_key)
    for line in cells:
        row = dict(zip(header, line, strict=True))
        source = by_key[row["key"]]
        text = source["text"]
        assert (row["id"], row["text"], row["gold"]) == (source["id"], text, source["gold"])
        assert row["comment"] == "'=1+1"
        right = rule(text)
        for model in MODELS:
            contrary = against(model, text)
            assert (row[f"{model}:sentiment"] == right["sentiment"]) is not contrary
            assert row[f"{model}:score"] == str(right["score"] + (1 if contrary else 0))
            assert row[f"{model}:flag"] == str(right["flag"] != contrary).lower()
            assert row[f"{model}:note"] == ("NOT " if contrary else "") + right["note"]


def test_the_dataframe_holds_the_predicted_agreement_costs_and_latencies(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = write_job(tmp_path, sim, priced=(BASELINE,))  # the others at genai-prices' rates
    monkeypatch.chdir(tmp_path)
    frame = rowpilot.compare(
        job,
        models=list(MODELS),
        sample=SAMPLE,
        base_url=sim.openai_base_url,
        tolerance=0.5,  # numbers within a factor of 2: a contrary score (+1) agrees
        summary=False,
    )
    sample = expected_sample(tmp_path)
    assert list(frame["model"]) == list(MODELS)
    assert frame.attrs["baseline"] == BASELINE and frame.attrs["total"] == ROWS
    assert frame.attrs["tolerance"] == 0.5
    for index, model in enumerate(MODELS):
        row = frame.iloc[index]
        agreeing = sum(not against(model, r["text"]) for r in sample)
        for field in ("sentiment", "score", "flag"):
            if model == BASELINE:
                assert math.isnan(row[f"agreement_{field}"])
            else:
                predicted = 1.0 if field == "score" else agreeing / SAMPLE
                assert row[f"agreement_{field}"] == predicted
                assert row[f"compared_{field}"] == SAMPLE
        calls = journal(state_of(tmp_path, model))
        assert len(calls) == SAMPLE == row["calls"] == row["answered"] == row["rows"]
        online = math.fsum(cost for _, cost in calls)
        assert row["cost_per_1000_online"] == pytest.approx(online / SAMPLE * 1000, rel=1e-12)
        assert row["projected_online"] == pytest.approx(online / SAMPLE * ROWS, rel=1e-12)
        # A [prices] override is the price online and by batch alike; genai-prices'
        # batch rates for these OpenAI models are half the online ones.
        batch_share = 1.0 if model == BASELINE else 0.5
        assert online > 0
        assert row["cost_per_1000_batch"] == pytest.approx(
            batch_share * row["cost_per_1000_online"], rel=1e-9
        )
        assert row["projected_batch"] == pytest.approx(batch_share * row["projected_online"])
        seconds = sorted(s for s, _ in calls)
        assert row["latency_p50"] == seconds[math.ceil(0.5 * SAMPLE) - 1]
        assert row["latency_p95"] == seconds[math.ceil(0.95 * SAMPLE) - 1]
        assert row["invalid_rate"] == 0.0
    answers = frame.attrs["answers"]
    assert list(answers["key"]) == [r["id"] for r in sorted(sample, key=lambda r: int(r["id"][1:]))]


def state_of(folder: Path, model: str) -> Path:
    return folder / "state-compare" / model.replace("/", "_")


def journal(state: Path) -> list[tuple[float, float]]:
    with sqlite3.connect(f"file:{state / REGISTRY_FILE}?mode=ro", uri=True) as db:
        return db.execute("SELECT seconds, cost_usd FROM calls").fetchall()


# -- the same sample, and a re-run pays nothing ---------------------------------------------


def test_a_rerun_pays_nothing_and_a_reordered_file_samples_the_same_rows(
    sim: Simulator, cli: Cli, tmp_path: Path
) -> None:
    job = write_job(tmp_path, sim)
    first = cli(*compare_args(job, sim, "-o", "one.csv"))
    assert first.returncode == 0, first.stderr
    paid = chat_requests(sim)
    assert paid == SAMPLE * len(MODELS)
    again = cli(*compare_args(job, sim, "-o", "two.csv"))
    assert again.returncode == 0, again.stderr
    assert chat_requests(sim) == paid  # every answer came from the models' journals
    assert again.stdout.replace("two.csv", "one.csv") == first.stdout
    write_job(tmp_path, sim, shuffle=3)  # the same rows in another order
    shuffled = cli(*compare_args(job, sim, "-o", "three.csv"))
    assert shuffled.returncode == 0, shuffled.stderr
    assert chat_requests(sim) == paid  # the same sample: nothing new to ask
    keys = {
        name: [r["key"] for r in read_csv(tmp_path / name)] for name in ("one.csv", "three.csv")
    }
    assert sorted(keys["one.csv"]) == sorted(keys["three.csv"])
    assert sorted(keys["one.csv"]) == sorted(r["id"] for r in expected_sample(tmp_path))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


# -- invalid answers -----------------------------------------------------------------------


def test_the_invalid_answer_rate_counts_the_rows_no_repair_made_valid(
    simulator_for: Simulators, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    sim = simulator_for(SimulatorConfig(api_key=CANARY, bad_content=0.5, seed=15))
    job = write_job(tmp_path, sim)
    # No repair, one attempt, and no early stop when the first rows fail alike.
    text = job.read_text(encoding="utf-8").replace("[task]\n", "[task]\nrepair_attempts = 0\n")
    job.write_text(text.replace("[run]\n", "[run]\nkeep_going = true\nmax_attempts = 1\n"))
    done = cli("compare", str(job), "--models", BASELINE, "--sample", "20",
               "--base-url", sim.openai_base_url)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr  # some rows failed
    state = state_of(tmp_path, BASELINE)
    with sqlite3.connect(f"file:{state / REGISTRY_FILE}?mode=ro", uri=True) as db:
        (invalid,) = db.execute(
            "SELECT count(*) FROM items WHERE cause = 'invalid_output'"
        ).fetchone()
    assert 0 < invalid < 20
    line = model_lines(done.stdout, BASELINE)[0]
    assert line == (
        f"  rows: {20 - invalid} of 20 answered, invalid answers {invalid / 20:.1%} ({invalid})"
    )


# -- budget ---------------------------------------------------------------------------------


def test_the_budget_covers_all_the_models_runs_together(
    sim: Simulator, cli: Cli, tmp_path: Path
) -> None:
    job = write_job(tmp_path, sim, prices=2000.0)  # about $0.34 a call
    done = cli(*compare_args(job, sim, "--budget", "30"))
    assert done.returncode == 3, done.stderr
    states = [state_of(tmp_path, model) for model in MODELS]
    assert not states[2].exists()  # the budget was gone before the third model
    spent = [math.fsum(cost for _, cost in journal(state)) for state in states[:2]]
    assert spent[1] > 0 and math.fsum(spent) <= 30
    assert model_lines(done.stdout, BASELINE)[0].startswith(f"  rows: {SAMPLE} of {SAMPLE} ")
    partial = model_lines(done.stdout, FIFTH)[0]
    assert re.fullmatch(rf"  rows: (\d+) of {SAMPLE} answered, (\d+) not reached, .*", partial)
    assert f"not run: {HALF}" in done.stdout
    stop = done.stdout.splitlines()[-1]
    assert stop.startswith("stopped: budget reached: $")
    assert stop.endswith(f"({FIFTH}); run the same command again to go on")


# -- one-line errors, exit 2, nothing paid --------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--models", "openai/gpt-9"], "does not offer model 'gpt-9'"),
        (["--sample", "151"], "--sample 151 is more rows than the data has (150)"),
        (["--reference", "score=verdict"], "column 'verdict'"),
        (["-o", "compare.xlsx"], "compare writes its answers as CSV"),
        (["--models", "local/wordllama"], "is the bundled local model"),
        (["--tolerance", "-1"], "--tolerance -1.0 is not a relative tolerance"),
    ],
    ids=[
        "unknown model",
        "sample too large",
        "no such reference",
        "not csv",
        "local model",
        "negative tolerance",
    ],
)
def test_a_bad_comparison_is_a_one_line_error_before_any_call(
    sim: Simulator, cli: Cli, tmp_path: Path, extra: list[str], message: str
) -> None:
    job = write_job(tmp_path, sim)
    args = compare_args(job, sim, *extra)
    done = cli(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("rowpilot: error: ") and len(done.stderr.splitlines()) == 1
    assert message in done.stderr
    assert chat_requests(sim) == 0


def test_a_job_that_is_not_a_prompt_job_is_refused(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("id,text\na,x\n", encoding="utf-8")
    (tmp_path / "tasks.py").write_text("def f(row):\n    return {'n': 1}\n", encoding="utf-8")
    job = tmp_path / "job.toml"
    job.write_text('[source]\npath = "in.csv"\n[task]\nfunction = "tasks.py:f"\n', encoding="utf-8")
    done = cli("compare", str(job), "--models", BASELINE, "--sample", "1")
    assert done.returncode == 2
    assert "compare runs a prompt job, and this job runs a Python task" in done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_a_budget_with_a_model_of_no_known_price_is_refused_before_any_call(
    sim: Simulator, cli: Cli, tmp_path: Path
) -> None:
    job = write_job(tmp_path, sim)
    with job.open("a", encoding="utf-8") as handle:
        handle.write(f'[providers.sim]\nbase_url = "{sim.openai_base_url}"\n')
        handle.write('api_key_env = "OPENAI_API_KEY"\n')
    done = cli(*compare_args(job, sim, "--models", "sim/unpriced-model", "--budget", "5"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--budget needs a price, and none is known for sim/unpriced-model" in done.stderr
    assert chat_requests(sim) == 0


def test_a_shard_of_a_job_is_refused(sim: Simulator, cli: Cli, tmp_path: Path) -> None:
    job = write_job(tmp_path, sim)
    job.write_text(job.read_text(encoding="utf-8").replace("[run]\n", '[run]\nshard = "1/2"\n'))
    done = cli(*compare_args(job, sim))
    assert done.returncode == 2
    assert "compare samples the whole job, and this job is a shard of it" in done.stderr
    assert chat_requests(sim) == 0


def test_an_input_column_named_key_keeps_its_name_beside_the_row_key(
    sim: Simulator, tmp_path: Path
) -> None:
    rows = [{"id": f"r{i}", "key": f"other {i}", "text": f"note {i}"} for i in range(8)]
    frame = rowpilot.compare(
        pd.DataFrame(rows),
        models=[BASELINE, FIFTH],
        sample=5,
        key="id",
        prompt="Note: {text}",
        fields={"flag": "bool"},
        base_url=sim.openai_base_url,
        state=tmp_path / "state",
        summary=False,
    )
    answers = frame.attrs["answers"]
    assert list(answers.columns) == ["row_key", "id", "key", "text", f"{BASELINE}:flag",
                                     f"{FIFTH}:flag"]  # fmt: skip
    assert list(answers["row_key"]) == list(answers["id"])
    assert all(other.startswith("other ") for other in answers["key"])
    assert (tmp_path / "state-compare" / "openai_gpt-4o").is_dir()


def test_the_job_may_be_given_as_run_flags_instead_of_a_file(
    sim: Simulator, cli: Cli, tmp_path: Path
) -> None:
    write_job(tmp_path, sim)  # for in.csv
    done = cli("compare", "in.csv", "--key", "id", "--prompt", PROMPT, "--labels", "flag",
               "--models", BASELINE, FIFTH, "--sample", "30", "--base-url", sim.openai_base_url,
               "--state", "flags")  # fmt: skip
    assert done.returncode == 0, done.stderr
    sample = sorted(expected_sample(tmp_path), key=lambda r: documented_key(r["id"]))[:30]
    agreeing = sum(not against(FIFTH, row["text"]) for row in sample)
    assert 0 < agreeing < 30
    assert model_lines(done.stdout, FIFTH)[-1] == (
        f"  agreement: flag {share_text(agreeing, 30)} agree (30 rows)"
    )
    assert (tmp_path / "flags-compare" / "openai_gpt-4o").is_dir()


def documented_key(key: str) -> tuple[int, str]:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1, key
