"""A chain's steps on its tasks' pages, and together in the task list."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client
from django.urls import reverse

from tests.admin.factories import make_task

pytestmark = pytest.mark.django_db


def test_a_steps_page_lists_its_chain_in_the_order_the_steps_run(admin_client: Client) -> None:
    chain = uuid.uuid4()
    last = make_task("waiting", name="tests.tasks.third", chain=chain)
    middle = make_task("queued", name="tests.tasks.second", chain=chain, next_step=last.id)
    first = make_task("succeeded", name="tests.tasks.first", chain=chain, next_step=middle.id)
    page = admin_client.get(reverse("admin:leek_task_change", args=[middle.pk])).content.decode()
    steps = page.split('class="leek-steps"')[1].split("</table>")[0]
    assert steps.index("first") < steps.index("second") < steps.index("third")
    assert "second</a> (this task)" in steps and "#7b6fa6" in steps  # waiting's colour
    assert reverse("admin:leek_task_change", args=[first.pk]) in steps


def test_the_task_list_shows_one_chains_steps_together(admin_client: Client) -> None:
    chain = uuid.uuid4()
    make_task("succeeded", name="tests.tasks.step_one", chain=chain)
    make_task("waiting", name="tests.tasks.step_two", chain=chain)
    make_task("succeeded", name="tests.tasks.lone")
    response = admin_client.get(reverse("admin:leek_task_changelist"), {"chain": str(chain)})
    assert response.status_code == 200
    rows = response.content.decode().split('id="result_list"')[1].split("</table>")[0]
    assert "step_one" in rows and "step_two" in rows and "lone" not in rows


def test_a_lone_tasks_page_shows_no_steps(admin_client: Client) -> None:
    task = make_task("succeeded")
    page = admin_client.get(reverse("admin:leek_task_change", args=[task.pk])).content.decode()
    assert 'class="leek-steps"' not in page
