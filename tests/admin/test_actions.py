"""Cancel, retry, run again and create, from the admin, against a real broker
(or none: the client falls back to the database)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

import leek
from leek.models import Event, FailedTask, SuccessTask, Task
from tests import tasks
from tests.admin import tasks as admin_tasks
from tests.admin.factories import fail, make_task
from tests.conftest import BrokerProcess, free_port, wait_for

CHANGELIST = reverse("admin:leek_task_changelist")
CREATE = reverse("admin:leek_task_create")


def act(
    client: Client, action: str, ids: list[Any], url: str = CHANGELIST, confirm: bool = True
) -> str:
    """Choose the action on the list, then answer its confirmation page."""
    data = {"action": action, "_selected_action": [str(i) for i in ids], "index": "0"}
    page = client.post(url, data)
    assert page.status_code == 200, page
    text = page.content.decode()
    if not confirm:
        return text
    data = {
        "action": action,
        "_selected_action": [str(i) for i in ids],
        "confirmed": "yes",
        "select_across": "0",
    }
    return client.post(url, data, follow=True).content.decode()


def status(task_id: Any) -> str:
    return str(Task.objects.get(pk=task_id).status)


@pytest.mark.django_db(transaction=True)
def test_cancel_through_the_broker_asks_first(
    broker_factory: Callable[..., BrokerProcess], admin_client: Client
) -> None:
    broker_factory(LEEK_WORKERS="1")
    later = [leek.enqueue(tasks.noop, delay=600) for _ in range(2)]
    done = leek.push_task_to_queue(tasks.add, 1, 1)
    done.result(timeout=10)
    ids = [h.id for h in [*later, done]]
    question = act(admin_client, "cancel_tasks", ids, confirm=False)
    assert "Cancel 2 tasks waiting to run? Cancelled tasks never run." in question
    assert "1 selected task is left alone" in question
    assert all(status(h.id) == "queued" for h in later)  # nothing happens before the answer
    answer = act(admin_client, "cancel_tasks", ids)
    assert "Cancelled 2 tasks." in answer
    assert [status(h.id) for h in later] == ["cancelled", "cancelled"]
    assert leek.waiting() == (True, 0)  # the broker let go of them too
    event = Event.objects.get(kind="admin.cancel_tasks")
    assert event.actor == "admin" and event.data["count"] == 2


@pytest.mark.django_db(transaction=True)
def test_retry_a_failed_task_and_run_a_finished_one_again(
    broker: BrokerProcess, admin_client: Client, tmp_path: Any
) -> None:
    flaky = leek.enqueue(tasks.flaky, (str(tmp_path / "runs"), 1), max_retries=0)
    wait_for(lambda: flaky.status() == "failed")
    answer = act(admin_client, "retry_tasks", [flaky.id])
    assert "Requeued 1 task." in answer
    assert flaky.result(timeout=10) == 2
    assert FailedTask.objects.get(task_id=flaky.id).requeued_at is not None
    answer = act(admin_client, "requeue_tasks", [flaky.id])
    assert "Requeued 1 task." in answer
    wait_for(lambda: SuccessTask.objects.filter(task_id=flaky.id).count() == 2)


@pytest.mark.django_db(transaction=True)
def test_retry_from_the_failures_list(broker: BrokerProcess, admin_client: Client) -> None:
    handle = leek.enqueue(tasks.fail, ("again",), max_retries=0)
    wait_for(lambda: handle.status() == "failed")
    failure = FailedTask.objects.get(task_id=handle.id)
    url = reverse("admin:leek_failedtask_changelist")
    assert "Requeued 1 task." in act(admin_client, "retry_tasks", [failure.pk], url=url)
    wait_for(lambda: FailedTask.objects.filter(task_id=handle.id).count() == 2)


@pytest.mark.django_db
def test_actions_without_a_broker_fall_back_to_the_database(
    admin_client: Client, leek_settings: Callable[..., None]
) -> None:
    leek_settings(PORT=free_port(), CONNECT_TIMEOUT=0.2)
    pending, failed = make_task("queued"), make_task("failed")
    fail(failed)
    assert "Cancelled 1 task." in act(admin_client, "cancel_tasks", [pending.id, failed.id])
    assert status(pending.id) == "cancelled"
    assert "Requeued 1 task." in act(admin_client, "retry_tasks", [failed.id])
    requeued = Task.objects.get(pk=failed.id)
    assert requeued.status == "queued" and requeued.spooled  # the next broker adopts it
    assert "None of the selected tasks" in act(
        admin_client, "retry_tasks", [pending.id], confirm=False
    )


@pytest.mark.django_db
def test_a_staff_user_without_change_permission_gets_no_actions(
    client: Client, django_user_model: Any
) -> None:
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_task"))
    client.login(username="viewer", password="pw")
    page = client.get(CHANGELIST).content.decode()
    assert "cancel_tasks" not in page and "Create a task" not in page
    task = make_task()
    assert (
        "Cancel this task"
        not in client.get(reverse("admin:leek_task_change", args=[task.id])).content.decode()
    )


@pytest.mark.django_db
def test_the_create_page_offers_registered_tasks_and_commands(
    admin_client: Client, leek_settings: Callable[..., None]
) -> None:
    leek_settings(ADMIN_COMMANDS=["migrate", "leek"])
    page = admin_client.get(CREATE).content.decode()
    assert 'value="task:tests.admin.tasks.shout"' in page
    assert 'value="command:migrate"' in page and 'value="command:leek"' in page


@pytest.mark.django_db
@pytest.mark.parametrize(
    "field, value, error",
    [
        ("args", "{", "arguments are not valid JSON"),
        ("args", '{"a": 1}', "must be a JSON list"),
        ("kwargs", "[1]", "must be a JSON object"),
        ("target", "task:nowhere.nothing", "Select a valid choice"),
    ],
)
def test_the_create_page_says_what_is_wrong(
    admin_client: Client, field: str, value: str, error: str
) -> None:
    data = {"target": "task:tests.admin.tasks.shout", "args": '["x"]', "kwargs": "{}", field: value}
    page = admin_client.post(CREATE, data).content.decode()
    assert error in page and Task.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_create_a_registered_task_and_see_it_run(
    broker: BrokerProcess, admin_client: Client
) -> None:
    assert admin_tasks.shout.queue == "default"
    data = {
        "target": "task:tests.admin.tasks.shout",
        "args": '["hi"]',
        "kwargs": '{"times": 2}',
        "priority": "",
        "queue": "",
        "delay": "",
    }
    response = admin_client.post(CREATE, data, follow=True)
    task = Task.objects.get()
    assert response.redirect_chain[-1][0] == reverse("admin:leek_task_change", args=[task.id])
    assert task.name == "tests.admin.tasks.shout" and task.args_repr == "'hi', times=2"
    assert leek.TaskHandle(task.id).result(timeout=10) == "HI HI"
    assert SuccessTask.objects.get(task=task).stdout == "HI HI\n"
    assert Event.objects.filter(kind="admin.create_task", data__task=str(task.id)).exists()


@pytest.mark.django_db(transaction=True)
def test_create_keeps_the_task_options_unless_overridden(
    broker: BrokerProcess, admin_client: Client
) -> None:
    target = "task:tests.admin.tasks.report"
    admin_client.post(CREATE, {"target": target, "args": '["q3"]', "kwargs": "{}"})
    admin_client.post(
        CREATE,
        {
            "target": target,
            "args": '["q4"]',
            "kwargs": "{}",
            "queue": "urgent",
            "priority": "9",
            "delay": "600",
        },
    )
    own, chosen = Task.objects.order_by("args_repr")
    assert (own.queue, own.priority, own.max_retries) == ("reports", 3, 0)
    assert (chosen.queue, chosen.priority, chosen.status) == ("urgent", 9, "queued")
    assert chosen.run_after is not None


@pytest.mark.django_db(transaction=True)
def test_create_a_management_command_task(
    broker: BrokerProcess, admin_client: Client, leek_settings: Callable[..., None]
) -> None:
    leek_settings(ADMIN_COMMANDS=["check"])
    data = {"target": "command:check", "args": "[]", "kwargs": '{"deploy": false}'}
    admin_client.post(CREATE, data)
    task = Task.objects.get()
    assert task.name == "leek.calls.run_command" and task.max_retries == 0
    assert "System check identified no issues" in leek.TaskHandle(task.id).result(timeout=20)
    assert "System check identified no issues" in SuccessTask.objects.get(task=task).stdout


@pytest.mark.django_db(transaction=True)
def test_create_with_no_broker_spools_the_task(
    admin_client: Client, leek_settings: Callable[..., None]
) -> None:
    leek_settings(PORT=free_port(), CONNECT_TIMEOUT=0.2)
    data = {"target": "task:tests.admin.tasks.shout", "args": '["later"]', "kwargs": "{}"}
    admin_client.post(CREATE, data)
    task = Task.objects.get()
    assert task.spooled and task.status == "queued"
