"""The dashboard's brokers table, with real brokers on one database."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from leek import cluster
from tests.admin.factories import make_node, make_task
from tests.cli.test_cluster import two_brokers
from tests.conftest import BrokerFactory, wait_for

SHORT = {"LEEK_HEARTBEAT_INTERVAL": "0.2", "LEEK_HEARTBEAT_TIMEOUT": "2", "LEEK_CODE_VERSION": "v7"}


def staff(client: Client, django_user_model: Any) -> Client:
    """`client` logged in as staff allowed to view tasks, and no more."""
    clerk = django_user_model.objects.create_user("clerk", password="pw", is_staff=True)
    clerk.user_permissions.add(Permission.objects.get(codename="view_task"))
    client.login(username="clerk", password="pw")
    return client


def broker_row(page: str, name: str) -> str:
    """The HTML of the brokers table's row of `name`."""
    table = page.split('id="leek-brokers"')[1].split("</table>")[0]
    (row,) = [tr for tr in table.split("<tr")[1:] if f"</span>{name}" in tr]
    return re.sub(r"\s+", " ", row)


def test_the_dashboard_shows_each_brokers_address_busy_workers_heartbeat_and_tasks_owned(
    broker_factory: BrokerFactory,
    client: Client,
    django_user_model: Any,
    leek_settings: Callable[..., None],
) -> None:
    leek_settings(CODE_VERSION="v7", HEARTBEAT_TIMEOUT=2.0)
    brokers = two_brokers(broker_factory, **SHORT)
    busy, idle = brokers.name(brokers.busy), brokers.name(brokers.idle)
    viewer = staff(client, django_user_model)

    page = viewer.get(reverse("admin:leek_task_dashboard")).content.decode()
    row = broker_row(page, busy)
    assert 'class="leek-node-alive"' in row
    assert f"<td>127.0.0.1:{brokers.busy.port}</td>" in row
    assert '<td class="num leek-busy">1/1</td>' in row
    assert ">3<br><small>2 queued, 1 running</small>" in row
    assert "<td>v7</td>" in row
    assert re.search(r"<td>\d+ s ago</td>", row)
    row = broker_row(page, idle)
    assert '<td class="num leek-busy">0/2</td>' in row
    assert ">0<br><small>0 queued, 0 running</small>" in row

    brokers.busy.kill(signal.SIGKILL)
    wait_for(lambda: not {b.name: b for b in cluster.read(2.0).brokers}[busy].alive)
    page = viewer.get(reverse("admin:leek_task_dashboard")).content.decode()
    row = broker_row(page, busy)
    assert 'class="leek-node-dead"' in row and "silent" in row
    assert 'class="leek-node-alive"' in broker_row(page, idle)


@pytest.mark.django_db
def test_the_dashboard_counts_the_unfinished_tasks_that_no_listed_broker_owns(
    admin_client: Client,
) -> None:
    make_node("web1:8002", workers_busy=1)
    make_task("running", broker="web1:8002")
    make_task("queued")  # spooled: nobody's yet
    make_task("queued", broker="purged:8002")
    make_task("succeeded", broker="purged:8002")
    page = admin_client.get(reverse("admin:leek_task_dashboard")).content.decode()
    row = broker_row(page, "web1:8002")
    assert '<td class="num leek-busy">1/4</td>' in row
    assert ">1<br><small>0 queued, 1 running</small>" in row
    assert "2 unfinished tasks owned by no broker listed" in page
