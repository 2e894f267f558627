"""Schedules of periodic tasks: cron expressions and intervals, and LEEK["SCHEDULE"].

`Schedule` checks a cron expression (or a shorthand such as ``hourly``) or an
interval, and gives the next run after a moment; cron is read in Django's
TIME_ZONE, with cronsim, which handles DST as cron does. `parse_entries`
checks the entries of ``LEEK["SCHEDULE"]`` and turns them into PeriodicTask
row values. periodic.py keeps the rows' times right and pushes the runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

#: Cron shorthands accepted in "cron".
SHORTHANDS = {
    "hourly": "0 * * * *",
    "daily": "0 0 * * *",
    "weekly": "0 0 * * 0",
    "monthly": "0 0 1 * *",
}
ENTRY_KEYS = {"task", "cron", "every", "args", "kwargs", "queue", "priority", "catch_up", "enabled"}


def zone() -> tzinfo:
    """Django's TIME_ZONE, in which cron expressions are read."""
    from django.conf import settings

    name = settings.TIME_ZONE or "UTC"
    return UTC if name == "UTC" else ZoneInfo(name)


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a periodic task runs: a cron expression or a fixed interval in seconds."""

    cron: str = ""
    every: float | None = None

    @classmethod
    def parse(cls, cron: str | None, every: float | timedelta | None) -> Schedule:
        """A checked schedule; ValueError says what is wrong with it."""
        cron = (cron or "").strip()
        if isinstance(every, timedelta):
            every = every.total_seconds()
        if cron and every is not None:
            raise ValueError(f"give cron or every, not both (cron={cron!r}, every={every!r})")
        if every is not None:
            if isinstance(every, bool) or not isinstance(every, int | float) or every <= 0:
                raise ValueError(
                    f"every must be a timedelta or a number of seconds greater than "
                    f"zero, got {every!r}"
                )
            return cls(every=float(every))
        if not cron:
            raise ValueError("a schedule needs cron (an expression, hourly or daily) or every")
        expression = SHORTHANDS.get(cron.lower(), cron)
        try:
            CronSim(expression, datetime.now(UTC))
        except CronSimError as exc:
            raise ValueError(f"cron {cron!r} is not a valid cron expression: {exc}") from exc
        return cls(cron=cron)

    def after(self, moment: float, anchor: float | None = None) -> float | None:
        """The first run time strictly after `moment` (seconds since the epoch),
        on the interval's phase set by `anchor` when given; None for never."""
        if self.every is not None:
            if anchor is None:
                return moment + self.every
            steps = max(1, math.floor((moment - anchor) / self.every) + 1)
            return anchor + steps * self.every
        expression = SHORTHANDS.get(self.cron.lower(), self.cron)
        try:
            return next(CronSim(expression, datetime.fromtimestamp(moment, zone()))).timestamp()
        except StopIteration:
            return None

    def describe(self) -> str:
        if self.every is not None:
            return f"every {self.every:g} s"
        return self.cron


def parse_entries(schedule: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The valid LEEK["SCHEDULE"] entries as row values, and a message per invalid one."""
    entries: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    if not isinstance(schedule, Mapping):
        kind = type(schedule).__name__
        return {}, [f'LEEK["SCHEDULE"] must be a dict of name to entry, got {kind}']
    for name, entry in schedule.items():
        try:
            entries[str(name)] = _entry(str(name), entry)
        except (ValueError, TypeError) as exc:
            errors.append(f"periodic task {name!r}: {exc}")
    return entries, errors


def _entry(name: str, entry: Any) -> dict[str, Any]:
    if not isinstance(entry, Mapping):
        raise TypeError(f"expected a dict with task and cron or every, got {type(entry).__name__}")
    unknown = set(entry) - ENTRY_KEYS
    if unknown:
        raise ValueError(
            f"unknown keys {', '.join(sorted(unknown))}; known: {', '.join(sorted(ENTRY_KEYS))}"
        )
    if len(name) > 255:
        raise ValueError("the name is longer than 255 characters")
    path = entry.get("task")
    if callable(path):
        path = f"{path.__module__}.{path.__qualname__}"
    if not isinstance(path, str) or "." not in path:
        raise ValueError(f"task must be the dotted path of a callable, got {path!r}")
    schedule = Schedule.parse(entry.get("cron"), entry.get("every"))
    args, kwargs = list(entry.get("args") or ()), dict(entry.get("kwargs") or {})
    json.dumps([args, kwargs])  # TypeError for values a JSONField cannot hold
    return {
        "task": path,
        "args": args,
        "kwargs": kwargs,
        "cron": schedule.cron,
        "every": schedule.every,
        "queue": str(entry.get("queue") or "default")[:64],
        "priority": int(entry.get("priority", 0)),
        "enabled": bool(entry.get("enabled", True)),
        "catch_up": bool(entry.get("catch_up", True)),
    }
