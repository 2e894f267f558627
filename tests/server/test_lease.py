"""Liveness on the database's clock, and the lease of brokers that share a database."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.db import connection
from django.utils import timezone

import leek
from leek import queues
from leek.client import connection as client
from leek.liveness import alive, database_now
from leek.models import BrokerNode, Task
from leek.server.lease import Lease
from tests.conftest import wait_for
from tests.server import control_tasks
from tests.server.test_pauses import OBSERVE, paused_on

#: Short heartbeats, so that a silent broker is dead within seconds.
FAST = {"LEEK_HEARTBEAT_INTERVAL": "0.2", "LEEK_HEARTBEAT_TIMEOUT": "2", "LEEK_WORKERS": "1"}
#: Seconds a skewed broker's own clock runs behind: several HEARTBEAT_TIMEOUTs.
SKEW = "-10"
#: Seconds ahead a delayed task is due: past the adoption and the wake.
DELAY = 8.0


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def node(port: int) -> str:
    return f"{socket.gethostname()}:{port}"


def use(port: int, leek_settings: Any) -> None:
    """Point this test's client at the broker on `port`."""
    client.close()
    leek_settings(PORT=port)


def test_a_broker_whose_own_clock_runs_behind_is_not_adopted_by_another(
    broker_factory: Any, leek_settings: Any, tmp_path: Path
) -> None:
    queues.pause("slow", "test")
    skewed = broker_factory(**FAST, LEEK_TEST_CLOCK_SKEW=SKEW)
    wait_for(lambda: paused_on(skewed.port, ["slow"]))
    marks = tmp_path / "marks"
    held = [leek.enqueue(control_tasks.mark, (str(marks), f"t{i}"), queue="slow") for i in range(3)]
    other = broker_factory(**FAST)
    wait_for(lambda: paused_on(other.port, ["slow"]))
    time.sleep(2 * float(FAST["LEEK_HEARTBEAT_TIMEOUT"]))  # many sweeps of the other broker
    owners = set(Task.objects.filter(queue="slow").values_list("broker", flat=True))
    assert owners == {node(skewed.port)}
    use(skewed.port, leek_settings)
    assert leek.ping() == (True, "I'm OK")
    queues.resume("slow", "test")
    assert sorted(h.result(timeout=20) for h in held) == ["t0", "t1", "t2"]
    assert sorted(lines(marks)) == ["t0", "t1", "t2"]


def test_a_heartbeat_is_stamped_in_the_form_the_orm_writes_and_compares_with_it(
    broker_factory: Any,
) -> None:
    broker = broker_factory(**FAST, LEEK_TEST_CLOCK_SKEW=SKEW)
    name = node(broker.port)
    if connection.vendor == "sqlite":  # text there: Django's own form, which sorts as time
        with connection.cursor() as cursor:
            cursor.execute("SELECT heartbeat_at || '' FROM leek_brokernode WHERE name = %s", [name])
            (text,) = cursor.fetchone()
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", text), text
    now = timezone.now()  # this process's clock, not the broker's (skewed) one
    rows = BrokerNode.objects.filter(name=name)
    assert rows.filter(heartbeat_at__gt=now - timedelta(seconds=int(SKEW) / -2)).exists()
    assert not rows.filter(heartbeat_at__gt=now + timedelta(minutes=1)).exists()
    assert rows.filter(alive(float(FAST["LEEK_HEARTBEAT_TIMEOUT"]))).exists()
    assert database_now() - rows.get().heartbeat_at < timedelta(seconds=-int(SKEW) / 2)


def test_a_paused_broker_whose_tasks_were_adopted_runs_none_of_them_when_it_wakes(
    broker_factory: Any, leek_settings: Any, tmp_path: Path
) -> None:
    queues.pause("slow", "test")
    first = broker_factory(**FAST)
    wait_for(lambda: paused_on(first.port, ["slow"]))
    marks = tmp_path / "marks"
    held = [
        leek.enqueue(control_tasks.mark, (str(marks), f"held{i}"), queue="slow") for i in range(5)
    ]
    # And one in its heap of delayed tasks, due after the first broker wakes.
    held.append(leek.enqueue(control_tasks.mark, (str(marks), "later"), queue="slow", delay=DELAY))
    ids = [h.id for h in held]
    assert first.proc is not None
    os.kill(first.proc.pid, signal.SIGSTOP)
    try:
        second = broker_factory(**FAST)
        wait_for(
            lambda: (
                set(Task.objects.filter(pk__in=ids).values_list("broker", flat=True))
                == {node(second.port)}
            )
        )
    finally:
        os.kill(first.proc.pid, signal.SIGCONT)
    # The first broker still holds the five in memory; it learns that they are
    # no longer its own before it starts any task.
    wait_for(lambda: "lease regained dropped=6" in first.output())
    assert "lease lost: no heartbeat committed for" in first.output()
    queues.resume("slow", "test")
    assert sorted(h.result(timeout=20) for h in held) == [*(f"held{i}" for i in range(5)), "later"]
    use(first.port, leek_settings)
    fresh = leek.enqueue(control_tasks.mark, (str(marks), "fresh"), queue="slow")
    assert fresh.result(timeout=20) == "fresh"
    assert leek.ping() == (True, "I'm OK")
    time.sleep(OBSERVE)  # time for a second run of any of the five to show
    assert sorted(lines(marks)) == sorted([*(f"held{i}" for i in range(5)), "later", "fresh"])
    assert Task.objects.get(pk=fresh.id).broker == node(first.port)
    assert BrokerNode.objects.get(name=node(first.port)).healthy


def test_a_lease_lost_while_a_heartbeat_was_under_way_is_still_told(caplog: Any) -> None:
    # The process stops after a heartbeat began (its tell() found the lease
    # held) and wakes past the lease's end: no heartbeat began meanwhile, and
    # the loss must still be logged before the lease is regained.
    lease = Lease(timeout=0.2, interval=0.05)
    lease.committed(time.monotonic(), lambda: 0)
    lease.tell()  # the heartbeat begins, the lease held
    sent = time.monotonic()
    time.sleep(lease.length + 0.1)  # stopped past the lease's end
    with caplog.at_level("WARNING", logger="leek.server.lease"):
        lease.committed(sent, lambda: 3)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("lease lost: no heartbeat committed for")
    assert messages[1] == "lease regained dropped=3: tasks resume"
