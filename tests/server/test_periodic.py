"""Periodic tasks on real brokers: settings, admin edits, missed runs, two brokers."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from leek.cli import main
from leek.client import connection as client
from leek.models import PeriodicTask, SuccessTask, Task
from tests.conftest import BrokerProcess, wait_for

from . import periodic_tasks as tasks

STAMP = "tests.server.periodic_tasks.stamp"


def schedule_env(**entries: dict[str, Any]) -> dict[str, str]:
    return {"LEEK_SCHEDULE": json.dumps(entries)}


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def test_settings_schedule_is_synced_and_runs(
    broker_factory: Callable[..., BrokerProcess], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marks = str(tmp_path / "marks")
    PeriodicTask.objects.create(name="gone", task=STAMP, every=1, from_settings=True)
    kept = PeriodicTask.objects.create(name="kept", task=STAMP, cron="daily", enabled=False)
    broker_factory(
        **schedule_env(
            every={"task": STAMP, "every": 1, "args": [marks, "every"], "queue": "ticks"},
            cron={
                "task": STAMP,
                "cron": "* * * * * *",
                "args": [marks],
                "kwargs": {"label": "cron"},
            },
            hourly={"task": STAMP, "cron": "hourly", "catch_up": False, "priority": 2},
        )
    )
    wait_for(lambda: min(len(tasks.stamps(marks, "every")), len(tasks.stamps(marks, "cron"))) >= 3)
    assert set(PeriodicTask.objects.values_list("name", flat=True)) == {
        "every",
        "cron",
        "hourly",
        "kept",
    }
    every = PeriodicTask.objects.get(name="every")
    assert every.from_settings and every.every == 1.0 and every.queue == "ticks"
    assert every.args == [marks, "every"] and every.last_run_at is not None
    assert every.next_run_at is not None and every.next_run_at > every.last_run_at
    assert Task.objects.filter(name=STAMP, queue="ticks").exists()
    for label in ("every", "cron"):  # the delayed heap starts each run on its time
        assert all(0.9 < gap < 1.1 for gap in gaps(tasks.stamps(marks, label))), label
    hourly = PeriodicTask.objects.get(name="hourly")
    assert not hourly.catch_up and hourly.priority == 2 and hourly.last_run_at is None
    assert hourly.next_run_at is not None
    assert hourly.next_run_at.minute == hourly.next_run_at.second == 0
    assert 0 < (hourly.next_run_at - timezone.now()).total_seconds() <= 3600
    kept.refresh_from_db()
    assert not kept.from_settings and kept.next_run_at is None  # disabled: no next run

    assert main(["--json", "schedule"]) == 0
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)["tasks"]}
    assert list(listed) == ["cron", "every", "hourly", "kept"]
    assert listed["hourly"]["schedule"] == "hourly" and listed["every"]["schedule"] == "every 1 s"
    assert listed["kept"]["next_run_at"] is None and listed["hourly"]["next_run_at"].endswith(
        ":00:00+00:00"
    )
    assert main(["schedule"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].split() == ["NAME", "SCHEDULE", "TASK", "NEXT", "RUN", "(UTC)", "LAST", "RUN"]
    assert text[4].split()[:4] == ["kept", "daily", STAMP, "disabled"]


def test_a_change_in_the_database_takes_effect_without_a_restart(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    marks = str(tmp_path / "marks")
    row = PeriodicTask.objects.create(name="report", task=STAMP, args=[marks], every=3600)

    def next_in() -> float | None:
        row.refresh_from_db()
        return None if row.next_run_at is None else row.next_run_at.timestamp() - time.time()

    wait_for(lambda: (next_in() or 0) > 3000)  # the broker gave the new row its next run
    row.every = 1  # as the admin saves it: the whole row, next_run_at as it was read
    row.save()
    wait_for(lambda: len(tasks.stamps(marks)) >= 2, timeout=6)
    assert (next_in() or 99) <= 2.1  # runs are claimed up to a second ahead

    row.refresh_from_db()
    row.every, row.cron = None, "0 0 1 1 *"
    row.save()
    wait_for(lambda: (next_in() or 0) > 3600)
    assert row.next_run_at is not None
    assert (row.next_run_at.month, row.next_run_at.day, row.next_run_at.hour) == (1, 1, 0)
    count = len(tasks.stamps(marks))
    row.enabled = False
    row.save()
    wait_for(lambda: next_in() is None)
    row.refresh_from_db()
    row.enabled, row.cron = True, "* * * * * *"
    row.save()
    wait_for(lambda: len(tasks.stamps(marks)) >= count + 2, timeout=6)


def test_missed_runs_follow_catch_up(
    broker_factory: Callable[..., BrokerProcess], tmp_path: Path
) -> None:
    marks = str(tmp_path / "marks")
    now = timezone.now()
    missed = now - timedelta(hours=2, minutes=30)
    for label, catch_up in (("yes", True), ("no", False)):
        PeriodicTask.objects.create(
            name=label,
            task=STAMP,
            args=[marks, label],
            every=3600,
            catch_up=catch_up,
            last_run_at=missed - timedelta(hours=1),
            next_run_at=missed,
        )
    broker_factory()
    wait_for(lambda: PeriodicTask.objects.filter(next_run_at__gt=now).count() == 2)
    wait_for(lambda: tasks.stamps(marks, "yes"))
    time.sleep(1.0)  # room for a wrong second run
    assert len(tasks.stamps(marks, "yes")) == 1 and not tasks.stamps(marks, "no")
    after = missed + timedelta(hours=3)  # the next time on the interval's phase
    for row in PeriodicTask.objects.all():
        assert row.next_run_at == after
    assert PeriodicTask.objects.get(name="yes").last_run_at == missed
    assert PeriodicTask.objects.get(name="no").last_run_at == missed - timedelta(hours=1)


def test_two_brokers_push_each_run_once(
    broker_factory: Callable[..., BrokerProcess], tmp_path: Path
) -> None:
    """Both brokers try to claim every run; the conditional update lets one win.
    20 s on PostgreSQL (the shared database of a multi-broker setup); 5 s on
    SQLite, where both brokers share one file on one host."""
    seconds = 20 if connection.vendor == "postgresql" else 5
    marks = str(tmp_path / "marks")
    env = schedule_env(tick={"task": STAMP, "every": 1, "args": [marks]})
    brokers = [broker_factory(**env)]
    client.close()  # the client keeps one connection, to the last broker started
    brokers.append(broker_factory(**env))
    first = wait_for(lambda: tasks.stamps(marks))[0]
    time.sleep(seconds - (time.time() - first) + 0.5)
    for process in brokers:
        process.kill(signal.SIGTERM)
    times = tasks.stamps(marks)
    assert seconds <= len(times) <= seconds + 2, f"{len(times)} runs in {seconds} s"
    assert all(0.9 < gap < 1.1 for gap in gaps(times)), gaps(times)
    assert SuccessTask.objects.filter(name=STAMP).count() == len(times)
    row = PeriodicTask.objects.get(name="tick")
    assert row.last_run_at is not None
    ahead = row.last_run_at.timestamp() - times[-1]  # a run claimed ahead may wait unrun
    assert abs(ahead) < 0.1 or abs(ahead - 1) < 0.1, ahead
    assert Task.objects.filter(name=STAMP).count() == len(times) + round(ahead)
    brokers_used = set(Task.objects.filter(name=STAMP).values_list("broker", flat=True))
    assert brokers_used <= {f"{socket.gethostname()}:{p.port}" for p in brokers}
