"""One live broker per node name: a namesake refuses to start, a dead one is replaced."""

from __future__ import annotations

import signal
import socket
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.db import connection as db
from django.utils import timezone

import leek
from leek.models import BrokerNode, Task
from tests import tasks
from tests.conftest import BrokerProcess, free_port, leek_cli, wait_for


def test_a_broker_under_a_live_brokers_name_refuses_to_start_and_touches_nothing(
    broker_factory: Any, leek_settings: Any
) -> None:
    first: BrokerProcess = broker_factory(LEEK_NODE_NAME="shared")
    handle = leek.push_task_to_queue(tasks.sleep, 1.5)
    wait_for(lambda: handle.status() == "running")

    second: BrokerProcess = broker_factory(wait=False, LEEK_NODE_NAME="shared")
    assert second.proc is not None
    assert second.proc.wait(30) == 1
    machine = BrokerNode.objects.get().hostname
    assert (
        f"error: a live broker already runs as node 'shared' (machine {machine}, "
        f"address 127.0.0.1:{first.port}" in second.output()
    )
    assert "give each broker its own LEEK_NODE_NAME" in second.output()

    # The refused broker recovered nothing: the first one's task runs once, to its end.
    leek_settings(PORT=first.port)
    assert handle.result(timeout=20) == 1.5
    assert Task.objects.get().attempts == 1
    assert leek.ping() == (True, "I'm OK")


def test_a_broker_killed_on_this_machine_restarts_under_its_name_at_once(
    broker_factory: Any,
) -> None:
    # Its heartbeat is recent, but its process is gone: no heartbeat to wait
    # for (at this interval, watching it would outlast the start's timeout).
    port = free_port()
    slow = {"LEEK_HEARTBEAT_INTERVAL": "60", "LEEK_HEARTBEAT_TIMEOUT": "120", "LEEK_WORKERS": "0"}
    first: BrokerProcess = broker_factory(port=port, **slow)
    handle = leek.push_task_to_queue(tasks.add, 2, 3)
    first.kill(signal.SIGKILL)
    row = BrokerNode.objects.get()
    assert not row.stopped and timezone.now() - row.heartbeat_at < timedelta(seconds=30)
    broker_factory(port=port, LEEK_HEARTBEAT_INTERVAL="60", LEEK_HEARTBEAT_TIMEOUT="120")
    assert handle.result(timeout=20) == 5


def test_a_namesake_elsewhere_whose_heartbeat_stands_still_is_replaced(
    broker_factory: Any,
) -> None:
    # A broker of another machine died a moment ago under this name: its row
    # is recent, and the new broker takes the name (and its tasks) once it has
    # seen the heartbeat stand still.
    now = timezone.now()
    BrokerNode.objects.create(
        name="shared",
        hostname="elsewhere",
        host="10.0.0.9",
        port=8002,
        pid=4242,
        version="1",
        started_at=now - timedelta(minutes=5),
        heartbeat_at=now,
    )
    left = Task.objects.create(
        name="tests.tasks.add",
        payload=_payload(tasks.add, 20, 22),
        queued_at=now,
        status="queued",
        broker="shared",
    )
    broker_factory(LEEK_NODE_NAME="shared")
    assert leek.TaskHandle(left.id).result(timeout=20) == 42
    assert BrokerNode.objects.get().hostname != "elsewhere"


def test_a_running_broker_whose_name_another_process_writes_turns_unhealthy(
    broker_factory: Any,
) -> None:
    broker: BrokerProcess = broker_factory(
        LEEK_NODE_NAME="shared", LEEK_HEARTBEAT_INTERVAL="0.2", LEEK_HEARTBEAT_TIMEOUT="2"
    )
    wait_for(lambda: BrokerNode.objects.filter(name="shared").exists())
    # Another process, on another machine, writes the row as its own
    # heartbeat, every HEARTBEAT_INTERVAL, until told to stop: the `leek`
    # command below takes longer than HEARTBEAT_TIMEOUT to start on a busy host.
    stop = threading.Event()

    def other() -> None:
        try:
            while not stop.wait(0.2):
                BrokerNode.objects.filter(name="shared").update(hostname="elsewhere", pid=4242)
        finally:
            db.close()

    writer = threading.Thread(target=other)
    BrokerNode.objects.filter(name="shared").update(hostname="elsewhere", pid=4242)
    writer.start()

    def unhealthy() -> str | None:
        ok, message = leek.ping()
        return None if ok else message

    try:
        message = wait_for(unhealthy, timeout=10)
        assert message.startswith("another broker also runs as node 'shared' (machine elsewhere")
        ping = leek_cli(broker.port, "ping")
    finally:
        stop.set()
        writer.join(10)
    assert ping.returncode == 1 and "another broker also runs as node 'shared'" in ping.stdout
    assert "another broker also runs as node 'shared'" in broker.output()
    # Once no other process has written the row for HEARTBEAT_TIMEOUT, it is healthy again.
    wait_for(leek.ping, equals=(True, "I'm OK"), timeout=10)


def test_start_on_an_address_in_use_says_so(broker: BrokerProcess) -> None:
    result = leek_cli(broker.port, "start")
    assert result.returncode == 1
    assert (
        result.stderr
        == f"error: cannot listen on 127.0.0.1:{broker.port}: Address already in use\n"
    )


def test_start_without_a_database_says_so(tmp_path: Path) -> None:
    # A file in a directory that does not exist (SQLite), or a database the
    # server does not have (PostgreSQL): either way nothing can be read.
    gone = str(tmp_path / "gone" / "leek.sqlite3") if db.vendor == "sqlite" else "leek_gone"
    result = leek_cli(free_port(), "start", LEEK_BROKER_TEST_DB=gone)
    assert result.returncode == 1
    assert result.stderr.startswith("error: database unavailable at start: OperationalError: ")
    assert result.stderr.count("\n") == 1  # one line, no traceback


def test_start_with_a_port_option_names_the_broker_after_that_port(
    broker_factory: Any,
) -> None:
    # The same environment (LEEK_PORT) for both, another port on the command line.
    first: BrokerProcess = broker_factory()
    other = free_port()
    broker_factory(port=other, args=("--port", str(other)), LEEK_PORT=str(first.port))
    names = set(BrokerNode.objects.values_list("name", flat=True))
    assert names == {f"{socket.gethostname()}:{first.port}", f"{socket.gethostname()}:{other}"}


def _payload(fn: Any, *args: Any) -> bytes:
    from leek.protocol.payload import dump_task

    return dump_task(fn, args, {})
