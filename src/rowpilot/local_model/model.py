"""The bundled local model ``local/wordllama``: static embeddings, no API key, no network.

The model is wordllama's ``l2_supercat`` table at 256 dimensions, shipped inside the
wordllama wheel: a 32,000-token Llama-2 tokenizer and one fixed vector per token. A text's
vector is the sum of its tokens' vectors scaled to unit length (the direction of
wordllama's mean pooling), so it costs a tokenizer pass and a table look-up: about
100,000 short rows a second per core, and no model state beyond a 32 MB table.

Rules
-----
* Offline only. ``load_model`` reads the files of the installed wordllama package with
  downloads disabled; if they are missing it raises ``ProviderSetupError`` rather than
  reach for Hugging Face (wordllama's own ``load()`` would download the tokenizer).
* Deterministic. A row's vector depends on its text alone: not on the batch it came in,
  the batch size, the thread, or the order of calls. wordllama pads a batch to its
  longest text; this module adds up each text's own tokens in order instead, so results
  are bit-identical however rows are chunked (and one long row cannot make a batch
  allocate ``batch * longest`` token vectors).
* The empty text (no tokens) gets the zero vector, not NaN: its cosine with anything is 0.
* The tokenizer is case-sensitive ("ACME" and "acme" are different tokens);
  ``normalise_for_dedupe`` folds case, accents and punctuation before rows are compared.
* Thread-safe, and it runs in threads: tokenizing (most of the time) releases the GIL.

What a static embedding is good and bad at
------------------------------------------
Good: topic similarity (a recipe is near "cooking", a match report near "sports") and
near-duplicates that share their words. Bad: anything that needs context. Word order is
invisible ("dog bites man" == "man bites dog"), and so, mostly, are negation ("not spam"
is near "spam"), sarcasm, intent and fine distinctions ("Windows 10" / "Windows 11" at
0.94); a typo changes a word's tokens wholesale, so "Micrsoft" is far from "Microsoft".

Labels: each label is judged on its own, by the cosine between the row and the label's
description (``"spam: unsolicited advertising"``, or the name alone). They are rough: on
the test fixture (65 short texts, five labels) the default threshold gives precision 0.81
and recall 0.78 with described labels, 0.80 / 0.65 with bare names. Topics do well (0.8 to
1.0 per label); "spam", a matter of intent, does not (0.33 / 0.27) unless described in the
words spam uses ("spam: free prize, click here, limited offer, cheap loan": 0.50 / 0.64).
So: describe a label with words its rows would contain, and check a sample. Tried and
dropped: templates ("This text is about ...") did not help; subtracting the row's mean
similarity to all labels made a label depend on the others (and 0 when alone) for a gain
within the fixture's noise.

Dedupe: ``dedupe_vectors`` joins three views of the normalised text, the static embedding
(meaning), character trigrams (spelling) and identifiers (numbers, initials), so that
"Order 1234" and "Order 1235" stay apart; ``dedupe_clusters`` links every pair at or above
a cosine threshold and gives each row its cluster's first row. Duplicates it finds are
the same words up to case, accents, punctuation, order and small extra words; it does not
find typos ("Jon Smith" / "John Smith" score 0.83, below "John Smith" / "John Smithson").
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import threading
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from rowpilot.errors import ConfigError, ProviderSetupError
from rowpilot.llm.labels import split_label

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from wordllama import WordLlamaInference  # type: ignore[import-untyped]

__all__ = [
    "DEDUPE_DIMENSIONS",
    "DEFAULT_DEDUPE_THRESHOLD",
    "DEFAULT_THRESHOLD",
    "DIMENSIONS",
    "MODEL",
    "LabelSpec",
    "dedupe_clusters",
    "dedupe_vectors",
    "embed_texts",
    "label_scores",
    "load_model",
    "normalise_for_dedupe",
    "parse_labels",
]

Matrix = npt.NDArray[np.float32]

MODEL = "wordllama"  # users write local/wordllama
DIMENSIONS = 256
_CONFIG = "l2_supercat"  # the configuration whose 256-d weights and tokenizer the wheel ships

# Calibrated on the labelled fixture in tests/test_local.py (65 texts x 5 labels, every
# text/label pair judged): best F1 at 0.09 for bare names and 0.12 for described labels;
# 0.11 costs each less than 0.03 of F1. Calibrated on the even-numbered texts alone, the
# thresholds (0.091, 0.129) give P/R 0.80/0.69 and 0.91/0.72 on the odd ones.
DEFAULT_THRESHOLD = 0.11

# dedupe_vectors joins three unit vectors scaled by the square roots of these weights, so a
# pair's cosine is the weighted mean of the three cosines. Meaning: the static embedding,
# tolerant of small extra words ("Bank of America" / "Bank America"). Spelling: hashed
# character trigrams of each word. Identifiers: the words that name one thing among many
# (numbers, initials), so rows that differ only there ("Order 1234" / "Order 1235",
# "Mary A. Jones" / "Mary B. Jones") stay apart however long the rest of the text is.
_MEANING_WEIGHT, _SPELLING_WEIGHT, _IDENTIFIER_WEIGHT = 0.6, 0.2, 0.2
_SPELLING_BUCKETS = 256  # hashed trigrams: collisions add +-0.03 noise to a spelling cosine
_IDENTIFIER_DIMENSIONS = 256  # at most 512: one blake2b digest
DEDUPE_DIMENSIONS = DIMENSIONS + _SPELLING_BUCKETS + _IDENTIFIER_DIMENSIONS

# Calibrated on the name fixture in tests/test_local.py (69 names, 42 entities): duplicates
# score 1.0 (the same words once normalised), the closest distinct pairs 0.909 ("Henry
# VIII" / "Henry VII") and 0.898 ("Invoice 2023-001" / "-002 ..."), and 0.855 ("John
# Smith" / "John Smithson") among names without numbers or initials: margins of 0.05 and
# 0.04 either side. Plain embed_texts vectors of normalised text put "Acme 2020 Ltd" /
# "Acme 2021 Ltd" at 0.975 and templated rows that differ in a number at 0.94-0.96.
DEFAULT_DEDUPE_THRESHOLD = 0.95

_REINSTALL = "reinstall it: pip install --force-reinstall 'wordllama==0.4.*'"


@dataclass(frozen=True)
class _Loaded:
    model: WordLlamaInference
    tokenizer: Tokenizer  # a private copy without padding: each text keeps its own tokens
    table: Matrix  # (vocabulary, 256) float32, one row per token


_lock = threading.Lock()
_loaded: list[_Loaded] = []  # empty until the first load; a list so no global statement


def load_model() -> WordLlamaInference:
    """The wordllama model, loaded once per process from the installed package, offline."""
    return _load().model


def _load() -> _Loaded:
    if not _loaded:
        with _lock:  # worker threads may all ask at once; load the files once
            if not _loaded:
                _loaded.append(_load_offline())
    return _loaded[0]


def _load_offline(folder: Path | None = None) -> _Loaded:
    """Load from ``folder`` (the installed wordllama package when None), never downloading."""
    try:
        wordllama = _import_wordllama()
        folder = folder or Path(wordllama.__file__).parent
        # wordllama looks for the tokenizer in <package>/tokenizer/ but the wheel ships it in
        # <package>/tokenizers/, then downloads it; its cache lookup (<cache_dir>/tokenizers/)
        # finds the shipped file when cache_dir is the package folder.
        model = wordllama.WordLlama.load(
            _CONFIG, cache_dir=folder, dim=DIMENSIONS, disable_download=True
        )
        tokenizer = _unpadded(model.tokenizer)
        table = np.ascontiguousarray(model.embedding, dtype=np.float32)
    except Exception as error:  # tokenizers and safetensors raise bare Exception subclasses
        reason = " ".join(f"{type(error).__name__}: {error}".split())  # one line
        raise ProviderSetupError(
            f"local/{MODEL}: cannot load the bundled model ({reason})", hint=_REINSTALL
        ) from error
    if table.shape[1] != DIMENSIONS or tokenizer.get_vocab_size() > table.shape[0]:
        raise ProviderSetupError(
            f"local/{MODEL}: unexpected model files (table {table.shape})", hint=_REINSTALL
        )
    return _Loaded(model, tokenizer, table)


def _import_wordllama() -> Any:
    """``import wordllama``, undoing its ``logging.basicConfig(level=INFO)``.

    Left alone, that call would make every library's INFO logs print to stderr for the
    rest of the process.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    import wordllama

    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    return wordllama


