"""Built-in tasks on the bundled local model (``local/wordllama``): embed, label, dedupe.

They are ordinary rowpilot tasks (one item per row, resumable, one registry) whose rows are
computed in batches: each row's coroutine hands its text to a ``ComputeBatcher``, which
gathers up to ``batch`` texts (or what arrived within ``LINGER`` seconds) and runs the
model on them in a worker thread, so the event loop keeps committing while the model
works. ``--workers`` is the number of batches computed at once.

The model is the same for every row and every run: outputs do not depend on the batch a
row fell in, nor on the worker count (the tests compare 1 and 4 workers).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rowpilot._prompt import PromptTemplate
from rowpilot.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

LINGER = 0.005  # seconds a partial batch waits for more rows
LOCAL_PROVIDER = "local"


@dataclass
class ComputeBatcher:
    """Batches rows' texts for a CPU-bound function run in a thread pool."""

    compute: Callable[[list[str]], np.ndarray]
    batch: int
    workers: int
    _pending: list[tuple[str, asyncio.Future[Any]]] = field(default_factory=list)
    _timer: asyncio.TimerHandle | None = None
    _pool: ThreadPoolExecutor | None = None
    _running: set[asyncio.Task[None]] = field(default_factory=set)
    _slots: asyncio.Semaphore | None = None

    async def submit(self, text: str) -> Any:
        """The row's result: its line of the computed array."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((text, future))
        if len(self._pending) >= self.batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(LINGER, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        entries = [(text, future) for text, future in self._pending if not future.done()]
        self._pending = []
        if entries:
            task = asyncio.create_task(self._run(entries))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, entries: list[tuple[str, asyncio.Future[Any]]]) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="rowpilot-local")
            self._slots = asyncio.Semaphore(self.workers)
        assert self._slots is not None
        texts = [text for text, _ in entries]
        try:
            async with self._slots:
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self._pool, self.compute, texts)
        except Exception as error:  # each row of the batch fails with it
            for _, future in entries:
                if not future.done():
                    future.set_exception(error)
            return
        for index, (_, future) in enumerate(entries):
            if not future.done():
                future.set_result(result[index])

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in self._running:
            task.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class _LocalTask:
    """What the built-in local tasks share: the text of a row, and the batcher."""

    def __init__(self, text_column: str, batch: int, workers: int) -> None:
        self.template = PromptTemplate.column(text_column)
        self.batch = batch
        self.workers = workers
        self._batcher: ComputeBatcher | None = None

    @property
    def rows_per_worker(self) -> int:
        return self.batch

    def _compute(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def text_of(self, row: dict[str, Any]) -> str:
        return self.template.render(row)

    async def vector_of(self, row: dict[str, Any]) -> Any:
        if self._batcher is None:
            self._batcher = ComputeBatcher(self._compute, self.batch, self.workers)
        return await self._batcher.submit(self.text_of(row))

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
            self._batcher = None


class EmbedTask(_LocalTask):
    """``rowpilot embed``: one ``embedding`` column (a float32 vector) per row.

    With ``normalise`` (``rowpilot dedupe``) the vector is ``dedupe_vectors``': the meaning
    and the spelling of the text with case, accents and punctuation taken out.
    """

    __qualname__ = "embed"

    def __init__(self, text_column: str, batch: int, workers: int, *, normalise: bool) -> None:
        super().__init__(text_column, batch, workers)
        self.normalise = normalise

    def version(self) -> str:
        from rowpilot._local import MODEL

        return _version("embed", MODEL, self.template.template, str(self.normalise))

    def _compute(self, texts: list[str]) -> np.ndarray:
        from rowpilot._local import dedupe_vectors, embed_texts

        if self.normalise:  # rowpilot dedupe: meaning and spelling of the normalised text
            return dedupe_vectors(texts, batch_size=len(texts))
        return embed_texts(texts, batch_size=len(texts))

    async def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"embedding": await self.vector_of(row)}


class LocalLabelTask(_LocalTask):
    """Zero-shot labels by similarity: a boolean and a score column per label."""

    __qualname__ = "label"

    def __init__(
        self, text_column: str, labels: Sequence[str], threshold: float, batch: int, workers: int
    ) -> None:
        from rowpilot._local import parse_labels

        super().__init__(text_column, batch, workers)
        self.labels = parse_labels(labels)
        self.threshold = threshold

    def version(self) -> str:
        from rowpilot._local import MODEL

        described = [f"{label.name}:{label.description}" for label in self.labels]
        return _version("label", MODEL, self.template.template, str(self.threshold), *described)

    def _compute(self, texts: list[str]) -> np.ndarray:
        from rowpilot._local import embed_texts, label_scores

        return label_scores(embed_texts(texts, batch_size=len(texts)), self.labels)

    async def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        scores = await self.vector_of(row)
        output: dict[str, Any] = {}
        for label, score in zip(self.labels, scores.tolist(), strict=True):
            output[label.name] = score >= self.threshold
        for label, score in zip(self.labels, scores.tolist(), strict=True):
            output[f"{label.name}_score"] = round(score, 4)
        return output


def _version(*parts: str) -> str:
    text = "\0".join(parts)
    return "local-" + hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def local_model(model: str | None) -> bool:
    """Whether a model name is the bundled local one."""
    return model is not None and model.partition("/")[0] == LOCAL_PROVIDER


def check_local_model(model: str) -> None:
    from rowpilot._local import MODEL

    if model != f"{LOCAL_PROVIDER}/{MODEL}":
        raise ConfigError(
            f"unknown local model {model!r}", hint=f"the bundled one is {LOCAL_PROVIDER}/{MODEL}"
        )
