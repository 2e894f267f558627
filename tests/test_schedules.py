"""Schedules and LEEK["SCHEDULE"] entries, without a broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from leek.schedules import Schedule, parse_entries


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_every_keeps_its_phase() -> None:
    every = Schedule.parse(None, timedelta(minutes=10))
    assert every == Schedule(every=600.0)
    assert every.after(1000.0) == 1600.0
    assert every.after(1000.0, anchor=1000.0) == 1600.0
    assert every.after(5000.0, anchor=1000.0) == 5200.0  # runs missed: the next one on phase
    assert Schedule.parse("", 1).after(0.0) == 1.0


def test_cron_and_its_shorthands() -> None:
    noon = ts("2026-03-10T12:00:00+00:00")
    assert Schedule.parse("0 * * * *", None).after(noon) == ts("2026-03-10T13:00:00+00:00")
    assert Schedule.parse("hourly", None).after(noon + 1) == ts("2026-03-10T13:00:00+00:00")
    assert Schedule.parse("daily", None).after(noon) == ts("2026-03-11T00:00:00+00:00")
    assert Schedule.parse("*/15 * * * *", None).after(noon) == noon + 900
    assert Schedule.parse("* * * * * *", None).after(noon + 0.25) == noon + 1  # seconds field


def test_cron_reads_django_time_zone(settings: Any) -> None:
    settings.TIME_ZONE = "Europe/Paris"
    daily = Schedule.parse("daily", None)
    assert daily.after(ts("2026-01-10T12:00:00+00:00")) == ts("2026-01-10T23:00:00+00:00")
    assert daily.after(ts("2026-07-10T12:00:00+00:00")) == ts("2026-07-10T22:00:00+00:00")
    # 02:30 does not exist on the night clocks go forward: it runs at 03:00 local time
    dst = Schedule.parse("30 2 * * *", None).after(ts("2026-03-28T12:00:00+00:00"))
    assert dst is not None
    assert datetime.fromtimestamp(dst, UTC) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("cron", "every", "message"),
    [
        ("0 * * * *", 60, "give cron or every, not both"),
        ("", None, "needs cron"),
        ("61 * * * *", None, "not a valid cron expression"),
        ("every hour", None, "not a valid cron expression"),
        (None, 0, "greater than zero"),
        (None, -timedelta(seconds=1), "greater than zero"),
        (None, "60", "greater than zero"),
    ],
)
def test_bad_schedules_say_what_is_wrong(cron: Any, every: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Schedule.parse(cron, every)


def test_settings_entries() -> None:
    entries, errors = parse_entries(
        {
            "report": {
                "task": "app.tasks.report",
                "cron": "hourly",
                "args": (1,),
                "kwargs": {"to": "ops"},
                "queue": "reports",
                "priority": 3,
                "catch_up": False,
            },
            "tick": {"task": "app.tasks.tick", "every": timedelta(seconds=30)},
            "typo": {"task": "app.tasks.tick", "every": 30, "catchup": True},
            "nothing": {"task": "app.tasks.tick"},
            "no-task": {"cron": "daily"},
            "not-json": {"task": "app.tasks.tick", "every": 1, "args": [object()]},
        }
    )
    assert entries == {
        "report": {
            "task": "app.tasks.report",
            "args": [1],
            "kwargs": {"to": "ops"},
            "cron": "hourly",
            "every": None,
            "queue": "reports",
            "priority": 3,
            "enabled": True,
            "catch_up": False,
        },
        "tick": {
            "task": "app.tasks.tick",
            "args": [],
            "kwargs": {},
            "cron": "",
            "every": 30.0,
            "queue": "default",
            "priority": 0,
            "enabled": True,
            "catch_up": True,
        },
    }
    assert len(errors) == 4
    assert "'typo': unknown keys catchup" in errors[0]
    assert "'nothing': a schedule needs cron" in errors[1]
    assert "'no-task': task must be the dotted path" in errors[2]
    assert "'not-json'" in errors[3] and "not JSON serializable" in errors[3]
    wrong: Any = []
    assert parse_entries(wrong)[1] == ['LEEK["SCHEDULE"] must be a dict of name to entry, got list']