def _unpadded(tokenizer: Tokenizer) -> Tokenizer:
    from tokenizers import Tokenizer

    # A copy, because wordllama's own embed() needs its tokenizer to keep padding.
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


# -- embeddings --------------------------------------------------------------------------


def embed_texts(texts: Sequence[str], *, batch_size: int = 512) -> Matrix:
    """Unit-length float32 vectors, shape ``(len(texts), 256)``; the empty text gets zeros.

    Deterministic: a text's vector is bit-identical whatever the batch size and whatever
    else is in the call. ``batch_size`` bounds the memory of one step, not the result.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    loaded = _load()
    vectors = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        batch = _strings(texts[start : start + batch_size], start)
        vectors[start : start + len(batch)] = _embed_batch(loaded, batch)
    return vectors


def _strings(texts: Sequence[str], offset: int) -> list[str]:
    batch = list(texts)
    for index, text in enumerate(batch):
        if not isinstance(text, str):
            raise TypeError(f"texts[{offset + index}] is {type(text).__name__}, not str")
    return batch


def _embed_batch(loaded: _Loaded, texts: list[str]) -> Matrix:
    # encode_batch_fast releases the GIL while it tokenizes: other threads can run.
    encodings = loaded.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    ids = [encoding.ids for encoding in encodings]
    lengths = np.fromiter(map(len, ids), dtype=np.intp, count=len(ids))
    tokens = np.fromiter(chain.from_iterable(ids), dtype=np.intp, count=int(lengths.sum()))
    return _unit_rows(_sum_tokens(loaded.table, lengths, tokens))


def _sum_tokens(
    table: Matrix, lengths: npt.NDArray[np.intp], tokens: npt.NDArray[np.intp]
) -> Matrix:
    """Each text's token vectors summed in token order, first to last.

    Texts sorted longest first, so step k adds the k-th token of the texts that have one
    (a prefix of the sorted texts): one vectorised add per token position. Each sum is
    the same sequence of float32 additions whatever texts share the batch, which is what
    makes embeddings independent of batching (and 7x faster than np.add.reduceat here).
    """
    sums = np.zeros((len(lengths), DIMENSIONS), dtype=np.float32)
    if not tokens.size:
        return sums
    order = np.argsort(-lengths, kind="stable")
    starts = (np.cumsum(lengths) - lengths)[order]
    active = len(lengths) - np.cumsum(np.bincount(lengths))[:-1]  # texts longer than k
    for position, count in enumerate(active.tolist()):
        sums[:count] += table[tokens[starts[:count] + position]]
    unsorted = np.empty_like(sums)
    unsorted[order] = sums
    return unsorted


def _unit_rows(matrix: npt.NDArray[np.floating]) -> Matrix:
    """Rows scaled to length 1 (zero rows stay zero), as float32.

    The norms are summed in float64 and every step is per row, so a row's result does not
    depend on the other rows (no BLAS blocking, no alignment-dependent SIMD sums). Done
    4,096 rows at a time so the float64 temporaries stay small for 100,000-row inputs.
    """
    unit = np.empty(matrix.shape, dtype=np.float32)
    for start in range(0, len(matrix), 4096):
        wide = matrix[start : start + 4096].astype(np.float64)  # a copy: divided in place
        norms = np.sqrt(np.square(wide).sum(axis=1, keepdims=True))
        np.divide(wide, norms, out=wide, where=norms > 0)  # a zero row is left as it is
        unit[start : start + 4096] = wide
    return unit


# -- zero-shot labels --------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSpec:
    name: str  # the output column
    description: str  # what is embedded; the name itself when none was given


def parse_labels(labels: Sequence[str]) -> list[LabelSpec]:
    """``"spam"`` or ``"spam: unsolicited advertising"`` to label specs.

    Names must be non-empty and distinct ignoring case (they become output columns).
    """
    if isinstance(labels, str):
        labels = [labels]  # one label given as a plain string, not its characters
    if not labels:
        raise ConfigError("no labels given", hint='give at least one, e.g. "spam: junk mail"')
    specs: list[LabelSpec] = []
    seen: dict[str, str] = {}
    for number, label in enumerate(labels, start=1):
        spec = _parse_label(label, number)
        if spec.name.casefold() in seen:
            raise ConfigError(
                f"label {spec.name!r} is given twice",
                hint=f"each label is an output column; {seen[spec.name.casefold()]!r} came first",
            )
        seen[spec.name.casefold()] = spec.name
        specs.append(spec)
    return specs


def _parse_label(label: object, number: int) -> LabelSpec:
    if not isinstance(label, str):
        raise ConfigError(f"label {number} is {type(label).__name__}, not text")
    name, description = split_label(label)  # the same reading as an LLM's labels get
    if not name:
        raise ConfigError(
            f"label {number} ({label!r}) has no name", hint='write "name" or "name: description"'
        )
    return LabelSpec(name, description)


def label_scores(vectors: npt.NDArray[np.floating], labels: Sequence[LabelSpec]) -> Matrix:
    """Cosine similarity of each row to each label's description, shape ``(n, len(labels))``.

    A label applies when its score reaches the threshold (``DEFAULT_THRESHOLD``); each
    label is judged on its own. ``vectors`` are ``embed_texts`` output.
    """
    rows = np.asarray(vectors)
    if rows.ndim != 2 or rows.shape[1] != DIMENSIONS:
        raise ValueError(f"vectors must have shape (n, {DIMENSIONS}), not {rows.shape}")
    targets = embed_texts([label.description for label in labels])
    # float32 products are exact in float64 and the float64 sum rounds to the same float32
    # whatever order BLAS adds in, so a row's score does not depend on the batch around it.
    scores = rows.astype(np.float64) @ targets.astype(np.float64).T
    return scores.astype(np.float32)


# -- near-duplicates ---------------------------------------------------------------------

_APOSTROPHES = str.maketrans("", "", "'`\u00b4\u2018\u2019\u02bc")


def normalise_for_dedupe(text: str) -> str:
    """Casefold, strip accents and punctuation, collapse whitespace.

    ``"  José GARCÍA, Jr."`` -> ``"jose garcia jr"``; ``"O'Brien & Sons"`` -> ``"obrien and
    sons"``. Apostrophes vanish; other punctuation becomes a space ("Blue-Sky" = "Blue Sky").
    Word order is left alone: the static embedding is already blind to it (no token spans
    two words, so a text's tokens are the same set in any order), and so are the spelling
    features. Idempotent.
    """
    folded = _fold(text).replace("&", " and ").translate(_APOSTROPHES)
    return " ".join("".join(char if char.isalnum() else " " for char in folded).split())


def _fold(text: str) -> str:
    # casefold and NFKD can each expose work for the other ("İ" folds to "i" plus a
    # combining dot); repeat to a fixed point so normalising twice changes nothing.
    for _ in range(8):
        decomposed = unicodedata.normalize("NFKD", text.casefold())
        folded = "".join(char for char in decomposed if not unicodedata.combining(char))
        if folded == text:
            break
        text = folded
    return text


def dedupe_vectors(texts: Sequence[str], *, batch_size: int = 512) -> Matrix:
    """Vectors for ``dedupe_clusters``: meaning, spelling and identifiers of the normalised text.

    Shape ``(n, DEDUPE_DIMENSIONS)``, unit rows; a text with nothing left after
    normalising gets zeros (it then matches nothing at a positive threshold). A pair's
    cosine is ``0.6 * embedding + 0.2 * trigram + 0.2 * identifier cosine``. Like the
    embedding, the spelling and identifier parts ignore word order.
    """
    normalised = [normalise_for_dedupe(text) for text in _strings(texts, 0)]
    meaning = embed_texts(normalised, batch_size=batch_size)
    weighted = [
        meaning * math.sqrt(_MEANING_WEIGHT),
        _spelling_vectors(normalised) * math.sqrt(_SPELLING_WEIGHT),
        _identifier_vectors(normalised) * math.sqrt(_IDENTIFIER_WEIGHT),
    ]
    return np.hstack(weighted, dtype=np.float32)


def _spelling(text: str) -> set[str]:
    """Each word's trigrams, its boundaries included: "john" -> " jo", "joh", "ohn", "hn "."""
    return {f" {word} "[start : start + 3] for word in text.split() for start in range(len(word))}


def _identifiers(text: str) -> set[str]:
    """The words with a digit and the one-letter words, plus a marker every text has.

    The marker makes two texts without identifiers agree fully (cosine 1), and a text with
    an extra or a different identifier agree only partly.
    """
    if not text:
        return set()
    words = text.split()
    return {"#"} | {word for word in words if len(word) == 1 or not word.isalpha()}


def _spelling_vectors(texts: Sequence[str]) -> Matrix:
    """Trigram sets as unit rows by the hashing trick: each trigram adds +-1 to one bucket.

    The sign makes two trigrams that share a bucket cancel out on average instead of
    always adding to the cosine.
    """
    rows: list[int] = []
    columns: list[int] = []
    signs: list[float] = []
    for row, text in enumerate(texts):
        for trigram in _spelling(text):
            column, sign = _bucket(trigram)
            rows.append(row)
            columns.append(column)
            signs.append(sign)
    counts = np.zeros((len(texts), _SPELLING_BUCKETS), dtype=np.float64)
    np.add.at(counts, (np.asarray(rows, np.intp), np.asarray(columns, np.intp)), signs)
    return _unit_rows(counts)


@functools.lru_cache(maxsize=1 << 16)  # trigrams repeat from row to row
def _bucket(feature: str) -> tuple[int, float]:
    # blake2b, not hash(): str hashes are salted, different in every process.
    code = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=4).digest(), "little")
    return (code >> 1) % _SPELLING_BUCKETS, 1.0 if code & 1 else -1.0


