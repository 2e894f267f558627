"""A broker runs only the periodic tasks the site allows, however their rows were written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from leek.models import Event, PeriodicTask, Task
from tests.conftest import BrokerProcess, wait_for

from . import periodic_tasks as tasks
from .test_periodic import STAMP

TRUST_SETTINGS = "tests.server.trust_app.settings"


def _exec_code(target: Path) -> str:
    return f"import pathlib; pathlib.Path({str(target)!r}).write_text('pwned')"


def test_a_row_naming_builtins_exec_is_refused_and_logged_never_run(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    pwned = tmp_path / "pwned"
    marks = str(tmp_path / "marks")
    evil = PeriodicTask.objects.create(
        name="evil", task="builtins.exec", args=[_exec_code(pwned)], every=1
    )
    shell = PeriodicTask.objects.create(
        name="shell",
        task="leek.calls.run_command",
        args=["shell"],
        kwargs={"command": _exec_code(pwned)},
        every=1,
    )
    PeriodicTask.objects.create(name="allowed", task=STAMP, args=[marks], every=1)
    wait_for(lambda: Event.objects.filter(kind="periodic.refused").count() == 2)
    # a row written after the broker read the settings, claiming to come from them
    late = PeriodicTask.objects.create(
        name="late", task="builtins.exec", args=[_exec_code(pwned)], every=1, from_settings=True
    )
    wait_for(lambda: Event.objects.filter(kind="periodic.refused").count() == 3)
    runs = len(tasks.stamps(marks))
    wait_for(lambda: len(tasks.stamps(marks)) >= runs + 2)  # the broker kept ticking

    assert not pwned.exists()
    assert not Task.objects.exclude(name=STAMP).exists()
    events = {e.data["periodic_task"]: e for e in Event.objects.filter(kind="periodic.refused")}
    assert set(events) == {evil.pk, shell.pk, late.pk}
    assert "builtins.exec is not a registered @leek.task function" in events[evil.pk].message
    assert "'shell'" in events[shell.pk].message
    assert events[evil.pk].data["broker"].endswith(f":{broker.port}")
    for row in (evil, shell, late):
        row.refresh_from_db()
        assert row.next_run_at is None and row.last_run_at is None
    log = broker.output()
    assert "periodic task refused name=evil task=builtins.exec" in log
    assert log.count("periodic task refused name=evil") == 1  # once, not every second


def test_builtins_exec_is_refused_even_when_periodic_allowed_lists_it(
    broker_factory: Callable[..., BrokerProcess], tmp_path: Path
) -> None:
    pwned = tmp_path / "pwned"
    marks = str(tmp_path / "marks")
    PeriodicTask.objects.create(
        name="evil", task="builtins.exec", args=[_exec_code(pwned)], every=1
    )
    PeriodicTask.objects.create(name="allowed", task=STAMP, args=[marks], every=1)
    broker_factory(LEEK_PERIODIC_ALLOWED=f"builtins.exec,{STAMP}")
    event = wait_for(lambda: Event.objects.filter(kind="periodic.refused").first())
    assert "runs its input as code or commands" in event.message
    wait_for(lambda: len(tasks.stamps(marks)) >= 2)
    assert not pwned.exists() and not Task.objects.filter(name="builtins.exec").exists()


def test_registered_tasks_and_schedule_entries_run_without_a_listing(
    broker_factory: Callable[..., BrokerProcess], tmp_path: Path
) -> None:
    """tick is a @leek.task of an installed app's tasks module; untick is not
    registered, and runs only from the SCHEDULE entry that names it."""
    marks = str(tmp_path / "marks")
    untick = "tests.server.trust_app.tasks.untick"
    PeriodicTask.objects.create(
        name="registered", task="tests.server.trust_app.tasks.tick", args=[marks, "r"], every=1
    )
    PeriodicTask.objects.create(name="unlisted", task=untick, args=[marks, "u"], every=1)
    schedule = {"settings": {"task": untick, "every": 1, "args": [marks, "s"]}}
    broker_factory(
        DJANGO_SETTINGS_MODULE=TRUST_SETTINGS,
        LEEK_SCHEDULE=json.dumps(schedule),
        LEEK_PERIODIC_ALLOWED="",
    )
    wait_for(lambda: tasks.stamps(marks, "r") and tasks.stamps(marks, "s"))
    event = wait_for(lambda: Event.objects.filter(kind="periodic.refused").first())
    assert event.data["task"] == untick
    assert not tasks.stamps(marks, "u")
