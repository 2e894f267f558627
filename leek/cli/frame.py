"""One frame of `leek top`, drawn from a Snapshot with rich.

The frame is a headline, a line for each broker that did not answer (and for
a database that failed), then four tables: brokers, queues, tasks running,
last failures. Every cell holds one line: text that does not fit its column
is cut with an ellipsis, so a frame never wraps, whatever the width. Given a
height, the running tasks and the failures share the lines the rest leaves.
Only top.py imports this module, and only once rich is known to be there.
"""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .snapshot import Snapshot

#: Lines a table takes besides its rows: its title and its header.
TABLE_LINES = 2
#: Rows shown of the running tasks, and of the failures, when the height is not known.
RUNNING_ROWS = 10
FAILURE_ROWS = 5


def span(seconds: float | None) -> str:
    """A time span in at most two units: 4s, 3m13s, 5h02m, 3d04h; "-" for none."""
    if seconds is None:
        return "-"
    total = int(max(seconds, 0.0))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600:02d}h"


def rate(per_second: float) -> str:
    return f"{per_second:.0f}" if per_second >= 100 else f"{per_second:.2f}"


def clock(at: datetime, now: datetime) -> str:
    """`at` in local time: the time of day, with the date when not today."""
    local, today = timezone.localtime(at), timezone.localtime(now)
    return local.strftime("%H:%M:%S" if local.date() == today.date() else "%m-%d %H:%M")


def cell(value: object, style: str = "") -> Text:
    """A one-line cell: cut with an ellipsis, never wrapped."""
    return Text(str(value), style=style, no_wrap=True, overflow="ellipsis")


def table(title: str, *columns: str) -> Table:
    """A table without borders; a column named with a leading ">" is a figure,
    right-aligned and kept whole, the others give up width first."""
    grid = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=None,
        pad_edge=False,
        header_style="bold",
    )
    for name in columns:
        figure = name.startswith(">")
        grid.add_column(
            name.lstrip(">"),
            justify="right" if figure else "left",
            no_wrap=figure,
            overflow="ellipsis",
        )
    return grid


def headline(snap: Snapshot, keys: str) -> RenderableType:
    """The time, the brokers answering, the totals; the keys at the right, kept whole."""
    answered = sum(1 for a in snap.answers if a.stats is not None)
    waiting = sum(q.waiting for q in snap.queues)
    per_second = sum(q.rate for q in snap.queues)
    text = cell(
        f"leek top  {clock(snap.taken_at, snap.taken_at)}  "
        f"brokers {answered}/{len(snap.answers)} answer  waiting {waiting}  "
        f"running {snap.running_total}  {rate(per_second)}/s",
        "bold",
    )
    if not keys:
        return text
    line = Table.grid(expand=True, padding=(0, 0, 0, 2))
    line.add_column(ratio=1, overflow="ellipsis")
    line.add_column(no_wrap=True, justify="right")
    line.add_row(text, Text(keys, style="dim"))
    return line


def notices(snap: Snapshot) -> list[Text]:
    """A line for each broker that did not answer or refused, and for the database."""
    found = []
    if not any(a.reachable for a in snap.answers):
        found.append(cell("no broker answers: this is the database's view", "bold red"))
    for answer in snap.answers:
        if not answer.reachable:
            found.append(cell(f"broker {answer.address} unreachable: {answer.error}", "red"))
        elif answer.stats is None:
            found.append(cell(f"broker {answer.address} refused: {answer.error}", "red"))
    if snap.database_error:
        found.append(cell(f"database unavailable: {snap.database_error}", "bold red"))
    return found


HEALTH_STYLE = {
    "ok": "green",
    "unhealthy": "bold red",
    "no answer": "bold red",
    "dead": "bold red",
    "stopped": "dim",
}


def brokers(snap: Snapshot) -> Table:
    grid = table("brokers", "broker", "address", "health", ">beat", ">workers", ">busy", "code")
    for row in snap.brokers:
        health = f"{row.health}: {row.note}" if row.note else row.health
        grid.add_row(
            cell(row.name),
            cell(row.address or "-"),
            cell(health, HEALTH_STYLE.get(row.health, "")),
            span(row.heartbeat_age),
            f"{row.alive}/{row.workers}",
            str(row.busy),
            cell(row.code_version or "-"),
        )
    return grid


def queues(snap: Snapshot) -> Table:
    grid = table("queues", "queue", ">waiting", ">later", ">running", ">/s", ">oldest")
    for row in snap.queues:
        name = cell(f"{row.name} (paused)" if row.paused else row.name)
        grid.add_row(
            name,
            str(row.waiting),
            str(row.later),
            str(row.running),
            rate(row.rate),
            span(row.oldest_age),
        )
    return grid


def running(snap: Snapshot, rows: int) -> Table:
    title = f"running ({snap.running_total})"
    grid = table(title, "task", "queue", "broker", ">runtime", "progress")
    for row in snap.running[:rows]:
        progress = "" if row.progress is None else f"{row.progress:.0f}%"
        grid.add_row(
            cell(row.name),
            cell(row.queue),
            cell(row.broker or "-"),
            span(row.runtime),
            cell(f"{progress} {row.note}".strip() or "-"),
        )
    return grid


def failures(snap: Snapshot, rows: int) -> Table:
    grid = table("last failures", ">when", "task", "exception", "message")
    for row in snap.failures[:rows]:
        grid.add_row(
            clock(row.at, snap.taken_at),
            cell(row.name),
            cell(row.exc_type.removeprefix("builtins."), "red" if row.final else "yellow"),
            cell(row.message),
        )
    return grid


def render(snap: Snapshot, height: int | None = None, keys: str = "") -> RenderableType:
    """The frame for `snap`; with `height`, cut to that many lines."""
    top: list[RenderableType] = [headline(snap, keys), *notices(snap)]
    fixed = len(top) + 4 * TABLE_LINES + len(snap.brokers) + len(snap.queues)
    if height is None:
        running_rows, failure_rows = RUNNING_ROWS, FAILURE_ROWS
    else:
        room = max(height - fixed, 0)
        running_rows = min(len(snap.running), room // 2 + room % 2)
        failure_rows = room - running_rows
    return Group(
        *top,
        brokers(snap),
        queues(snap),
        running(snap, running_rows),
        failures(snap, failure_rows),
    )
