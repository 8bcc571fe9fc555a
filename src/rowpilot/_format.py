"""Figures as rowpilot prints them: money to a tenth of a cent below $10 (a small budget,
$0.004, is never shown as $0.00), durations in the unit they read best in."""

from __future__ import annotations


def usd(value: float, places: int | None = None) -> str:
    if places is None:
        places = 2 if abs(value) >= 10 else 4
    return f"${value:,.{places}f}"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
