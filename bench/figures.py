"""A run's results as every table reads them (bench/report.py, bench/targets.py)."""

from __future__ import annotations

from typing import Any

#: A table: its head, then its rows, each a cell a column.
Table = tuple[list[str], list[list[str]]]

#: leek's variant -> its database's floors in results["machine"]["floors"] (bench/floors.py)
FLOOR_KEYS = {
    "leek-sqlite-normal": "sqlite_normal",
    "leek-sqlite-full": "sqlite_full",
    "leek-pg": "pg",
    "leek-sqlite-normal-processes": "sqlite_normal",
    "leek-pg-processes": "pg",
}


def measured(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The systems of the run that have figures."""
    return [d for d in results["systems"] if d.get("figures")]


def median(doc: dict[str, Any], figure: str) -> float | None:
    """A system's median of `figure`; None when it was not measured."""
    found = doc.get("figures", {}).get(figure)
    return float(found["median"]) if found else None


def floors_of(results: dict[str, Any], system: str) -> dict[str, Any]:
    """The floors of the database a leek variant writes to; empty when not measured."""
    floors = results["machine"].get("floors") or {}
    found: dict[str, Any] = floors.get(FLOOR_KEYS.get(system, ""), {})
    return found


def group_floor(group: dict[str, float] | None, clients: str) -> float | None:
    """The group floor's `clients` ("one" or "four"), the faster of the ways
    leek may take: sleeping, or polling for up to SPIN first (bench/floors.py's
    GROUP_WAYS). Results from before that way was measured have the way that
    polls without bound instead."""
    if not group:
        return None
    bounded = group.get(f"{clients}_spin_per_s", group[f"{clients}_polling_per_s"])
    return max(group[f"{clients}_per_s"], bounded)


def share(part: float, whole: float | None) -> str:
    """`part` of `whole` as a percentage; empty without a whole."""
    return "" if not whole else f"{part / whole:.0%}"


def rate(value: float | None) -> str:
    """A rate a second, with its thousands; empty when not measured."""
    return "" if value is None else f"{value:,.0f}"
