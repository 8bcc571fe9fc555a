"""Tests for rowpilot.sinks.filenames: safe stems and stable, collision-free file names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rowpilot.errors import OutputPathError
from rowpilot.sinks.filenames import INDEX_FILE_NAME, KeyFileNamer, key_hash, safe_stem

WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL"} | {
    f"{p}{n}" for p in ("COM", "LPT") for n in range(10)
}

TRICKY_KEYS = [
    "",
    " ",
    ".",
    "..",
    "...",
    "../etc/passwd",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "a_b",
    "C:\\Windows",
    "CON",
    "con",
    "aux.txt",
    "LPT9.tar.gz",
    "com1.",
    ".hidden",
    "_index",
    "_index.jsonl",
    "-rf",
    "trailing.",
    "tab\there",
    "nul\x00byte",
    "line\nbreak",
    "日本語",
    "Ünïcödé",
    "emoji 🚀",
    "Abc",
    "abc",
    "ABC",
    "x" * 100,
    "x" * 101,
    "é" * 500,
    "~tilde",
    "ß",
    "SS",
]

surrogate_free_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=150)


def _is_windows_device(stem: str) -> bool:
    return stem.split(".", 1)[0].upper() in WINDOWS_DEVICES


# --- safe_stem --------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["C0018099", "a.b", "A-1_x", "x" * 100, "v1.2.3", "COM0"])
def test_plain_keys_map_to_themselves(key: str) -> None:
    assert safe_stem(key) == key


PLAIN_TRICKY_KEYS = {"a_b", "Abc", "abc", "ABC", "SS", "x" * 100}


@pytest.mark.parametrize("key", [key for key in TRICKY_KEYS if key not in PLAIN_TRICKY_KEYS])
def test_other_keys_are_sanitised_and_tagged_with_their_hash(key: str) -> None:
    stem = safe_stem(key)
    assert stem.endswith("~" + key_hash(key))
    assert not _is_windows_device(stem)
    assert not stem.startswith((".", "_", "-"))


def test_device_name_with_extension_is_defused() -> None:
    assert safe_stem("aux.txt").startswith("aux_.txt~")
    assert safe_stem("CON").startswith("CON~")


def test_stem_keeps_a_readable_prefix() -> None:
    assert (
        safe_stem("disease name/with slash")
        == f"disease_name_with_slash~{key_hash('disease name/with slash')}"
    )


@given(st.text(max_size=300))
def test_safe_stem_properties(key: str) -> None:
    stem = safe_stem(key)
    assert stem
    assert stem not in {".", ".."}
    assert not {"/", "\\", "\x00"} & set(stem)
    assert len(stem) <= 100
    assert not stem.startswith("_")
    assert not _is_windows_device(stem)
    assert stem.isascii()


@given(st.text(max_size=300))
def test_safe_stem_stays_inside_its_folder(key: str) -> None:
    folder = Path("/tmp/rowpilot-export")
    name = safe_stem(key) + ".json"
    assert Path(folder, name).resolve().parent == folder.resolve()


@given(st.text(max_size=50), st.text(max_size=50))
def test_distinct_keys_get_distinct_stems(first: str, second: str) -> None:
    if first != second:
        assert safe_stem(first) != safe_stem(second)


# --- KeyFileNamer -----------------------------------------------------------------------


@given(st.sets(st.text(max_size=40), max_size=40))
def test_names_are_distinct_under_casefold(keys: set[str]) -> None:
    namer = KeyFileNamer(Path("unused"))
    names = [namer.file_name(key) for key in sorted(keys)]
    assert len({name.casefold() for name in names}) == len(keys)
    assert all(name.endswith(".json") and name != INDEX_FILE_NAME for name in names)


def test_case_colliding_keys_get_different_files() -> None:
    namer = KeyFileNamer(Path("unused"))
    assert namer.file_name("Abc") == "Abc.json"
    assert namer.file_name("abc") == f"abc~{key_hash('abc')}.json"
    assert namer.file_name("Abc") == "Abc.json"


def test_a_key_keeps_its_name_once_assigned(tmp_path: Path) -> None:
    first = KeyFileNamer(tmp_path)
    first.file_name("abc")
    first.set_fingerprint("abc", "fp1")
    first.save()

    second = KeyFileNamer.load(tmp_path)
    # "Abc" arrives first this time, yet "abc" keeps the natural name it already had.
    assert second.file_name("Abc") == f"Abc~{key_hash('Abc')}.json"
    assert second.file_name("abc") == "abc.json"
    assert second.fingerprint("abc") == "fp1"
    assert second.fingerprint("Abc") is None


def test_index_round_trips_every_tricky_key(tmp_path: Path) -> None:
    namer = KeyFileNamer(tmp_path)
    names = {key: namer.file_name(key) for key in [*TRICKY_KEYS, "\u2028", "\ud800lone"]}
    namer.save()
    reloaded = KeyFileNamer.load(tmp_path)
    assert dict(reloaded) == names
    assert (tmp_path / INDEX_FILE_NAME).read_text(encoding="utf-8").isascii()


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(surrogate_free_text, min_size=1, max_size=12, unique=True))
def test_files_written_for_keys_land_inside_the_folder(tmp_path: Path, keys: list[str]) -> None:
    folder = tmp_path / "out"
    folder.mkdir(exist_ok=True)
    for leftover in folder.iterdir():
        leftover.unlink()
    namer = KeyFileNamer(folder)
    for key in keys:
        (folder / namer.file_name(key)).write_text(json.dumps(key), encoding="utf-8")
    assert len(os.listdir(folder)) == len(keys)
    for key in keys:
        target = folder / namer.file_name(key)
        assert target.resolve().parent == folder.resolve()
        assert json.loads(target.read_text(encoding="utf-8")) == key


def test_tricky_keys_written_and_read_back(tmp_path: Path) -> None:
    namer = KeyFileNamer(tmp_path)
    for key in TRICKY_KEYS:
        (tmp_path / namer.file_name(key)).write_text(json.dumps(key), encoding="utf-8")
    namer.save()
    assert len(os.listdir(tmp_path)) == len(TRICKY_KEYS) + 1
    for key in TRICKY_KEYS:
        assert json.loads((tmp_path / namer.file_name(key)).read_text(encoding="utf-8")) == key
    assert not (tmp_path.parent / "etc").exists()


@pytest.mark.parametrize(
    "line",
    [
        "not json",
        '{"key": "a"}',
        '{"key": 1, "file": "a.json", "fingerprint": null}',
        '{"key": "a", "file": "../a.json", "fingerprint": null}',
        '{"key": "a", "file": "_index.jsonl", "fingerprint": null}',
        '{"key": "a", "file": "sub/a.json", "fingerprint": null}',
    ],
)
def test_a_damaged_index_is_refused(tmp_path: Path, line: str) -> None:
    (tmp_path / INDEX_FILE_NAME).write_text(
        '{"key": "ok", "file": "ok.json", "fingerprint": "f"}\n' + line + "\n", encoding="utf-8"
    )
    with pytest.raises(OutputPathError) as caught:
        KeyFileNamer.load(tmp_path)
    assert caught.value.line == 2
    assert caught.value.hint is not None


def test_an_index_giving_two_keys_one_file_is_refused(tmp_path: Path) -> None:
    lines = [
        {"key": "a", "file": "a.json", "fingerprint": None},
        {"key": "b", "file": "A.json", "fingerprint": None},
    ]
    (tmp_path / INDEX_FILE_NAME).write_text(
        "".join(json.dumps(entry) + "\n" for entry in lines), encoding="utf-8"
    )
    with pytest.raises(OutputPathError, match="repeats"):
        KeyFileNamer.load(tmp_path)


def test_load_without_index_is_empty(tmp_path: Path) -> None:
    assert len(KeyFileNamer.load(tmp_path)) == 0
