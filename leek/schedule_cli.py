"""`leek schedule`: the periodic tasks, their schedule and their next run.

Reads the PeriodicTask rows (no broker needed). Entries of LEEK["SCHEDULE"]
that no broker has synced yet are listed too, as "at broker start".
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from typing import Any

from .cli import OK, emit


def _local(value: datetime | None) -> str | None:
    from django.utils import timezone

    if value is None:
        return None
    return timezone.localtime(value).isoformat(" ", "seconds")


def rows() -> list[dict[str, Any]]:
    """One dict per periodic task: the rows, then the settings entries not synced yet."""
    from datetime import UTC

    from . import conf
    from .models import PeriodicTask
    from .schedules import Schedule, parse_entries

    found: list[dict[str, Any]] = []
    for task in PeriodicTask.objects.order_by("name"):
        try:
            schedule: Schedule | None = Schedule.parse(task.cron, task.every)
            error = ""
        except ValueError as exc:
            schedule, error = None, str(exc)
        next_run = task.next_run_at
        if next_run is None and task.enabled and schedule is not None:
            ts = schedule.after(time.time())  # what a broker will set
            next_run = None if ts is None else datetime.fromtimestamp(ts, UTC)
        found.append({
            "name": task.name, "task": task.task, "args": task.args, "kwargs": task.kwargs,
            "schedule": schedule.describe() if schedule else f"invalid: {error}",
            "cron": task.cron, "every": task.every, "queue": task.queue,
            "priority": task.priority, "enabled": task.enabled, "catch_up": task.catch_up,
            "from_settings": task.from_settings, "synced": True,
            "next_run_at": _local(next_run) if task.enabled else None,
            "last_run_at": _local(task.last_run_at),
        })  # fmt: skip
    known = {row["name"] for row in found}
    entries, _ = parse_entries(conf.get("SCHEDULE") or {})
    for name, values in sorted(entries.items()):
        if name in known:
            continue
        schedule = Schedule.parse(values["cron"], values["every"])
        found.append({
            "name": name, "task": values["task"], "args": values["args"],
            "kwargs": values["kwargs"], "schedule": schedule.describe(), "cron": values["cron"],
            "every": values["every"], "queue": values["queue"], "priority": values["priority"],
            "enabled": values["enabled"], "catch_up": values["catch_up"], "from_settings": True,
            "synced": False, "next_run_at": None, "last_run_at": None,
        })  # fmt: skip
    return found


def _line(row: dict[str, Any]) -> list[str]:
    if not row["enabled"]:
        nxt = "disabled"
    elif not row["synced"]:
        nxt = "at broker start"
    else:
        nxt = row["next_run_at"] or "never"
    return [row["name"], row["schedule"], row["task"], nxt, row["last_run_at"] or "-"]


def run_schedule(options: argparse.Namespace) -> int:
    from django.utils import timezone

    found = rows()
    zone = timezone.get_current_timezone_name()
    if not found:
        emit(options, 'no periodic tasks: declare them in LEEK["SCHEDULE"] or in the admin',
             {"ok": True, "time_zone": zone, "tasks": []})  # fmt: skip
        return OK
    table = [["NAME", "SCHEDULE", "TASK", f"NEXT RUN ({zone})", "LAST RUN"]]
    table += [_line(row) for row in found]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in table)  # fmt: skip
    emit(options, text, {"ok": True, "time_zone": zone, "tasks": found})
    return OK
