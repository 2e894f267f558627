"""Graceful reload: SIGHUP and `leek reload` drain the broker and execute it again,
on the same listening socket, losing no task and running none twice."""

from __future__ import annotations

import collections
import signal
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

import leek
from leek.models import BrokerNode, Task
from tests import tasks
from tests.conftest import BOTH_POOLS, BrokerProcess, leek_cli, wait_for
from tests.protocol.wire import exchange, messages, refusal
from tests.server.test_replay import captured


class Pusher:
    """A thread pushing tasks that each leave their own line in a file, until stopped.

    Every push must return a handle: committed by a broker, or written to the
    database by the client when none answered in time (then a broker sweeps it)."""

    def __init__(self, path: Path, interval: float = 0.02) -> None:
        self.path = path
        self.interval = interval
        self.handles: list[Any] = []
        self.errors: list[BaseException] = []
        self.marks: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Pusher:
        self._thread.start()
        return self

    def _run(self) -> None:
        from leek.client import connection as client

        try:
            while not self._done.is_set():
                mark = uuid.uuid4().hex
                try:
                    self.handles.append(
                        leek.push_task_to_queue(tasks.append_line, str(self.path), mark)
                    )
                    self.marks.append(mark)
                except Exception as exc:
                    self.errors.append(exc)
                time.sleep(self.interval)
        finally:
            client.close()
            connection.close()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(60)

    def pushed(self) -> int:
        return len(self.handles)


def ran_once(path: Path, marks: list[str]) -> None:
    """Every mark's task ran, and ran once."""
    lines = collections.Counter(path.read_text().split()) if path.exists() else {}
    missing = [m for m in marks if lines.get(m, 0) == 0]
    twice = [m for m in marks if lines.get(m, 0) > 1]
    assert not missing and not twice, (len(missing), len(twice), len(marks))


def started(broker: BrokerProcess) -> float:
    ok, stats = leek.stats()
    assert ok, stats
    return float(stats["started"])


def reloaded(before: float) -> bool:
    ok, stats = leek.stats()
    return ok and float(stats["started"]) != before


def check_reload(broker: BrokerProcess, tmp_path: Path, reload: Any) -> None:
    """A task runs through the reload, queued tasks wait for the new life, and
    pushes made meanwhile each run once."""
    node = BrokerNode.objects.get(port=broker.port)
    marks = tmp_path / "marks.txt"
    running = leek.push_task_to_queue(tasks.sleep_once, str(tmp_path / "ran"), 1.5)
    wait_for(lambda: running.status() == "running")
    queued = [leek.push_task_to_queue(tasks.add, i, i) for i in range(5)]
    before = started(broker)
    pusher = Pusher(marks).start()
    wait_for(lambda: pusher.pushed() >= 3)
    reload()
    wait_for(lambda: reloaded(before), timeout=60, interval=0.1)
    during = pusher.pushed()
    wait_for(lambda: pusher.pushed() >= during + 10)
    pusher.stop()
    assert not pusher.errors, pusher.errors

    assert running.result(timeout=30) == "first run"  # it finished in the old life, once
    assert Task.objects.get(id=running.id).attempts == 1
    assert [h.result(timeout=30) for h in queued] == [2 * i for i in range(5)]
    for handle in pusher.handles:
        handle.result(timeout=60)
    ran_once(marks, pusher.marks)

    assert broker.alive  # the same process, executed again: the same pid
    ok, stats = leek.stats()
    assert ok and stats["node"] == node.name and stats["pid"] == broker.proc.pid  # type: ignore[union-attr]
    assert stats["reloads"]["count"] == 1
    row = BrokerNode.objects.get(name=node.name)
    assert row.port == broker.port and row.pid == broker.proc.pid and not row.stopped  # type: ignore[union-attr]
    assert "broker reloaded" in broker.output()


@BOTH_POOLS
def test_sighup_lets_the_running_task_finish_and_keeps_every_task(
    broker_factory: Any, pool: str, tmp_path: Path
) -> None:
    broker = broker_factory(LEEK_POOL=pool, LEEK_WORKERS="1")

    def hangup() -> None:
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGHUP)

    check_reload(broker, tmp_path, hangup)


@BOTH_POOLS
def test_leek_reload_does_the_same_and_waits_for_the_new_life(
    broker_factory: Any, pool: str, tmp_path: Path
) -> None:
    broker = broker_factory(LEEK_POOL=pool, LEEK_WORKERS="1")
    done: list[Any] = []
    thread = threading.Thread(
        target=lambda: done.append(leek_cli(broker.port, "reload", "--wait", "60"))
    )

    def reload() -> None:
        thread.start()

    check_reload(broker, tmp_path, reload)
    thread.join(60)
    assert done and done[0].returncode == 0, done
    assert "broker reloaded" in done[0].stdout


