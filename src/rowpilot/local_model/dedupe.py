"""Near-duplicate clusters: embed every row's normalised text, then group close rows.

The embeddings come from an ordinary rowpilot run (durable, resumable: a re-run embeds
nothing again); the grouping needs every vector at once, so it runs after, over the
registry's done rows in source order. Each row gets the cluster's canonical key (the key
of its first row in source order) and a cluster number (0, 1, ... in order of first row).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rowpilot.sinks.exports import neutralise_cell, table_format
from rowpilot.state.registry import Registry

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class DedupeReport:
    rows: int
    clusters: int
    duplicated_rows: int  # rows in a cluster of two or more
    largest: int

    def lines(self) -> list[str]:
        return [
            f"{self.rows:,} rows in {self.clusters:,} clusters; {self.duplicated_rows:,} rows "
            f"have a near-duplicate (the largest cluster holds {self.largest:,})"
        ]


def clusters_table(state: Path, threshold: float) -> tuple[pd.DataFrame, DedupeReport]:
    """The input rows with ``cluster`` and ``canonical_key`` columns, from a done embed run."""
    import numpy as np
    import pandas as pd

    from rowpilot.local_model.model import dedupe_clusters

    registry = Registry(state)
    try:
        columns = registry.input_columns()
        keys: list[str] = []
        inputs: list[dict[str, Any]] = []
        vectors: list[np.ndarray] = []
        for record in registry.records(status="done"):
            keys.append(record.key)
            inputs.append(record.input)
            vectors.append((record.output or {})["embedding"])
    finally:
        registry.close()
    matrix = np.vstack(vectors) if vectors else np.zeros((0, 1), dtype=np.float32)
    canonical = dedupe_clusters(matrix, threshold)
    numbers: dict[int, int] = {}
    cluster = [numbers.setdefault(int(first), len(numbers)) for first in canonical]
    frame = pd.DataFrame(inputs, columns=pd.Index(columns, dtype=object), dtype=object)
    frame["cluster"] = cluster
    frame["canonical_key"] = [keys[int(first)] for first in canonical]
    sizes = np.bincount(np.asarray(cluster, dtype=np.int64)) if cluster else np.zeros(0, int)
    report = DedupeReport(
        rows=len(keys),
        clusters=len(numbers),
        duplicated_rows=int(sizes[sizes > 1].sum()),
        largest=int(sizes.max()) if len(sizes) else 0,
    )
    return frame, report


def _guarded(value: Any) -> Any:
    return neutralise_cell(value) if isinstance(value, str) else value


def write_frame(frame: pd.DataFrame, path: Path) -> None:
    """A DataFrame to CSV, JSONL, Parquet or Excel by the file's suffix, atomically."""
    from rowpilot.sinks.atomic import atomic_write

    kind = table_format(path)
    if kind == "csv":
        # Spreadsheets run formulas: every cell and header gets the exports' guard.
        guarded = frame.apply(lambda column: column.map(_guarded))
        guarded.columns = [neutralise_cell(str(name)) for name in frame.columns]
        with atomic_write(path, "w", newline="") as handle:
            guarded.to_csv(handle, index=False)
    elif kind == "jsonl":
        with atomic_write(path, "w", newline="\n") as handle:
            frame.to_json(handle, orient="records", lines=True, force_ascii=False)
    elif kind == "xlsx":
        from rowpilot.sinks.excel import write_workbook

        rows = ((None, row) for row in frame.itertuples(index=False, name=None))
        write_workbook(path, [str(name) for name in frame.columns], rows)
    else:
        with atomic_write(path, "wb") as handle:
            frame.to_parquet(handle, index=False)
