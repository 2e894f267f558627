"""Accepted means committed: SIGKILL right after the acknowledgements loses none."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.db import connection as db

import leek
from leek.client import connection
from leek.models import Task
from tests import tasks
from tests.conftest import BrokerProcess


def test_sigkill_after_acknowledging_loses_no_task(broker_factory: Any) -> None:
    broker: BrokerProcess = broker_factory(LEEK_WORKERS="1")
    gate = leek.push_task_to_queue(tasks.sleep, 30)  # keeps the rest waiting
    acknowledged: list[str] = []
    lock = threading.Lock()

    def push() -> None:
        for _ in range(100):
            handle = leek.push_task_to_queue(tasks.noop)
            with lock:
                acknowledged.append(str(handle.id))
        connection.close()
        db.close()

    threads = [threading.Thread(target=push) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    broker.kill(signal.SIGKILL)
    stored = {str(i) for i in Task.objects.values_list("id", flat=True)}
    assert set(acknowledged) <= stored
    assert len(acknowledged) == 300
    assert str(gate.id) in stored


def test_the_sqlite_log_stays_bounded_under_a_stream_of_commits(broker: BrokerProcess) -> None:
    import os

    import pytest

    if db.vendor != "sqlite":
        pytest.skip("SQLite's write-ahead log")
    wal = f"{db.settings_dict['NAME']}-wal"
    for _ in range(3000):  # one commit each: unchecked, the log would pass 100 MB
        leek.push_task_to_queue(tasks.noop)
    connection.close()
    assert os.path.getsize(wal) < 40 * 1024 * 1024
    assert "database write failed" not in broker.output()


def test_workers_wait_while_too_many_outcomes_wait_to_be_written(transactional_db: Any) -> None:
    import time
    import uuid

    from leek.server import groupcommit
    from leek.server.store import Store

    store = Store("test-node", lambda ready: None)
    for _ in range(groupcommit.BACKLOG_LIMIT):  # a drain faster than its writes
        store.mark_running(uuid.uuid4(), 1, time.time() - 1, 0)
    store.nudge()  # the marks, due, go to the lane
    assert not store.room(timeout=0.2)  # the writer thread has not started
    store.start()
    try:
        assert store.room(timeout=30)
        assert store.outcomes.backlog < groupcommit.BACKLOG_LIMIT // 2
    finally:
        store.stop()
