"""Write diseases.csv: synthetic diseases keyed by UMLS-like CUIs (C0000001, C0000002, ...).

The names are made up from qualifiers, body sites and kinds of disorder (no UMLS text is
used or needed). The output is deterministic for a given count and seed, so the file is
generated on the fly instead of committed: `python make_data.py [--count 15000]`.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

QUALIFIERS = [
    "Acute",
    "Chronic",
    "Congenital",
    "Familial",
    "Juvenile",
    "Hereditary",
    "Idiopathic",
    "Primary",
    "Secondary",
    "Autoimmune",
    "Recurrent",
    "Progressive",
    "Adult-onset",
    "Early-onset",
    "Late-onset",
    "Neonatal",
    "Benign",
    "Malignant",
    "Drug-induced",
    "Post-infectious",
]
SITES = [
    "renal",
    "hepatic",
    "cardiac",
    "pulmonary",
    "pancreatic",
    "thyroid",
    "adrenal",
    "ocular",
    "cutaneous",
    "gastric",
    "colonic",
    "biliary",
    "cerebral",
    "spinal",
    "muscular",
    "skeletal",
    "vascular",
    "lymphatic",
    "ovarian",
    "prostatic",
    "bladder",
    "retinal",
    "cochlear",
    "esophageal",
    "intestinal",
    "myocardial",
    "bronchial",
    "synovial",
    "marrow",
    "pituitary",
]
KINDS = [
    "carcinoma",
    "fibrosis",
    "insufficiency",
    "dysplasia",
    "neuropathy",
    "syndrome",
    "inflammation",
    "atrophy",
    "hypertrophy",
    "stenosis",
    "infection",
    "abscess",
    "cyst",
    "lymphoma",
    "sarcoma",
    "degeneration",
    "hemorrhage",
    "ischemia",
    "calcification",
    "aplasia",
    "adenoma",
    "ulceration",
    "sclerosis",
    "amyloidosis",
    "edema",
]
# 20 x 30 x 25 = 15,000 distinct names; past that a "type N" suffix keeps names unique.
COMBINATIONS = len(QUALIFIERS) * len(SITES) * len(KINDS)


def disease_names(count: int, seed: int = 15162) -> list[str]:
    """``count`` distinct disease names in a shuffled (seeded) order."""
    base = [f"{q} {s} {k}" for q, s, k in itertools.product(QUALIFIERS, SITES, KINDS)]
    random.Random(seed).shuffle(base)
    names: list[str] = []
    for round_ in itertools.count(1):
        suffix = "" if round_ == 1 else f" type {round_}"
        names.extend(name + suffix for name in base[: count - len(names)])
        if len(names) >= count:
            return names
    raise AssertionError("unreachable")


def write_diseases(path: Path, count: int, seed: int = 15162) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cui", "name"])
        for number, name in enumerate(disease_names(count, seed), start=1):
            writer.writerow([f"C{number:07d}", name])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=15_000, help="rows to write [15000]")
    parser.add_argument("--seed", type=int, default=15162)
    parser.add_argument("--out", type=Path, default=HERE / "diseases.csv")
    args = parser.parse_args()
    write_diseases(args.out, args.count, args.seed)
    print(f"wrote {args.count:,} diseases to {args.out}")


if __name__ == "__main__":
    main()
