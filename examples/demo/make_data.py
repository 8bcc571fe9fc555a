"""Generate reviews.csv, the demo's sample data: synthetic product reviews (no third-party text).

Run from this folder: python make_data.py. The output is deterministic.
"""

from __future__ import annotations

import csv
import random

PRODUCTS = [
    "kettle",
    "headphones",
    "backpack",
    "desk lamp",
    "running shoes",
    "coffee grinder",
    "phone case",
    "blender",
    "office chair",
    "water bottle",
]
OPENERS = {
    "positive": [
        "Really happy with this {p}.",
        "Great {p}, would buy again.",
        "This {p} exceeded my expectations.",
        "Excellent {p} for the price.",
    ],
    "negative": [
        "Disappointed with this {p}.",
        "The {p} broke after a week.",
        "Would not recommend this {p}.",
        "Poor quality {p}, sent it back.",
    ],
    "mixed": [
        "The {p} is fine, nothing special.",
        "Decent {p} but a few flaws.",
        "Mixed feelings about this {p}.",
    ],
}
DETAILS = [
    "Delivery was fast.",
    "Shipping took far too long.",
    "The packaging was damaged.",
    "Customer service was helpful.",
    "It feels sturdy.",
    "It is lighter than expected.",
    "The colour is different from the photos.",
    "Battery life is great.",
    "Instructions were confusing.",
    "Works exactly as described.",
    "Too noisy for me.",
    "Easy to clean.",
]


def review(rng: random.Random) -> tuple[str, str, int]:
    tone = rng.choice(list(OPENERS))
    product = rng.choice(PRODUCTS)
    text = " ".join(
        [rng.choice(OPENERS[tone]).format(p=product), *rng.sample(DETAILS, rng.randint(1, 3))]
    )
    stars = {"positive": rng.randint(4, 5), "negative": rng.randint(1, 2), "mixed": 3}[tone]
    return product, text, stars


def main(rows: int = 5000) -> None:
    rng = random.Random(20261123)
    with open("reviews.csv", "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["review_id", "product", "stars", "text"])
        for number in range(rows):
            product, text, stars = review(rng)
            writer.writerow([f"R{number:05d}", product, stars, text])


if __name__ == "__main__":
    main()
