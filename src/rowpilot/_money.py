"""Amounts of money as rowpilot prints them: cents for $10 and more, tenths of a cent
below, so a small budget ($0.004) is never shown as $0.00."""

from __future__ import annotations


def usd(value: float, places: int | None = None) -> str:
    if places is None:
        places = 2 if abs(value) >= 10 else 4
    return f"${value:,.{places}f}"
