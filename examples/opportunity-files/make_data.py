"""Write the synthetic opportunities: data/OPP-NNN/*.txt and the manifest opportunities.jsonl.

30 opportunities in six themes, each with 2-5 short text files (an RFP, contacts, meeting
notes, pricing, an email). Every file opens with the organisations it concerns, then talks
about the opportunity's theme, a person and a place. No third-party text; deterministic:
`python make_data.py` rewrites the same files.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

ORGANISATIONS = [
    "Globex",
    "Initech",
    "Hooli",
    "Contoso",
    "Fabrikam",
    "Northwind",
    "Umbrella",
    "Vandelay",
    "Tyrell",
    "Cyberdyne",
    "Soylent",
    "Wonka",
    "Acme",
    "Oscorp",
    "Monarch",
    "Litware",
    "Adatum",
    "Proseware",
]
PEOPLE = [
    "Maria Lopez",
    "Ken Adams",
    "Priya Natarajan",
    "Tom Okafor",
    "Lena Fischer",
    "Sam Whitfield",
    "Aiko Tanaka",
    "Rafael Costa",
]
PLACES = ["Fresno", "Tacoma", "Dayton", "Boise", "Savannah", "Tulsa", "Reno", "Albany"]
# theme -> (title, description, sentences the files draw from)
THEMES: dict[str, tuple[str, str, list[str]]] = {
    "fleet": (
        "Electric bus fleet for {place} transit",
        "Replace diesel buses with battery electric buses and build a charging depot.",
        [
            "the transit agency wants forty battery electric buses delivered in two phases",
            "the charging depot needs twelve overnight chargers and a grid upgrade",
            "bus range in winter and charger uptime are the main concerns of the fleet team",
        ],
    ),
    "hospital": (
        "Patient records system for {place} General Hospital",
        "Migrate the hospital's electronic health records to a new clinical system.",
        [
            "the hospital must migrate ten years of patient records without downtime",
            "nurses asked for faster charting and fewer clicks in the clinical system",
            "the records migration has to meet privacy audits before go-live",
        ],
    ),
    "school": (
        "Elementary school expansion in {place}",
        "Build eight new classrooms, a gym and a library wing for a growing school district.",
        [
            "the school district needs eight classrooms ready before the autumn term",
            "the new gym and library wing must be built while pupils stay on site",
            "construction of the classrooms is phased around the school calendar",
        ],
    ),
    "water": (
        "Water treatment plant retrofit for {place}",
        "Upgrade filtration, pumps and disinfection at the city's drinking water plant.",
        [
            "the water plant needs new membrane filtration and two replacement pumps",
            "disinfection by ultraviolet light will replace most chlorine dosing at the plant",
            "drinking water supply must continue while the treatment trains are retrofitted",
        ],
    ),
    "broadband": (
        "Rural broadband rollout around {place}",
        "Lay fiber and raise wireless towers to bring internet to rural households.",
        [
            "the county wants fiber to reach four thousand rural households",
            "wireless towers will cover the farms the fiber cannot reach economically",
            "broadband subscribers need one gigabit service at an affordable monthly price",
        ],
    ),
    "solar": (
        "Municipal solar array for {place}",
        "Install solar panels, inverters and battery storage on city land and rooftops.",
        [
            "the city plans five megawatts of solar panels on landfill land and rooftops",
            "inverters and battery storage must smooth the solar output for the grid",
            "the solar array should cut the municipal electricity bill by a third",
        ],
    ),
}
FILE_KINDS = {
    "rfp.txt": "request for proposal",
    "contacts.txt": "contact list",
    "meeting-notes.txt": "meeting notes",
    "pricing.txt": "pricing sheet",
    "email.txt": "email thread",
}
PER_THEME = 5


def opportunity_files(rng: random.Random, theme: str, place: str) -> dict[str, str]:
    """2-5 files; each opens with three of the opportunity's 3-5 organisations."""
    parties = rng.sample(ORGANISATIONS, rng.randint(3, 5))
    kinds = rng.sample(sorted(FILE_KINDS), rng.randint(2, 5))
    sentences = THEMES[theme][2]
    files = {}
    for kind in sorted(kinds):
        three = rng.sample(parties, 3)
        person = rng.choice(PEOPLE)
        lead = rng.choice(sentences)
        files[kind] = (
            f"{three[0]}, {three[1]}, {three[2]}: {FILE_KINDS[kind]} for the {place} project.\n"
            f"In short, {lead}.\n"
            f"{person} leads it for {three[0]} and will visit {place} next month.\n"
        )
    return files


def write_data(root: Path = HERE, seed: int = 1) -> list[dict[str, Any]]:
    """Write root/data/ and root/opportunities.jsonl; return the manifest rows."""
    rng = random.Random(seed)
    data = root / "data"
    if data.exists():
        shutil.rmtree(data)
    rows: list[dict[str, Any]] = []
    for number, (theme, index) in enumerate(
        ((theme, index) for index in range(PER_THEME) for theme in THEMES), start=1
    ):
        place = PLACES[(number * 3 + index) % len(PLACES)]
        title, description, _ = THEMES[theme]
        opportunity = f"OPP-{number:03d}"
        folder = data / opportunity
        folder.mkdir(parents=True)
        names = []
        for name, text in opportunity_files(rng, theme, place).items():
            (folder / name).write_text(text, encoding="utf-8")
            names.append(f"{opportunity}/{name}")
        rows.append(
            {
                "id": opportunity,
                "theme": theme,
                "title": title.format(place=place),
                "description": description,
                "files": names,  # relative to data/; the task reads them
            }
        )
    with (root / "opportunities.jsonl").open("w", encoding="utf-8") as manifest:
        for row in rows:
            manifest.write(json.dumps(row) + "\n")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rows = write_data(HERE, args.seed)
    files = sum(len(row["files"]) for row in rows)
    print(f"wrote {len(rows)} opportunities with {files} files to {HERE / 'data'}")


if __name__ == "__main__":
    main()
