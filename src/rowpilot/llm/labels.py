"""The label summary: how many done rows carry each label, and their share."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rowpilot.sinks.exports import ExportRecord


@dataclass(frozen=True)
class LabelSummary:
    rows: int  # done rows counted
    counts: dict[str, int]

    def share(self, label: str) -> float:
        return self.counts[label] / self.rows if self.rows else 0.0

    def lines(self) -> list[str]:
        width = max((len(label) for label in self.counts), default=0)
        lines = [f"labels over {self.rows:,} labelled rows:"]
        lines += [
            f"  {label:<{width}}  {count:>8,}  {self.share(label):6.1%}"
            for label, count in self.counts.items()
        ]
        return lines


def split_label(label: str) -> tuple[str, str]:
    """``"name: what it means"`` -> (name, description); a bare name describes itself."""
    name, sep, description = label.partition(":")
    name = name.strip()
    return name, (" ".join(description.split()) if sep else "") or name


def label_names(labels: Sequence[str]) -> list[str]:
    """The output columns of a list of labels (each a name or ``name: description``)."""
    return [split_label(label)[0] for label in labels]


def label_summary(records: Iterable[ExportRecord], labels: Sequence[str]) -> LabelSummary:
    labels = label_names(labels)
    counts = dict.fromkeys(labels, 0)
    rows = 0
    for record in records:
        if record.status != "done" or record.output is None:
            continue
        rows += 1
        for label in labels:
            if record.output.get(label) is True:
                counts[label] += 1
    return LabelSummary(rows, counts)
