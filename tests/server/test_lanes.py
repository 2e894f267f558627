"""Queues as lanes: their own workers and pool, and brokers that serve some queues only."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from django.core import checks
from django.test import Client
from django.urls import reverse

import leek
from leek.models import BrokerNode, Task
from tests import tasks
from tests.conftest import wait_for


def test_a_queue_of_its_own_is_not_held_up_by_another(broker_factory: Any) -> None:
    broker_factory(LEEK_WORKERS="1", LEEK_QUEUES=json.dumps({"slow": {"workers": 1}}))
    slow = leek.enqueue(tasks.sleep, (3,), queue="slow")
    wait_for(lambda: slow.status() == "running")
    started = time.monotonic()
    assert leek.push_task_to_queue(tasks.add, 1, 1).result(timeout=10) == 2
    assert time.monotonic() - started < 2.5  # not behind the slow task
    lanes = leek.stats()[1]["queues"]
    assert lanes["slow"]["workers"] == 1 and lanes["slow"]["busy"] == 1
    assert lanes["*"]["workers"] == 1
    assert slow.result(timeout=10) == 3


def test_a_lane_runs_in_its_own_pool(broker_factory: Any) -> None:
    broker = broker_factory(
        LEEK_QUEUES=json.dumps({"pdfs": {"workers": 1, "pool": "processes"}}),
    )
    assert broker.proc is not None
    in_lane = leek.enqueue(tasks.pid, queue="pdfs").result(timeout=30)
    default = leek.push_task_to_queue(tasks.pid).result(timeout=30)
    assert default == broker.proc.pid and in_lane != broker.proc.pid
    assert leek.stats()[1]["queues"]["pdfs"]["pool"] == "processes"


def test_a_task_runs_only_on_a_broker_that_serves_its_queue(broker_factory: Any) -> None:
    pdfs = broker_factory(args=("--queues", "pdfs"))
    default = broker_factory(args=("--queues", "default"))  # the client pushes to this one
    handle = leek.enqueue(tasks.add, (2, 3), queue="pdfs")
    assert handle.result(timeout=30) == 5
    task = Task.objects.get(pk=handle.id)
    assert task.broker.endswith(f":{pdfs.port}"), task.broker
    assert leek.push_task_to_queue(tasks.add, 1, 1).result(timeout=30) == 2
    assert Task.objects.filter(queue="default").get().broker.endswith(f":{default.port}")


def test_a_queue_no_live_broker_serves_is_reported(
    broker_factory: Any, admin_client: Client
) -> None:
    broker_factory(args=("--queues", "default"))
    handle = leek.enqueue(tasks.add, (1, 2), queue="reports")
    wait_for(lambda: Task.objects.filter(pk=handle.id, broker="", spooled=True).exists())
    assert leek.stats()[1]["unserved_queues"] == ["reports"]
    assert BrokerNode.objects.get().queues["default"]["workers"] == 2
    page = admin_client.get(reverse("admin:leek_task_dashboard")).content.decode()
    assert "Tasks wait in queue reports, and no live broker serves it" in page
    assert "default: 2 threads" in page  # each broker's lanes
    assert handle.status() == "queued"


@pytest.mark.django_db  # the model checks read the database on Django 6
def test_the_lanes_are_checked(settings: Any) -> None:
    settings.LEEK = {"POOL": "fork", "QUEUES": {"pdfs": {"workers": -1}, "mail": {"pol": 1}}}
    ids = [(m.id, m.msg) for m in checks.run_checks() if m.id and m.id.startswith("leek.")]
    assert ("leek.E006", "LEEK['POOL'] is 'fork'.") in ids
    messages = [msg for code, msg in ids if code == "leek.E007"]
    assert any("'pdfs'" in m and "workers -1" in m for m in messages), messages
    assert any("'mail'" in m and "unknown keys pol" in m for m in messages), messages
