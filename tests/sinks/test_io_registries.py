"""The source and sink registries: a toy kind of each, added through the registry, runs a
real job end to end; and the built-in kinds are chosen as before.

Copy this file to test a new source or sink: register it in a fixture that unregisters it
afterwards, then run a job with ``rowpilot.run`` against real files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rowpilot
from conftest import invoke_cli
from rowpilot.errors import ConfigError
from rowpilot.sinks import LanceDBSink, SinkOptions, register_sink, unregister_sink
from rowpilot.sinks.vectors import nearest, parse_vector_target
from rowpilot.sources import (
    CsvSource,
    JsonlSource,
    Row,
    SourceOptions,
    open_source,
    register_source,
    unregister_source,
)
from rowpilot.state.registry import Registry

# ------------------------------------------------------------------ a toy source


class ToySource:
    """``key: text`` lines; the simplest Source there is."""

    reiterable = True

    def __init__(self, path: str) -> None:
        self.name = path

    def columns(self) -> list[str]:
        return ["id", "text"]

    def chunks(self, size: int = 1024) -> Iterator[list[Row]]:
        lines = Path(self.name.removeprefix("toy://")).read_text().splitlines()
        rows: list[Row] = []
        for index, line in enumerate(lines):
            key, _, text = line.partition(": ")
            rows.append((index, index + 1, {"id": key, "text": text}))
        for start in range(0, len(rows), size):
            yield rows[start : start + size]


def open_toy(name: str, _options: SourceOptions) -> ToySource:
    return ToySource(name)


# -------------------------------------------------------------------- a toy sink

CHECKED: list[str] = []


class ToySink:
    """Writes ``key -> output`` as one JSON object; refuses a target named ``bad.toyout``."""

    def __init__(self, path: str) -> None:
        self.name = path

    def check(self) -> None:
        CHECKED.append(self.name)
        if Path(self.name).name == "bad.toyout":
            raise ConfigError("toy sinks refuse bad.toyout", hint="pick another name")

    def write(self, registry: Registry) -> str:
        outputs = {record.key: record.output for record in registry.records(status="done")}
        Path(self.name).write_text(json.dumps(outputs, sort_keys=True))
        return f"toy: {self.name} ({len(outputs)} items)"


def toy_sink(target: str, _options: SinkOptions) -> ToySink:
    return ToySink(target)


@pytest.fixture
def toys() -> Iterator[None]:
    source_kind = register_source(open_toy, suffixes=(".toy",), schemes=("toy",))
    sink_kind = register_sink(toy_sink, suffixes=(".toyout",))
    CHECKED.clear()
    yield
    unregister_source(source_kind)
    unregister_sink(sink_kind)


CALLS: list[str] = []


def shout(row: dict[str, Any]) -> dict[str, Any]:
    CALLS.append(row["id"])
    return {"loud": row["text"].upper()}


def write_toy(path: Path) -> Path:
    path.write_text("a: hello\nb: rows\nc: pilot\n")
    return path


# ------------------------------------------------------------------------- tests


@pytest.mark.usefixtures("toys")
def test_a_toy_source_and_sink_run_a_job_end_to_end(tmp_path: Path) -> None:
    source = write_toy(tmp_path / "in.toy")
    out = tmp_path / "out.toyout"
    result = rowpilot.run(shout, source, key="id", workers=2, state=tmp_path / "s", output=out)
    assert result.summary.done == 3
    assert [str(out)] == CHECKED
    assert result.written == [f"toy: {out} (3 items)"]
    assert json.loads(out.read_text()) == {
        "a": {"loud": "HELLO"},
        "b": {"loud": "ROWS"},
        "c": {"loud": "PILOT"},
    }


@pytest.mark.usefixtures("toys")
def test_a_sink_is_checked_before_the_first_item(tmp_path: Path) -> None:
    source = write_toy(tmp_path / "in.toy")
    CALLS.clear()
    with pytest.raises(ConfigError, match=r"refuse bad\.toyout"):
        rowpilot.run(shout, source, key="id", state=tmp_path / "s", output=tmp_path / "bad.toyout")
    assert CALLS == []
    assert not (tmp_path / "s").exists()


MEMO: dict[str, dict[str, Any]] = {}  # what UrlSink was asked to write, by URL


class UrlSink:
    """A sink for ``memo://NAME`` URLs: keeps what it was asked to write, in ``MEMO``."""

    def __init__(self, url: str) -> None:
        self.name = url

    def check(self) -> None:
        assert self.name.startswith("memo://"), self.name

    def write(self, registry: Registry) -> str:
        outputs = {r.key: r.output for r in registry.records(status="done")}
        MEMO[self.name] = outputs
        return f"memo: {self.name}"


