"""Pausing queues and seeing expired tasks in the admin, through Django's test client."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from leek import queues
from leek.models import Event, QueueState
from tests.admin.factories import make_task

pytestmark = pytest.mark.django_db

DASHBOARD = "admin:leek_task_dashboard"
QUEUE = "admin:leek_task_queue"


def test_the_dashboard_pauses_and_resumes_a_queue_with_its_buttons(
    admin_client: Client,
) -> None:
    make_task("queued", queue="reports")
    page = admin_client.get(reverse(DASHBOARD)).content.decode()
    assert 'name="action" value="pause"' in page
    response = admin_client.post(reverse(QUEUE), {"queue": "reports", "action": "pause"})
    assert response.status_code == 302
    assert queues.paused() == ["reports"]
    state = QueueState.objects.get(queue="reports")
    assert state.paused_by == "admin" and state.paused_at is not None
    page = admin_client.get(reverse(DASHBOARD)).content.decode()
    assert "Paused (their tasks are accepted and wait)" in page and "by admin" in page
    assert 'name="action" value="resume"' in page
    admin_client.post(reverse(QUEUE), {"queue": "reports", "action": "resume"})
    assert queues.paused() == []
    assert list(Event.objects.values_list("kind", "actor")) == [
        ("queue_paused", "admin"),
        ("queue_resumed", "admin"),
    ]


def test_the_queue_button_takes_posts_only_and_says_what_is_wrong(
    admin_client: Client,
) -> None:
    assert admin_client.get(reverse(QUEUE), {"queue": "q", "action": "pause"}).status_code == 405
    response = admin_client.post(reverse(QUEUE), {"queue": "q", "action": "drop"}, follow=True)
    assert "must be pause or resume, got" in response.content.decode()
    response = admin_client.post(reverse(QUEUE), {"queue": "", "action": "pause"}, follow=True)
    assert "1 to 64 characters" in response.content.decode()
    assert not QueueState.objects.exists()


def test_staff_without_the_change_permission_cannot_pause(
    client: Client, django_user_model: Any
) -> None:
    from django.contrib.auth.models import Permission

    clerk = django_user_model.objects.create_user("clerk", password="pw", is_staff=True)
    clerk.user_permissions.add(Permission.objects.get(codename="view_task"))
    client.login(username="clerk", password="pw")
    page = client.get(reverse(DASHBOARD)).content.decode()
    assert 'value="pause"' not in page
    assert client.post(reverse(QUEUE), {"queue": "q", "action": "pause"}).status_code == 403
    assert not QueueState.objects.exists()


def test_the_queues_page_pauses_and_resumes_the_selected_queues(admin_client: Client) -> None:
    url = reverse("admin:leek_queuestate_changelist")
    added = admin_client.post(reverse("admin:leek_queuestate_add"), {"queue": "pdfs"})
    assert added.status_code == 302
    assert queues.paused() == []
    row = QueueState.objects.get(queue="pdfs")
    selected = {"_selected_action": [row.pk]}
    admin_client.post(url, {"action": "pause_queues", **selected})
    assert queues.paused() == ["pdfs"]
    assert "pdfs" in admin_client.get(url, {"paused__exact": "1"}).content.decode()
    admin_client.post(url, {"action": "resume_queues", **selected})
    assert queues.paused() == []


def test_the_status_filter_offers_expired_with_its_colour(admin_client: Client) -> None:
    make_task("expired", name="tests.tasks.gone")
    make_task("succeeded", name="tests.tasks.add")
    url = reverse("admin:leek_task_changelist")
    page = admin_client.get(url, {"status__exact": "expired"}).content.decode()
    rows = page.split('id="result_list"')[1].split("</table>")[0]
    assert "tests.tasks.gone" in rows and "tests.tasks.add" not in rows
    assert "#8d6e63" in rows
    assert "?status__exact=expired" in page
