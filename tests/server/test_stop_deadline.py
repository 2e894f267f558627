"""A stop that cannot hang: SHUTDOWN_TIMEOUT and a second stop signal end it at
once, with each thread's stack in the log, and lose nothing acknowledged."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, connections

import leek
from leek.models import FailedTask, Task
from tests import tasks
from tests.conftest import BOTH_POOLS, BrokerProcess, gone, wait_for
from tests.server.test_database_outage import _idle_backends

SETTINGS = "tests.server.observed_settings"


def running_once(
    broker_factory: Any, tmp_path: Path, pool: str, **env: str
) -> tuple[BrokerProcess, leek.TaskHandle, int]:
    """A broker running a task that sleeps a minute on its first run only;
    the broker, the task's handle and the pid of the process running it."""
    broker = broker_factory(LEEK_POOL=pool, **env)
    mark = tmp_path / "mark"
    handle = leek.enqueue(tasks.sleep_once, (str(mark), 60), max_retries=1)
    wait_for(lambda: mark.exists() and mark.read_text())
    wait_for(lambda: Task.objects.get(pk=handle.id).status == "running")  # its mark written
    return broker, handle, int(mark.read_text())


def runs_again(broker_factory: Any, broker: BrokerProcess, pool: str, handle: Any) -> None:
    """The next start on the same node runs the task cut short again; its
    first attempt counts as one cut short by a kill."""
    assert Task.objects.get(pk=handle.id).status == "running"
    broker_factory(port=broker.port, LEEK_POOL=pool)
    assert handle.result(timeout=30) == "ran again"
    cut = FailedTask.objects.get(task_id=handle.id)
    assert (cut.exc_type, cut.attempt) == ("leek.exceptions.WorkerLost", 1)


@BOTH_POOLS
def test_a_stop_held_by_a_receiver_ends_at_its_timeout(
    broker_factory: Any, tmp_path: Path, pool: str
) -> None:
    broker, handle, runner = running_once(
        broker_factory,
        tmp_path,
        pool,
        DJANGO_SETTINGS_MODULE=SETTINGS,
        SIGNALS_HANG="broker_stopping",
        LEEK_SHUTDOWN_GRACE="0.5",
        LEEK_SHUTDOWN_TIMEOUT="2",
    )
    assert broker.kill(signal.SIGTERM) == 1
    log = broker.output()
    assert "the stop overran SHUTDOWN_TIMEOUT (2 s): exiting now" in log
    assert "Thread MainThread" in log and "leek-deadline" in log
    assert "in _hung" in log  # the frame that held the stop, named
    assert "broker stopped" not in log
    if pool == "processes":
        wait_for(lambda: gone(runner), timeout=10)  # the worker process went with it
    runs_again(broker_factory, broker, pool, handle)


@BOTH_POOLS
def test_a_second_stop_signal_ends_the_stop_at_once(
    broker_factory: Any, tmp_path: Path, pool: str
) -> None:
    broker, handle, runner = running_once(
        broker_factory, tmp_path, pool, LEEK_SHUTDOWN_GRACE="60", LEEK_SHUTDOWN_TIMEOUT="90"
    )
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "stopping on signal=SIGTERM" in broker.output())
    assert broker.alive  # the task has 60 s to end
    assert broker.kill(signal.SIGINT) == 1
    log = broker.output()
    assert "a second stop signal=SIGINT during the stop: exiting now" in log
    assert "the tasks still running run again at the next start" in log
    if pool == "processes":
        wait_for(lambda: gone(runner), timeout=10)
    runs_again(broker_factory, broker, pool, handle)


@contextmanager
def frozen_database() -> Iterator[None]:
    """A database that takes no write: on SQLite, its file's write lock held
    by another process's transaction (a shell left in BEGIN IMMEDIATE, say);
    on PostgreSQL, every backend of the test database but this test's own
    stopped (SIGSTOP), as a server that hangs holds its connections open and
    answers nothing."""
    if connection.vendor == "sqlite":
        holder = sqlite3.connect(connection.settings_dict["NAME"], timeout=10)
        try:
            holder.execute("BEGIN IMMEDIATE")
            yield
        finally:
            holder.rollback()
            holder.close()
        return
    backends = _idle_backends()
    assert backends
    stopped = []
    try:
        for pid in backends:
            try:
                os.kill(pid, signal.SIGSTOP)
            except PermissionError:
                pytest.skip("the PostgreSQL server's processes are another user's")
            stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)


def test_a_stop_while_the_database_hangs_ends_within_its_timeout(
    broker_factory: Any, tmp_path: Path
) -> None:
    broker = broker_factory(LEEK_SHUTDOWN_GRACE="3", LEEK_SHUTDOWN_TIMEOUT="8")
    runs = tmp_path / "runs"
    handle = leek.push_task_to_queue(tasks.note_run, str(runs), 1.5)
    wait_for(lambda: Task.objects.get(pk=handle.id).status == "running")
    with frozen_database():
        assert broker.kill(signal.SIGTERM) == 0  # within 30 s: its waits end at its deadline
        log = broker.output()
        assert "the database did not take the last writes within the stop" in log
        assert "broker stopped" in log and "overran" not in log
        assert len(runs.read_text().splitlines()) == 1  # it ran; its outcome was never written
    broker_factory(port=broker.port)
    assert handle.result(timeout=30) == str(broker.port)
    assert len(runs.read_text().splitlines()) == 2  # at least once: it ran again


#: Stops of two brokers under load in the slow test.
ROUNDS = 6


def push_until(pushing: threading.Event, handles: list[Any]) -> None:
    """Push one task after another while `pushing` is set; keep the handles.
    The thread's own database connection (the spool's) is closed at its end."""
    try:
        while pushing.is_set():
            handles.append(leek.push_task_to_queue(tasks.add, len(handles), 1))
    finally:
        connections.close_all()


@pytest.mark.slow
def test_brokers_sharing_a_database_stop_in_time_under_load(
    broker_factory: Any, tmp_path: Path
) -> None:
    """Two brokers on one database, a periodic task each second on both and
    a client pushing throughout: each SIGTERM ends in a graceful stop, within
    its timeout, ROUNDS times over, and every push acknowledged or spooled runs."""
    tick = {"task": "tests.server.periodic_tasks.stamp", "every": 1}
    schedule = json.dumps({"tick": {**tick, "args": [str(tmp_path / "ticks")]}})
    handles: list[Any] = []
    for _ in range(ROUNDS):
        brokers = [broker_factory(LEEK_SCHEDULE=schedule) for _ in range(2)]
        pushing = threading.Event()
        pushing.set()
        pusher = threading.Thread(target=push_until, args=(pushing, handles))
        pusher.start()
        try:
            time.sleep(2.0)
            for broker in brokers:
                assert broker.kill(signal.SIGTERM) == 0, broker.output()
                log = broker.output()
                assert "overran" not in log and "did not take the last writes" not in log, log
        finally:
            pushing.clear()
            pusher.join()
    broker_factory()
    assert [h.result(timeout=60) for h in handles] == [i + 1 for i in range(len(handles))]
