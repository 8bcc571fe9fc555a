"""Compare two runs of the same rows with two models: cost, and answers side by side.

    python compare.py out/sample/gpt-4o out/sample/gpt-4o-mini --full-rows 15000

Each argument is a rowpilot state directory (the folder name labels the column). The cost
comes from `rowpilot status --json` (every paid request is journaled with its tokens and
price), the answers from `rowpilot export`; the first directory is the reference the
second is compared with.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NUMERIC_RATIO = 2.0  # numbers within a factor of 2 of the reference count as agreeing
FREE_TEXT = 40  # string fields longer than this on average are prose: shown, not compared


def rowpilot_exe() -> str:
    """The rowpilot command of the Python running this script (its venv), else PATH's."""
    beside = Path(sys.executable).parent / "rowpilot"
    found = str(beside) if beside.exists() else shutil.which("rowpilot")
    if found is None:
        raise SystemExit("rowpilot is not installed: pip install rowpilot")
    return found


def rowpilot_json(*args: str) -> Any:
    done = subprocess.run(
        [rowpilot_exe(), *args], capture_output=True, text=True, check=False, timeout=300
    )
    if done.returncode != 0:
        raise SystemExit(f"rowpilot {' '.join(args)} failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


@dataclass(frozen=True)
class ModelRun:
    label: str
    done: int
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    answers: dict[str, dict[str, Any]]  # key -> the row's input and output columns

    @property
    def per_row(self) -> float:
        return self.cost_usd / self.done if self.done else 0.0


def load(state: Path, key: str) -> ModelRun:
    view = rowpilot_json("status", str(state), "--json")["states"][0]
    spending = view["spending"]
    with tempfile.TemporaryDirectory() as scratch:
        table = Path(scratch) / "answers.jsonl"
        subprocess.run(
            [rowpilot_exe(), "export", str(state), "-o", str(table), "--done-only"],
            capture_output=True,
            check=True,
            timeout=300,
        )
        rows = [json.loads(line) for line in table.read_text(encoding="utf-8").splitlines()]
    return ModelRun(
        label=state.name,
        done=view["done"],
        calls=int(spending.get("calls", 0)),
        input_tokens=int(spending.get("input_tokens", 0)),
        output_tokens=int(spending.get("output_tokens", 0)),
        cost_usd=float(spending.get("cost_usd", 0.0)),
        answers={str(row[key]): row for row in rows},
    )


def cost_lines(runs: list[ModelRun], full_rows: int | None) -> list[str]:
    header = f"{'model':<14}{'rows':>6}{'requests':>10}{'input tok':>11}{'output tok':>12}"
    header += f"{'cost':>11}{'per 1k rows':>13}"
    if full_rows:
        header += f"{f'for {full_rows:,} rows':>18}"
    lines = [header]
    for run in runs:
        cost, per_1k = f"${run.cost_usd:.4f}", f"${run.per_row * 1000:.3f}"
        line = (
            f"{run.label:<14}{run.done:>6,}{run.calls:>10,}{run.input_tokens:>11,}"
            f"{run.output_tokens:>12,}{cost:>11}{per_1k:>13}"
        )
        if full_rows:
            line += f"{f'${run.per_row * full_rows:,.2f}':>18}"
        lines.append(line)
    reference, other = runs[0], runs[1]
    if reference.per_row:
        share = other.per_row / reference.per_row
        lines.append(
            f"{other.label} costs {share:.1%} of {reference.label} per row ({1 - share:.1%} less)"
        )
    return lines


def _agrees(mine: Any, theirs: Any) -> bool:
    numbers = (int, float)
    if isinstance(mine, numbers) and isinstance(theirs, numbers) and not isinstance(mine, bool):
        if mine == theirs:
            return True
        low, high = sorted((abs(float(mine)), abs(float(theirs))))
        return low > 0 and high / low <= NUMERIC_RATIO
    return bool(mine == theirs)


def compared_fields(runs: list[ModelRun], inputs: set[str]) -> tuple[list[str], list[str]]:
    """The output fields both runs have: (compared, free text that is only shown)."""
    first = next(iter(runs[0].answers.values()), {})
    second = next(iter(runs[1].answers.values()), {})
    common = [name for name in first if name in second and name not in inputs]
    prose = []
    for name in common:
        texts = [row.get(name) for row in runs[0].answers.values()]
        strings = [text for text in texts if isinstance(text, str)]
        if strings and sum(map(len, strings)) / len(strings) > FREE_TEXT:
            prose.append(name)
    return [name for name in common if name not in prose], prose


def agreement_lines(runs: list[ModelRun], fields: list[str]) -> list[str]:
    reference, other = runs[0], runs[1]
    keys = sorted(set(reference.answers) & set(other.answers))
    lines = [f"agreement of {other.label} with {reference.label} on {len(keys):,} rows:"]
    for name in fields:
        same = sum(
            _agrees(reference.answers[k].get(name), other.answers[k].get(name)) for k in keys
        )
        sample = reference.answers[keys[0]].get(name) if keys else None
        numeric = isinstance(sample, int | float) and not isinstance(sample, bool)
        note = f" (within {NUMERIC_RATIO:g}x)" if numeric else ""
        share = same / len(keys) if keys else 0.0
        lines.append(f"  {name + note:<34}{same:>6,}/{len(keys):,}  {share:6.1%}")
    return lines


def side_by_side_lines(
    runs: list[ModelRun], key: str, show: int, fields: list[str], label_column: str | None
) -> list[str]:
    keys = sorted(set(runs[0].answers) & set(runs[1].answers))[:show]
    lines = [f"first {len(keys)} rows side by side ({' | '.join(r.label for r in runs)}):"]
    for k in keys:
        title = runs[0].answers[k].get(label_column, "") if label_column else ""
        lines.append(f"  {k}  {title}")
        for name in fields:
            values = [_short(run.answers[k].get(name)) for run in runs]
            mark = "" if _agrees(*(run.answers[k].get(name) for run in runs)) else "   <- differs"
            lines.append(f"    {name:<22}{' | '.join(values)}{mark}")
    return lines


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 28 else text[:27] + "…"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, help="state directory of the reference model")
    parser.add_argument("candidate", type=Path, help="state directory of the cheaper model")
    parser.add_argument("--key", default="cui")
    parser.add_argument("--label-column", default="name", help="input column shown per row")
    parser.add_argument("--full-rows", type=int, help="project the cost to this many rows")
    parser.add_argument("--show", type=int, default=4, help="rows shown side by side")
    args = parser.parse_args(argv)
    runs = [load(args.reference, args.key), load(args.candidate, args.key)]
    inputs = {args.key, args.label_column}
    fields, prose = compared_fields(runs, inputs)
    for line in [
        *cost_lines(runs, args.full_rows),
        "",
        *agreement_lines(runs, fields),
        "",
        *side_by_side_lines(runs, args.key, args.show, fields + prose, args.label_column),
    ]:
        print(line)


if __name__ == "__main__":
    main()