def test_an_output_url_reaches_its_sink_whole_from_the_api_and_the_command(
    tmp_path: Path,
) -> None:
    # A Path folds "//": --output memo://box/one must reach the sink as written.
    kind = register_sink(lambda url, _options: UrlSink(url), schemes=("memo",))
    try:
        source = write_toy(tmp_path / "in.toy")
        kind_source = register_source(open_toy, suffixes=(".toy",))
        try:
            rowpilot.run(shout, source, key="id", state=tmp_path / "a", output="memo://box/one")
            (tmp_path / "tasks.py").write_text(
                "def shout(row):\n    return {'loud': row['text'].upper()}\n", encoding="utf-8"
            )
            command = ["run", "in.toy", "--task", "tasks.py:shout", "--key", "id"]
            done = invoke_cli(*command, "--state", "b", "-o", "memo://box/two", cwd=tmp_path)
            assert done.returncode == 0, done.stderr
        finally:
            unregister_source(kind_source)
    finally:
        unregister_sink(kind)
    loud = {"a": {"loud": "HELLO"}, "b": {"loud": "ROWS"}, "c": {"loud": "PILOT"}}
    written = dict(MEMO)
    assert written == {"memo://box/one": loud, "memo://box/two": loud}


def test_output_naming_a_google_sheet_is_refused_before_any_work(tmp_path: Path) -> None:
    source = write_toy(tmp_path / "in.toy")
    kind = register_source(open_toy, suffixes=(".toy",))
    CALLS.clear()
    try:
        with pytest.raises(ConfigError, match="--output cannot name a Google Sheet") as refused:
            rowpilot.run(
                shout, source, key="id", state=tmp_path / "s", output="gsheet://SHEET_ID/Out"
            )
    finally:
        unregister_source(kind)
    assert "--write-back" in refused.value.message
    assert "rowpilot export STATE --to gsheet://" in (refused.value.hint or "")
    assert CALLS == [] and not (tmp_path / "s").exists()


@pytest.mark.usefixtures("toys")
def test_a_scheme_chooses_the_source_before_any_suffix(tmp_path: Path) -> None:
    path = write_toy(tmp_path / "rows.csv")  # a CSV suffix, but the URL says toy
    source = open_source(f"toy://{path}")
    assert isinstance(source, ToySource)
    assert [fields["id"] for _i, _l, fields in next(source.chunks())] == ["a", "b", "c"]


@pytest.mark.usefixtures("toys")
def test_format_names_a_registered_kind_and_errors_list_them(tmp_path: Path) -> None:
    path = write_toy(tmp_path / "rows.txt")
    assert isinstance(open_source(path, format="toy"), ToySource)
    (tmp_path / "rows.odd").write_text("x\n")
    with pytest.raises(ConfigError) as caught:
        open_source(tmp_path / "rows.odd")
    assert (
        caught.value.hint == "pass --format with one of: csv, tsv, jsonl, parquet, excel, xlsx, toy"
    )


def test_an_unregistered_kind_is_forgotten(tmp_path: Path) -> None:
    kind = register_source(open_toy, suffixes=(".toy",))
    unregister_source(kind)
    with pytest.raises(ConfigError, match=r"suffix '\.toy'"):
        open_source(write_toy(tmp_path / "in.toy"))


def test_built_in_kinds_are_chosen_by_suffix_and_format(tmp_path: Path) -> None:
    jsonl = tmp_path / "rows.ndjson"
    jsonl.write_text('{"id": 1}\n')
    assert isinstance(open_source(jsonl), JsonlSource)
    tsv = tmp_path / "rows.txt"
    tsv.write_text("id\ttext\n1\ta,b\n")
    source = open_source(tsv, format="TSV")
    assert isinstance(source, CsvSource)
    assert source.columns() == ["id", "text"]


def vector(row: dict[str, Any]) -> dict[str, Any]:
    return {"vec": np.full(4, float(row["id"]), dtype=np.float32)}


def test_the_vector_sink_reads_the_field_it_is_given(tmp_path: Path) -> None:
    pytest.importorskip("lancedb")
    rows = [{"id": n, "text": f"row {n}"} for n in range(3)]
    result = rowpilot.run(vector, rows, key="id", state=tmp_path / "s")
    sink = LanceDBSink(f"lancedb://{tmp_path}/db/vecs", vector_field="vec", text_column="text")
    sink.check()
    registry = Registry(result.state)
    try:
        assert sink.write(registry) == (
            f"vectors: lancedb://{tmp_path}/db/vecs (3 inserted, 0 replaced, 0 unchanged)"
        )
    finally:
        registry.close()

    query = np.full(4, 2.0, dtype=np.float32)
    assert nearest(parse_vector_target(f"lancedb://{tmp_path}/db/vecs"), query, k=1) == [("2", 0.0)]