def _identifier_vectors(texts: Sequence[str]) -> Matrix:
    """Identifier sets as unit rows: the sum of a random +-1 vector per identifier.

    Not hashed into buckets: among 100,000 templated rows, some identifiers would share
    buckets and their rows would merge. Two random 256-d sign vectors have a cosine of
    0 +- 0.06, and above 0.5 with a probability of about 1e-14.
    """
    sums = np.zeros((len(texts), _IDENTIFIER_DIMENSIONS), dtype=np.float64)
    for row, text in enumerate(texts):
        for identifier in _identifiers(text):
            sums[row] += _random_signs(identifier)
    return _unit_rows(sums)


@functools.lru_cache(maxsize=1 << 16)
def _random_signs(feature: str) -> npt.NDArray[np.float64]:
    digest = hashlib.blake2b(feature.encode(), digest_size=_IDENTIFIER_DIMENSIONS // 8).digest()
    signs = np.unpackbits(np.frombuffer(digest, dtype=np.uint8)).astype(np.float64) * 2 - 1
    signs.flags.writeable = False  # shared by every caller through the cache
    return signs


def dedupe_clusters(
    vectors: npt.NDArray[np.floating], threshold: float, *, block: int = 2048
) -> npt.NDArray[np.int64]:
    """For each row, the index of its cluster's first row (so ``result[i] <= i``).

    Two rows are linked when their cosine is at least ``threshold``; clusters are the
    connected groups (union-find), so a chain a~b~c is one cluster even if a and c differ.
    All pairs are compared, in ``block x block`` tiles: memory stays O(block**2 + n*dim)
    whatever n. Zero rows (empty texts) have cosine 0 with everything. ``block`` changes
    speed and memory only (a pair within float rounding of the threshold could flip).
    """
    matrix = np.asarray(vectors)
    if matrix.ndim != 2:
        raise ValueError(f"vectors must be a 2-d array, not shape {matrix.shape}")
    if block < 1:
        raise ValueError(f"block must be at least 1, not {block}")
    if not math.isfinite(threshold) or not np.isfinite(matrix).all():
        raise ValueError("dedupe_clusters needs a finite threshold and finite vectors")
    if len(matrix) == 0:
        return np.zeros(0, dtype=np.int64)
    unit = _unit_rows(matrix)
    nonzero = np.flatnonzero(unit.any(axis=1))
    if nonzero.size < len(unit) and threshold <= 0:
        return np.zeros(len(unit), dtype=np.int64)  # a zero row is linked to every row
    labels = np.arange(len(unit), dtype=np.int64) + len(unit)  # zero rows: singletons
    rows = unit if nonzero.size == len(unit) else unit[nonzero]
    labels[nonzero] = _components(rows, threshold, block)
    return _first_of_each(labels)


# Bit-identical unit rows have cosine 1 up to rounding (~1e-7); below this threshold they
# are certainly linked, so they are compared once, which makes exact duplicates cheap.
_COLLAPSE_BELOW = 1 - 1e-5


def _components(unit: Matrix, threshold: float, block: int) -> npt.NDArray[np.int64]:
    """A component number per row (rows all non-zero)."""
    if threshold > _COLLAPSE_BELOW:
        return _union_find(unit, threshold, block)
    firsts, inverse = _distinct_rows(unit)
    distinct = unit if len(firsts) == len(unit) else unit[firsts]
    return _union_find(distinct, threshold, block)[inverse]


def _distinct_rows(unit: Matrix) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(first row of each distinct row, the distinct number of every row).

    By a digest of each row's bytes: unlike np.unique(axis=0), no sorted copies of the
    whole matrix. A 128-bit digest makes a false match practically impossible.
    """
    seen: dict[bytes, int] = {}
    firsts: list[int] = []
    inverse = np.empty(len(unit), dtype=np.int64)
    for index, row in enumerate(unit):
        key = hashlib.blake2b(row.tobytes(), digest_size=16).digest()
        number = seen.setdefault(key, len(seen))
        if number == len(firsts):
            firsts.append(index)
        inverse[index] = number
    return np.asarray(firsts, dtype=np.int64), inverse


def _union_find(unit: Matrix, threshold: float, block: int) -> npt.NDArray[np.int64]:
    parent = np.arange(len(unit), dtype=np.int64)
    for rows, columns in _linked_pairs(unit, threshold, block):
        _union(parent, rows, columns)
    return _find(parent, np.arange(len(unit), dtype=np.int64))


def _linked_pairs(
    unit: Matrix, threshold: float, block: int
) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    """Every pair (i, j), i <= j, with cosine >= threshold, one tile at a time."""
    for top in range(0, len(unit), block):
        left = unit[top : top + block]
        for side in range(top, len(unit), block):  # upper triangle: each pair once
            similar = left @ unit[side : side + block].T >= threshold
            rows, columns = np.nonzero(similar)
            if rows.size:
                yield rows.astype(np.int64) + top, columns.astype(np.int64) + side


def _find(parent: npt.NDArray[np.int64], nodes: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    roots = parent[nodes]
    while True:
        above = parent[roots]
        if np.array_equal(above, roots):
            break
        roots = above
    parent[nodes] = roots  # path compression
    return roots


def _union(
    parent: npt.NDArray[np.int64], left: npt.NDArray[np.int64], right: npt.NDArray[np.int64]
) -> None:
    """Link each pair's components; a root is always its component's lowest index."""
    while left.size:
        a, b = _find(parent, left), _find(parent, right)
        apart = a != b
        low, high = np.minimum(a[apart], b[apart]), np.maximum(a[apart], b[apart])
        # Several pairs may share a root: minimum.at keeps the lowest; the pairs whose
        # link lost are still apart next round and are linked then.
        np.minimum.at(parent, high, low)
        left, right = low, high


def _first_of_each(labels: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Map each row to the lowest row index carrying the same label."""
    order = np.arange(len(labels), dtype=np.int64)
    first = np.full(int(labels.max(initial=-1)) + 1, len(labels), dtype=np.int64)
    np.minimum.at(first, labels, order)
    return first[labels]
