"""How the admin shows tasks: status badges, compact times, durations, text."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.contrib import admin
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

COLOURS = {
    "queued": "#417690",
    "waiting": "#7b6fa6",
    "running": "#b26b00",
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "cancelled": "#6b6b6b",
    "expired": "#8d6e63",
}


def badge(status: str) -> SafeString:
    """The status as a coloured label; an unknown status in grey."""
    return format_html(
        '<span class="leek-status" style="background:{};color:#fff;padding:1px 7px;'
        'border-radius:9px;white-space:nowrap">{}</span>',
        COLOURS.get(status, "#444"),
        status,
    )


def stamp(value: datetime | None, day_of: datetime | None = None) -> str:
    """A moment in local time to the second; the clock alone when it falls on
    the same day as `day_of`."""
    if value is None:
        return "-"
    local = timezone.localtime(value)
    if day_of is not None and timezone.localtime(day_of).date() == local.date():
        return local.strftime("%H:%M:%S")
    return local.strftime("%Y-%m-%d %H:%M:%S")


def time_column(field: str, description: str, day_of: str | None = None) -> Callable[..., str]:
    """A list column showing the date `field` compactly, sorted by the field."""

    @admin.display(description=description, ordering=field)
    def show(admin_: Any, obj: Any) -> str:
        return stamp(getattr(obj, field), getattr(obj, day_of) if day_of else None)

    return show


def between(start: datetime | None, end: datetime | None) -> str:
    """The time from `start` to `end` as `seconds` shows it; "-" when either is missing."""
    return "-" if start is None or end is None else seconds((end - start).total_seconds())


def pre(text: str) -> SafeString | str:
    """Text as written, escaped, in a wrapping box that scrolls past 30em; "-" when empty."""
    if not text:
        return "-"
    return format_html(
        '<pre style="white-space:pre-wrap;margin:0;max-height:30em;overflow:auto">{}</pre>', text
    )


def task_link(task_id: Any, label: str | None = None) -> SafeString:
    """A link to the task's page, labelled with `label` or the id."""
    url = reverse("admin:leek_task_change", args=[task_id])
    return format_html('<a href="{}">{}</a>', url, label or str(task_id))


def seconds(value: float | None) -> str:
    """A duration for people: 0.042 s, 12.3 s, 4 min 10 s, 2 h 5 min."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.3f} s"
    if value < 60:
        return f"{value:.1f} s"
    minutes, rest = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    return f"{minutes // 60} h {minutes % 60} min"
