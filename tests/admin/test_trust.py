"""Staff in the admin run only what the site allows: registered tasks, listed
commands, allowed periodic paths; and a task is deleted only once it has finished.

The users here are staff, never superusers: each has the permissions its test names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core import checks
from django.test import Client
from django.urls import reverse

import leek
from leek.checks import check_admin_trust
from leek.models import Event, PeriodicTask, Task
from tests.admin import tasks as admin_tasks
from tests.admin.factories import make_task
from tests.conftest import BrokerProcess

CREATE = reverse("admin:leek_task_create")
CHANGELIST = reverse("admin:leek_task_changelist")
PERIODIC_ADD = reverse("admin:leek_periodictask_add")


@pytest.fixture
def staff(client: Client, django_user_model: Any) -> Callable[..., Client]:
    """Log a staff user (not a superuser) with these permissions in."""

    def login(*codenames: str) -> Client:
        user = django_user_model.objects.create_user("clerk", password="pw", is_staff=True)
        for codename in codenames:
            user.user_permissions.add(Permission.objects.get(codename=codename))
        assert not user.is_superuser
        client.login(username="clerk", password="pw")
        return client

    return login


def _exec_code(target: Path) -> str:
    return f"import pathlib; pathlib.Path({str(target)!r}).write_text('pwned')"


# -- Create a task -------------------------------------------------------------


@pytest.mark.django_db
def test_add_task_does_not_reach_the_create_page(
    staff: Callable[..., Client], leek_settings: Callable[..., None], tmp_path: Path
) -> None:
    leek_settings(ADMIN_COMMANDS=["check"])
    client = staff("view_task", "add_task")
    assert client.get(CREATE).status_code == 403
    data = {"target": "task:tests.admin.tasks.shout", "args": '["x"]', "kwargs": "{}"}
    assert client.post(CREATE, data).status_code == 403
    assert "Create a task" not in client.get(CHANGELIST).content.decode()
    assert "Create a task" not in client.get(reverse("admin:index")).content.decode()
    assert Task.objects.count() == 0 and Event.objects.count() == 0


@pytest.mark.django_db
def test_shell_is_neither_offered_nor_run_even_when_listed(
    staff: Callable[..., Client], leek_settings: Callable[..., None], tmp_path: Path
) -> None:
    client = staff("view_task", "run_task")
    assert "Create a task" in client.get(CHANGELIST).content.decode()
    page = client.get(CREATE).content.decode()
    assert 'value="task:tests.admin.tasks.shout"' in page
    assert 'value="command:' not in page  # no command unless ADMIN_COMMANDS lists it

    leek_settings(ADMIN_COMMANDS=["check", "shell", "dbshell", "runserver", "loaddata"])
    page = client.get(CREATE).content.decode()
    assert 'value="command:check"' in page
    for refused in ("shell", "dbshell", "runserver", "loaddata"):
        assert f'value="command:{refused}"' not in page
    pwned = tmp_path / "pwned"
    data = {
        "target": "command:shell",
        "args": "[]",
        "kwargs": json.dumps({"command": _exec_code(pwned)}),
    }
    page = client.post(CREATE, data).content.decode()
    assert "Select a valid choice" in page
    assert Task.objects.count() == 0 and Event.objects.count() == 0
    assert not pwned.exists()


@pytest.mark.django_db(transaction=True)
def test_run_task_runs_a_registered_task_and_a_listed_command_each_an_event(
    broker: BrokerProcess, staff: Callable[..., Client], leek_settings: Callable[..., None]
) -> None:
    assert admin_tasks.shout.queue == "default"
    leek_settings(ADMIN_COMMANDS=["check", "clearsessions"])
    client = staff("view_task", "run_task")
    data = {"target": "task:tests.admin.tasks.shout", "args": '["hi"]', "kwargs": "{}"}
    assert client.post(CREATE, data).status_code == 302
    data = {"target": "command:check", "args": "[]", "kwargs": "{}"}
    assert client.post(CREATE, data).status_code == 302

    shout = Task.objects.get(name="tests.admin.tasks.shout")
    check = Task.objects.get(name="leek.calls.run_command")
    assert leek.TaskHandle(shout.id).result(timeout=10) == "HI"
    assert "System check identified no issues" in leek.TaskHandle(check.id).result(timeout=20)
    events = {e.data["task"]: e for e in Event.objects.filter(kind="admin.create_task")}
    assert set(events) == {str(shout.id), str(check.id)}
    assert {e.actor for e in events.values()} == {"clerk"}
    assert events[str(shout.id)].data["target"] == "task:tests.admin.tasks.shout"
    assert events[str(check.id)].data["target"] == "command:check"


# -- Periodic tasks --------------------------------------------------------------


def _periodic(**values: Any) -> dict[str, Any]:
    data = {
        "name": "nightly",
        "task": "tests.admin.tasks.shout",
        "args": '["hi"]',
        "kwargs": "{}",
        "cron": "",
        "every": "60",
        "queue": "default",
        "priority": "0",
        "enabled": "on",
        "catch_up": "on",
    }
    data.update(values)
    return data


@pytest.mark.django_db
def test_the_periodic_form_refuses_builtins_exec(
    staff: Callable[..., Client], leek_settings: Callable[..., None], tmp_path: Path
) -> None:
    client = staff("view_periodictask", "add_periodictask", "change_periodictask")
    code = json.dumps(_exec_code(tmp_path / "pwned"))
    page = client.post(PERIODIC_ADD, _periodic(task="builtins.exec", args=f"[{code}]"))
    assert page.status_code == 200
    assert (
        "Not allowed: builtins.exec is not a registered @leek.task function nor listed in "
        "LEEK[&#x27;PERIODIC_ALLOWED&#x27;]."
    ) in page.content.decode()

    leek_settings(PERIODIC_ALLOWED=["builtins.exec"])
    page = client.post(PERIODIC_ADD, _periodic(task="builtins.exec", args=f"[{code}]"))
    assert "runs its input as code or commands" in page.content.decode()

    leek_settings(ADMIN_COMMANDS=["check"])
    page = client.post(PERIODIC_ADD, _periodic(task="leek.calls.run_command", args='["shell"]'))
    assert "runs only the management commands" in page.content.decode()
    assert PeriodicTask.objects.count() == 0 and Event.objects.count() == 0


@pytest.mark.django_db
def test_the_periodic_form_takes_a_registered_task_or_a_listed_command(
    staff: Callable[..., Client], leek_settings: Callable[..., None]
) -> None:
    leek_settings(ADMIN_COMMANDS=["clearsessions"])
    client = staff("view_periodictask", "add_periodictask")
    page = client.get(PERIODIC_ADD).content.decode()
    assert "tests.admin.tasks.shout" in page and "leek.calls.run_command" in page
    assert client.post(PERIODIC_ADD, _periodic()).status_code == 302
    data = _periodic(name="sessions", task="leek.calls.run_command", args='["clearsessions"]')
    assert client.post(PERIODIC_ADD, data).status_code == 302
    assert set(PeriodicTask.objects.values_list("task", flat=True)) == {
        "tests.admin.tasks.shout",
        "leek.calls.run_command",
    }
    events = Event.objects.filter(kind="admin.periodic_task")
    assert [e.actor for e in events] == ["clerk", "clerk"]
    assert {e.data["task"] for e in events} == {"tests.admin.tasks.shout", "leek.calls.run_command"}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "values, error",
    [
        ({"cron": "61 * * * *", "every": ""}, "cron &#x27;61 * * * *&#x27; is not a valid cron"),
        ({"cron": "every tuesday", "every": ""}, "is not a valid cron expression"),
        ({"cron": "daily", "every": "60"}, "not both"),
        ({"cron": "", "every": ""}, "Give a cron expression"),
        ({"cron": "", "every": "-5"}, "greater than zero"),
        ({"args": '{"a": 1}'}, "must be a JSON list"),
        ({"kwargs": "[1]"}, "must be a JSON object"),
    ],
)
def test_the_periodic_form_refuses_a_bad_schedule(
    staff: Callable[..., Client], values: dict[str, str], error: str
) -> None:
    client = staff("view_periodictask", "add_periodictask")
    page = client.post(PERIODIC_ADD, _periodic(**values)).content.decode()
    assert error in page
    assert PeriodicTask.objects.count() == 0


@pytest.mark.django_db
def test_a_periodic_task_of_the_settings_keeps_its_task(
    staff: Callable[..., Client], leek_settings: Callable[..., None]
) -> None:
    path = "tests.server.periodic_tasks.stamps"  # registered nowhere, listed nowhere
    leek_settings(SCHEDULE={"cleanup": {"task": path, "cron": "daily"}})
    row = PeriodicTask.objects.create(name="cleanup", task=path, cron="daily", from_settings=True)
    client = staff("view_periodictask", "change_periodictask")
    url = reverse("admin:leek_periodictask_change", args=[row.pk])
    data = _periodic(name="cleanup", task=path, cron="hourly", every="", args="[]")
    assert client.post(url, data).status_code == 302
    other = _periodic(name="elsewhere", task=path, cron="hourly", every="", args="[]")
    assert "Not allowed" in client.post(url, other).content.decode()


# -- Deleting ----------------------------------------------------------------------


@pytest.mark.django_db
def test_a_running_or_queued_task_is_not_deleted(staff: Callable[..., Client]) -> None:
    client = staff("view_task", "delete_task")
    running, queued, done = make_task("running"), make_task("queued"), make_task("succeeded")
    url = reverse("admin:leek_task_delete", args=[running.id])
    page = client.get(url).content.decode()
    assert "Cannot delete task" in page and "has not finished and cannot be deleted" in page
    assert client.post(url, {"post": "yes"}).status_code == 200
    assert Task.objects.filter(pk=running.id).exists()

    data = {
        "action": "delete_selected",
        "_selected_action": [str(t.id) for t in (running, queued, done)],
        "post": "yes",
    }
    page = client.post(CHANGELIST, data).content.decode()
    assert "2 tasks have not finished and cannot be deleted" in page
    assert f"{running} is running" in page and f"{queued} is queued" in page
    assert Task.objects.count() == 3

    data["_selected_action"] = [str(done.id)]
    client.post(CHANGELIST, data)
    assert set(Task.objects.values_list("pk", flat=True)) == {running.id, queued.id}
    url = reverse("admin:leek_task_delete", args=[running.id])
    running.status = "failed"
    running.save()
    assert client.post(url, {"post": "yes"}).status_code == 302
    assert list(Task.objects.values_list("pk", flat=True)) == [queued.id]


# -- System checks ------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, ids",
    [
        ({"ADMIN_COMMANDS": "check"}, ["leek.E010"]),
        ({"ADMIN_COMMANDS": ["check", 3]}, ["leek.E010"]),
        ({"ADMIN_COMMANDS": ["check", "shell", "shell_plus"]}, ["leek.W010", "leek.W010"]),
        ({"ADMIN_COMMANDS": ["no_such_command"]}, ["leek.W010"]),
        ({"PERIODIC_ALLOWED": {"a.b": 1}}, ["leek.E010"]),
        ({"PERIODIC_ALLOWED": ["nodots"]}, ["leek.E010"]),
        ({"PERIODIC_ALLOWED": ["os.system", "myapp.jobs.send"]}, ["leek.W010"]),
        ({"ADMIN_COMMANDS": ["check", "clearsessions"], "PERIODIC_ALLOWED": ["a.b"]}, []),
    ],
)
def test_the_system_check_reports_bad_listings(
    leek_settings: Callable[..., None], values: dict[str, Any], ids: list[str]
) -> None:
    leek_settings(**values)
    found = check_admin_trust()
    assert [m.id for m in found] == ids
    for message in found:
        assert isinstance(message, checks.Error if message.id == "leek.E010" else checks.Warning)
