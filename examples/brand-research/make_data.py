"""Write brands.csv, the example's input: synthetic brands (invented names, no real data).

    python make_data.py            # the 40 brands shipped in this folder
    python make_data.py --count 500 --out /tmp/brands-500.csv

The output is deterministic: the same count always gives the same rows, and the first N
rows of a larger file are the N rows of a smaller one.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
COLUMNS = ("brand_id", "name", "sector", "city", "founded")
# Invented names: a given name and a product word, so no row describes a real company.
NAMES = (
    "Arvin", "Kaveh", "Nilufar", "Simorgh", "Taravat", "Zarin", "Sahand", "Mahtab", "Baran",
    "Darya", "Kimia", "Roshan", "Setareh", "Parsa", "Yasaman", "Armin", "Golnar", "Behrouz",
    "Nava", "Tirgan", "Afsoon", "Bahar", "Donya", "Elham", "Farzin", "Homa", "Iraj", "Jaleh",
)  # fmt: skip
PRODUCTS = {
    "food": ("Tea", "Saffron", "Dairy", "Biscuits", "Pistachio", "Dates"),
    "fashion": ("Textiles", "Shoes", "Knitwear", "Leather"),
    "tech": ("Electronics", "Software", "Mobile", "Robotics"),
    "beauty": ("Cosmetics", "Skincare", "Perfumes"),
    "home": ("Carpets", "Kitchenware", "Furniture", "Ceramics"),
    "finance": ("Bank", "Insurance", "Pay"),
    "travel": ("Air", "Tours", "Hotels"),
}
CITIES = ("Tehran", "Isfahan", "Shiraz", "Tabriz", "Mashhad", "Rasht", "Yazd", "Kerman")


def brands(count: int) -> list[dict[str, str]]:
    rng = random.Random(4)  # seed 004
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    while len(rows) < count:
        sector = rng.choice(sorted(PRODUCTS))
        name = f"{rng.choice(NAMES)} {rng.choice(PRODUCTS[sector])}"
        if name in seen:  # a name twice would be one brand; number the later ones
            name = f"{name} {sum(1 for n in seen if n.startswith(name)) + 1}"
        seen.add(name)
        rows.append(
            {
                "brand_id": f"B{len(rows) + 1:04d}",
                "name": name,
                "sector": sector,
                "city": rng.choice(CITIES),
                "founded": str(rng.randint(1955, 2022)),
            }
        )
    return rows


def write_brands(path: Path, count: int) -> Path:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(brands(count))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--out", type=Path, default=HERE / "brands.csv")
    args = parser.parse_args()
    print(f"{write_brands(args.out, args.count)}: {args.count} brands")


if __name__ == "__main__":
    main()
