"""The admin's lists, task pages, dashboard and event log, through Django's test client."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

import leek
from leek.models import Event, Task
from tests.admin.factories import fail, make_node, make_task, succeed

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:leek_task_changelist"


def test_the_task_list_shows_what_matters(admin_client: Client) -> None:
    done = make_task("succeeded", name="tests.tasks.add", queue="emails", broker="b1:8002")
    make_task("failed", name="tests.tasks.fail")
    page = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert str(done.id)[:8] in page and "tests.tasks.fail" in page and "emails" in page
    assert "b1:8002" in page and "leek-status" in page and "#2e7d32" in page
    assert "2 tasks" in page
    assert "secret-payload-bytes" not in page


@pytest.mark.parametrize(
    "query, shown, hidden",
    [
        ({"status__exact": "failed"}, "tests.tasks.fail", "tests.tasks.add"),
        ({"queue": "emails"}, "tests.tasks.add", "tests.tasks.fail"),
        ({"name": "tests.tasks.fail"}, "tests.tasks.fail", "tests.tasks.add"),
        ({"q": "fail"}, "tests.tasks.fail", "tests.tasks.add"),
        ({"q": "needle"}, "tests.tasks.add", "tests.tasks.fail"),
    ],
)
def test_filters_and_search(
    admin_client: Client, query: dict[str, str], shown: str, hidden: str
) -> None:
    make_task("succeeded", name="tests.tasks.add", queue="emails", args_repr="'needle', 3")
    make_task("failed", name="tests.tasks.fail")
    response = admin_client.get(reverse(CHANGELIST), query)
    assert response.status_code == 200
    rows = response.content.decode().split('id="result_list"')[1].split("</table>")[0]
    assert shown in rows and hidden not in rows


def test_search_by_task_id_finds_the_task_and_its_runs(admin_client: Client) -> None:
    task = make_task("failed")
    make_task("failed")
    fail(task)
    page = admin_client.get(reverse(CHANGELIST), {"q": str(task.id)}).content.decode()
    assert "1 task" in page and str(task.id)[:8] in page
    failures = admin_client.get(reverse("admin:leek_failedtask_changelist"), {"q": str(task.id)})
    assert "1 failed task" in failures.content.decode()


def test_the_sidebar_offers_recent_queues_and_names(admin_client: Client) -> None:
    make_task(queue="emails", name="app.tasks.send")
    make_task(queue="pdfs", name="app.tasks.render")
    page = admin_client.get(reverse(CHANGELIST)).content.decode()
    for value in ("?queue=emails", "?queue=pdfs", "?name=app.tasks.send", "?name=app.tasks.render"):
        assert value in page


def test_a_task_page_shows_arguments_result_output_and_each_traceback(
    admin_client: Client,
) -> None:
    task = make_task(
        "succeeded",
        args_repr="'report', year=2026",
        attempts=3,
        progress=100.0,
        progress_note="all pages",
    )
    fail(task, attempt=1, final=False, message="first try")
    fail(task, attempt=2, final=False, message="second try")
    succeed(task, result="{'pages': 12}", stdout="rendered 12 pages\n", stderr="a warning\n")
    page = admin_client.get(reverse("admin:leek_task_change", args=[task.id])).content.decode()
    assert "&#x27;report&#x27;, year=2026" in page
    assert "{&#x27;pages&#x27;: 12}" in page
    assert "rendered 12 pages" in page and "a warning" in page
    assert "ValueError: first try" in page and "ValueError: second try" in page
    assert "all pages" in page and 'value="100.0"' in page
    assert "Run this task again" in page
    assert "secret-payload-bytes" not in page and "payload" not in page
    assert 'name="_save"' not in page  # nothing on it is edited by hand


def test_runs_link_back_to_their_task(admin_client: Client) -> None:
    task = make_task("failed")
    failure = fail(task)
    url = reverse("admin:leek_task_change", args=[task.id])
    for name in ("admin:leek_failedtask_changelist", "admin:leek_failedtask_change"):
        args = [failure.pk] if name.endswith("change") else []
        assert url in admin_client.get(reverse(name, args=args)).content.decode()
    success = succeed(make_task("succeeded"), stdout="hello\n")
    page = admin_client.get(reverse("admin:leek_successtask_change", args=[success.pk]))
    assert "hello" in page.content.decode()
    assert (
        reverse("admin:leek_successtask_changelist")
        in admin_client.get(reverse("admin:leek_successtask_changelist")).content.decode()
    )


def test_tasks_cannot_be_added_or_edited_by_hand(admin_client: Client) -> None:
    task = make_task()
    assert admin_client.get(reverse("admin:leek_task_add")).status_code == 403
    response = admin_client.post(
        reverse("admin:leek_task_change", args=[task.id]),
        {"name": "changed", "status": "succeeded"},
    )
    assert response.status_code == 403
    task.refresh_from_db()
    assert task.name == "tests.tasks.add" and task.status == "queued"


def test_the_index_links_the_dashboard_and_create_pages(admin_client: Client) -> None:
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert reverse("admin:leek_task_dashboard") in page
    assert reverse("admin:leek_task_create") in page


def test_dashboard_without_a_broker_shows_the_red_banner(admin_client: Client) -> None:
    make_node("old:8002", seen=timezone.now() - timedelta(minutes=5))
    page = admin_client.get(reverse("admin:leek_task_dashboard")).content.decode()
    assert 'id="leek-problems"' in page
    assert "No broker has sent a heartbeat in the last 30 seconds" in page
    assert "leek-node-dead" in page and "silent" in page


def test_dashboard_with_a_live_broker_counts_and_charts(admin_client: Client) -> None:
    make_node("web1:8002", workers_alive=3, workers=4)
    make_node("gone:8002", stopped=True)
    for _ in range(3):
        succeed(make_task("succeeded", queue="emails"))
    fail(make_task("failed", name="tests.tasks.fail", queue="emails"), message="smtp down")
    make_task("queued", queue="pdfs", ago=3600 * 2 + 120, name="tests.tasks.slow")
    make_task("queued", queue="pdfs", ago=7200 * 5, run_after=timezone.now() + timedelta(hours=1))
    page = admin_client.get(reverse("admin:leek_task_dashboard")).content.decode()
    assert 'id="leek-problems"' not in page
    assert "web1:8002" in page and "3/4" in page and "alive" in page and "stopped" in page
    assert "2 h 2 min" in page and "tests.tasks.slow" in page  # delayed tasks are not waiting
    assert "smtp down" in page
    assert page.count('fill="#2e7d32"') >= 1 and page.count('fill="#c62828"') >= 1
    assert "3 succeeded" in page and "1 failed" in page
    counts = page.split('id="leek-counts"')[1].split("</table>")[0]
    assert ">emails</a>" in counts and ">pdfs</a>" in counts and ">6</th>" in counts


def test_dashboard_warns_when_a_broker_runs_other_code(
    admin_client: Client, leek_settings: object
) -> None:
    leek_settings(CODE_VERSION="v2")  # type: ignore[operator]
    make_node("web1:8002", code_version="v1")
    page = admin_client.get(reverse("admin:leek_task_dashboard")).content.decode()
    assert "Broker web1:8002 runs code version v1, this site runs v2" in page


def test_staff_without_permission_cannot_see_the_dashboard(
    client: Client, django_user_model: Any
) -> None:
    django_user_model.objects.create_user("clerk", password="pw", is_staff=True)
    client.login(username="clerk", password="pw")
    assert client.get(reverse("admin:leek_task_dashboard")).status_code == 403
    assert client.get(reverse("admin:leek_task_create")).status_code == 403
    assert Task.objects.count() == 0


def test_the_event_log_is_searchable_and_filterable(admin_client: Client) -> None:
    leek.log_event("login", "Ada logged in", actor="ada")
    leek.log_event("booking.created", "Room 4 booked", actor="bob", room=4)
    url = reverse("admin:leek_event_changelist")
    page = admin_client.get(url).content.decode()
    assert "Ada logged in" in page and "Room 4 booked" in page and "?kind=login" in page

    def rows(query: dict[str, str]) -> str:
        text = admin_client.get(url, query).content.decode()
        return text.split('id="result_list"')[1].split("</table>")[0]

    assert "Room 4" not in rows({"kind": "login"}) and "Ada" in rows({"kind": "login"})
    assert "Ada" not in rows({"q": "bob"}) and "Room 4" in rows({"q": "bob"})
    event = Event.objects.get(kind="booking.created")
    detail = admin_client.get(reverse("admin:leek_event_change", args=[event.pk]))
    assert "&quot;room&quot;: 4" in detail.content.decode()
