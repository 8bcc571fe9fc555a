"""Built-in tasks on the bundled local model (``local/wordllama``): embed, label, dedupe.

They are ordinary rowpilot tasks (one item per row, resumable, one registry) whose rows are
computed in groups: the scheduler hands ``batch_call`` a group of ``batch`` rows in a
worker thread (the model releases the GIL), so the event loop keeps reading rows, and the
scheduler's commit thread writing finished groups, while the model works. A process
computes one group at a time (the tokenizer uses every core); ``--workers`` is the number
of groups in flight, and with ``--executor process`` the processes computing at once. An
embedding is stored as raw float32 bytes in the run's vector file.

The model is the same for every row and every run: outputs do not depend on the batch a
row fell in, nor on the worker count (the tests compare 1 and 4 workers).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rowpilot.errors import ConfigError
from rowpilot.llm.template import PromptTemplate
from rowpilot.tasks.base import Task

if TYPE_CHECKING:
    import numpy as np

    from rowpilot.tasks.ctx import Ctx

LOCAL_PROVIDER = "local"
# One group computed at a time in a process: the tokenizer already uses every core and the
# rest holds the GIL, so two groups at once only take turns (measured: 2 workers are no
# faster than 1). Groups in flight beyond it wait here, and the next starts as one ends.
_COMPUTING = threading.Lock()


class _LocalTask(Task):
    """What the built-in local tasks share: a row's text, and the call on a group of rows.

    The scheduler calls ``batch_call`` on groups of ``rows_per_worker`` rows in its thread
    pool; ``call`` (one row, in a thread too) is for a group whose call failed.
    """

    groups_rows = True
    groups_ahead = 1  # the next group waits at _COMPUTING, not for the event loop's turn
    sizing = "grouped"
    portable = True  # CPU-bound: the model in each worker process

    def __init__(self, text_column: str, batch: int) -> None:
        self.template = PromptTemplate.column(text_column)
        self.rows_per_worker = batch

    def describe(self) -> str:
        from rowpilot.local_model.model import MODEL

        return f"local model {LOCAL_PROVIDER}/{MODEL}"

    def check_columns(self, columns: Sequence[str]) -> None:
        self.template.check(list(columns))

    def check_estimable(self) -> None:
        raise ConfigError(
            "the local model costs nothing and has no rate limits to estimate",
            hint="estimates are for prompt jobs and Python tasks that call providers",
        )

    def batch_call(self, rows: list[dict[str, Any]]) -> list[Any]:
        texts = [self.template.render(row) for row in rows]
        with _COMPUTING:
            computed = self._compute(texts)
        return self._outputs(computed)

    def _compute(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def _outputs(self, computed: np.ndarray) -> list[dict[str, Any]]:
        raise NotImplementedError

    def call(self, row: dict[str, Any], ctx: Ctx) -> Any:
        # Sync: the scheduler runs it in its own pool (daemon threads, --timeout).
        return self.batch_call([row])[0]


class EmbedTask(_LocalTask):
    """``rowpilot embed``: one ``embedding`` column (a float32 vector) per row.

    With ``normalise`` (``rowpilot dedupe``) the vector is ``dedupe_vectors``': the meaning
    and the spelling of the text with case, accents and punctuation taken out.
    """

    name = "embed"
    output_fields = ("embedding",)
    vector_field = "embedding"

    def __init__(
        self, text_column: str, batch: int, *, normalise: bool, version: str | None = None
    ) -> None:
        from rowpilot.local_model.model import MODEL

        super().__init__(text_column, batch)
        self.normalise = normalise
        self.version = version or _version(
            "embed", MODEL, self.template.template, str(self.normalise)
        )

    def _compute(self, texts: list[str]) -> np.ndarray:
        from rowpilot.local_model.model import dedupe_vectors, embed_texts

        if self.normalise:  # rowpilot dedupe: meaning and spelling of the normalised text
            return dedupe_vectors(texts, batch_size=len(texts))
        return embed_texts(texts, batch_size=len(texts))

    def _outputs(self, computed: np.ndarray) -> list[dict[str, Any]]:
        from rowpilot.tasks.output import MatrixRows

        return MatrixRows("embedding", computed)


class LocalLabelTask(_LocalTask):
    """Zero-shot labels by similarity: a boolean and a score column per label."""

    name = "label"

    def __init__(
        self,
        text_column: str,
        labels: Sequence[str],
        threshold: float,
        batch: int,
        *,
        version: str | None = None,
    ) -> None:
        from rowpilot.local_model.model import MODEL, parse_labels

        super().__init__(text_column, batch)
        self.labels = parse_labels(labels)
        self.threshold = threshold
        names = [label.name for label in self.labels]
        self.output_fields = (*names, *(f"{name}_score" for name in names))
        described = [f"{label.name}:{label.description}" for label in self.labels]
        self.version = version or _version(
            "label", MODEL, self.template.template, str(self.threshold), *described
        )

    def _compute(self, texts: list[str]) -> np.ndarray:
        from rowpilot.local_model.model import embed_texts, label_scores

        return label_scores(embed_texts(texts, batch_size=len(texts)), self.labels)

    def _outputs(self, computed: np.ndarray) -> list[dict[str, Any]]:
        names = [label.name for label in self.labels]
        outputs = []
        for scores in computed.tolist():
            output: dict[str, Any] = {
                name: score >= self.threshold for name, score in zip(names, scores, strict=True)
            }
            for name, score in zip(names, scores, strict=True):
                output[f"{name}_score"] = round(score, 4)
            outputs.append(output)
        return outputs


def _version(*parts: str) -> str:
    text = "\0".join(parts)
    return "local-" + hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def local_model(model: str | None) -> bool:
    """Whether a model name is the bundled local one."""
    return model is not None and model.partition("/")[0] == LOCAL_PROVIDER


def check_local_model(model: str) -> None:
    from rowpilot.local_model.model import MODEL

    if model != f"{LOCAL_PROVIDER}/{MODEL}":
        raise ConfigError(
            f"unknown local model {model!r}", hint=f"the bundled one is {LOCAL_PROVIDER}/{MODEL}"
        )
