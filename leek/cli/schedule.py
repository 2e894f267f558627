"""`leek schedule`: the periodic tasks, their schedule and their next run.

Reads the PeriodicTask rows (no broker needed). Entries of LEEK["SCHEDULE"]
that no broker has synced yet are listed too, as "at broker start".
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .output import OK, emit

if TYPE_CHECKING:
    from ..models import PeriodicTask


def _local(value: datetime | None) -> str | None:
    from django.utils import timezone

    if value is None:
        return None
    return timezone.localtime(value).isoformat(" ", "seconds")


def _synced(task: PeriodicTask) -> dict[str, Any]:
    """A PeriodicTask row; a row no broker has timed yet shows the run a broker will set."""
    from datetime import UTC

    from ..schedules import ENTRY_KEYS, Schedule

    try:
        schedule: Schedule | None = Schedule.parse(task.cron, task.every)
        error = ""
    except ValueError as exc:
        schedule, error = None, str(exc)
    next_run = task.next_run_at
    if next_run is None and task.enabled and schedule is not None:
        ts = schedule.after(time.time())
        next_run = None if ts is None else datetime.fromtimestamp(ts, UTC)
    return {
        "name": task.name,
        **{key: getattr(task, key) for key in sorted(ENTRY_KEYS)},
        "schedule": schedule.describe() if schedule else f"invalid: {error}",
        "from_settings": task.from_settings,
        "synced": True,
        "next_run_at": _local(next_run) if task.enabled else None,
        "last_run_at": _local(task.last_run_at),
    }


def _unsynced(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """A LEEK["SCHEDULE"] entry (checked by parse_entries) that has no row yet."""
    from ..schedules import ENTRY_KEYS, Schedule

    return {
        "name": name,
        **{key: values[key] for key in sorted(ENTRY_KEYS)},
        "schedule": Schedule.parse(values["cron"], values["every"]).describe(),
        "from_settings": True,
        "synced": False,
        "next_run_at": None,
        "last_run_at": None,
    }


def rows() -> list[dict[str, Any]]:
    """One dict per periodic task: the rows, then the settings entries not synced yet."""
    from .. import conf
    from ..models import PeriodicTask
    from ..schedules import parse_entries

    found = [_synced(task) for task in PeriodicTask.objects.order_by("name")]
    known = {row["name"] for row in found}
    entries, _ = parse_entries(conf.get("SCHEDULE") or {})
    found += [
        _unsynced(name, values) for name, values in sorted(entries.items()) if name not in known
    ]
    return found


def _line(row: dict[str, Any]) -> list[str]:
    if not row["enabled"]:
        nxt = "disabled"
    elif not row["synced"]:
        nxt = "at broker start"
    else:
        nxt = row["next_run_at"] or "never"
    return [row["name"], row["schedule"], row["task"], nxt, row["last_run_at"] or "-"]


def _table(lines: list[list[str]]) -> str:
    """The lines as text columns, each as wide as its widest cell."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    padded = ("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines)
    return "\n".join(line.rstrip() for line in padded)


def run_schedule(options: argparse.Namespace) -> int:
    """Print the periodic tasks as a table (or JSON with --json), in TIME_ZONE."""
    from django.utils import timezone

    found = rows()
    zone = timezone.get_current_timezone_name()
    if not found:
        empty = 'no periodic tasks: declare them in LEEK["SCHEDULE"] or in the admin'
        emit(options, empty, {"ok": True, "time_zone": zone, "tasks": []})
        return OK
    header = ["NAME", "SCHEDULE", "TASK", f"NEXT RUN ({zone})", "LAST RUN"]
    text = _table([header, *(_line(row) for row in found)])
    emit(options, text, {"ok": True, "time_zone": zone, "tasks": found})
    return OK