def test_leek_reload_wait_fails_when_the_broker_is_not_back_in_time(
    broker_factory: Any,
) -> None:
    broker = broker_factory(LEEK_WORKERS="1")
    # Long enough that it still runs when the reload comes, however late its
    # running mark shows on a busy host (a 3 s task had ended by then in CI).
    handle = leek.push_task_to_queue(tasks.sleep, 8.0)
    wait_for(lambda: handle.status() == "running")
    done = leek_cli(broker.port, "reload", "--wait", "0.5")
    assert done.returncode == 1, done
    assert "the broker did not serve again within 0.5 s" in done.stdout + done.stderr
    assert handle.result(timeout=30) == 8.0
    wait_for(lambda: "broker reloaded" in broker.output())


def test_no_connection_is_refused_during_a_reload(broker_factory: Any) -> None:
    # The listening socket outlives the exec: a connection made meanwhile
    # waits in its backlog.
    broker = broker_factory(LEEK_WORKERS="1")
    handle = leek.push_task_to_queue(tasks.sleep, 1.0)
    wait_for(lambda: handle.status() == "running")
    before = started(broker)
    refused: list[BaseException] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            try:
                with socket.create_connection(("127.0.0.1", broker.port), timeout=5):
                    pass
            except OSError as exc:
                refused.append(exc)
            time.sleep(0.01)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: reloaded(before), timeout=60, interval=0.1)
    done.set()
    thread.join(10)
    assert not refused, refused[:3]
    assert handle.result(timeout=20) == 1.0


def test_a_reload_frame_replayed_to_the_new_life_is_refused(broker_factory: Any) -> None:
    broker = broker_factory()
    frame = captured("reload", {})
    before = started(broker)
    assert messages(exchange(broker.port, frame)) == [(1, True, "reloading")]
    wait_for(lambda: reloaded(before), timeout=60, interval=0.1)
    again = started(broker)
    # The same bytes, sent to the new life within the window: stamped before it started.
    assert refusal(exchange(broker.port, frame)) == "StaleFrame"
    time.sleep(0.5)
    assert started(broker) == again and leek.stats()[1]["reloads"]["count"] == 1
    assert "before this broker started" in broker.output()


def test_a_second_sighup_during_the_reload_does_not_kill_the_broker(
    broker_factory: Any, tmp_path: Path
) -> None:
    broker = broker_factory(LEEK_WORKERS="1")
    handle = leek.push_task_to_queue(tasks.sleep, 1.0)
    wait_for(lambda: handle.status() == "running")
    before = started(broker)
    assert broker.proc is not None
    for _ in range(20):  # during the drain, the exec, the new life's start
        broker.proc.send_signal(signal.SIGHUP)
        time.sleep(0.1)
    wait_for(lambda: reloaded(before), timeout=60, interval=0.1)
    assert broker.alive
    assert handle.result(timeout=20) == 1.0
    assert leek.push_task_to_queue(tasks.add, 1, 2).result(timeout=20) == 3


@pytest.mark.parametrize("how", ["SIGTERM", "leek stop"])
def test_a_stop_during_the_drain_stops_the_broker_instead(broker_factory: Any, how: str) -> None:
    broker = broker_factory(LEEK_WORKERS="1")
    handle = leek.push_task_to_queue(tasks.sleep, 1.5)
    wait_for(lambda: handle.status() == "running")
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reloading reason" in broker.output())
    if how == "SIGTERM":
        broker.proc.send_signal(signal.SIGTERM)
    else:
        assert leek.stop() == (True, "stopping")
    assert broker.proc.wait(30) == 0
    assert handle.result(timeout=10) == 1.5
    assert BrokerNode.objects.get(port=broker.port).stopped


@pytest.mark.slow
@pytest.mark.postgresql
def test_a_rolling_reload_of_three_brokers_under_load_runs_every_task_once(
    broker_factory: Any, leek_settings: Any, tmp_path: Path
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("several brokers share PostgreSQL")
    brokers = [broker_factory(LEEK_WORKERS="2") for _ in range(3)]
    leek_settings(PORT=brokers[0].port, BROKERS=[f"127.0.0.1:{b.port}" for b in brokers[1:]])
    marks = tmp_path / "marks.txt"
    pushers = [Pusher(marks, interval=0.01).start() for _ in range(3)]
    wait_for(lambda: sum(p.pushed() for p in pushers) >= 50)
    for broker in brokers:
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGHUP)
        wait_for(lambda b=broker: "broker reloaded" in b.output(), timeout=60, interval=0.1)  # type: ignore[misc]
        count = sum(p.pushed() for p in pushers)
        wait_for(lambda c=count: sum(p.pushed() for p in pushers) >= c + 50)  # type: ignore[misc]
    for pusher in pushers:
        pusher.stop()
        assert not pusher.errors, pusher.errors
    for broker in brokers:
        assert broker.alive
    handles = [h for p in pushers for h in p.handles]
    for handle in handles:
        handle.result(timeout=120)
    ran_once(marks, [m for p in pushers for m in p.marks])
