"""A wait that gives up never strands a write that commits after it.

Each test holds the broker's writes from a connection of its own, so that
one write of the broker waits for the database and the next queues behind it
past WRITE_WAIT. When the test lets go, that write commits: what it did (a
sweep's claim, a periodic run, a cancel) must take effect without a restart.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections

import leek
from leek.client import connection as client
from leek.client.spool import spool
from leek.models import PeriodicTask, Task
from leek.server.store import Store
from tests import tasks
from tests.conftest import BrokerFactory, BrokerProcess, task_message, wait_for

STAMP = "tests.server.periodic_tasks.stamp"


@contextmanager
def writes_held(*tables: str) -> Iterator[None]:
    """Hold the broker's writes from a connection of the test's own: SQLite's
    write lock, or on PostgreSQL `tables` locked against writes (reads go on)."""
    if connection.vendor == "sqlite":
        holder = sqlite3.connect(str(connection.settings_dict["NAME"]), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    other = connections.create_connection(DEFAULT_DB_ALIAS)
    other.ensure_connection()
    try:
        with other.connection.transaction():
            other.connection.execute(f"LOCK TABLE {', '.join(tables)} IN EXCLUSIVE MODE")
            yield
    finally:
        other.close()


def wait_until_a_write_waits() -> None:
    """Until a write of the broker waits for the lock of `writes_held`, so the
    writes after it queue behind it."""
    if connection.vendor == "sqlite":
        # SQLite shows no writer waiting: give the write that leads (a
        # heartbeat, or the sweep a test sent) time to reach the lock.
        time.sleep(1.0)
        return
    waiting = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )

    def one_waits() -> bool:
        with connection.cursor() as cursor:
            cursor.execute(waiting)
            return bool(cursor.fetchone()[0])

    wait_for(one_waits)


def sweeping() -> threading.Thread:
    """A `sweep` sent on a thread of its own, started now: once the writes
    are held, a write of the broker's tasks lane that leads the writer and
    waits for the lock. Join it after letting go."""
    thread = threading.Thread(target=_sweep)
    thread.start()
    return thread


def _sweep() -> None:
    try:
        client.call("sweep", {})
    finally:
        client.close()


def started(broker_factory: BrokerFactory, heartbeat: str) -> BrokerProcess:
    """A broker with a short WRITE_WAIT, heartbeats every `heartbeat` seconds
    and no sweeps of its own after the first; its SQLite writes wait for the
    lock longer than any test holds it (they wait rather than fail). The
    heartbeat timeout is long enough for any interval a test gives."""
    return broker_factory(
        LEEK_WRITE_WAIT="0.5",
        LEEK_HEARTBEAT_INTERVAL=heartbeat,
        LEEK_HEARTBEAT_TIMEOUT="600",
        LEEK_SWEEP_INTERVAL="3600",
        SQLITE_TIMEOUT="60",
    )


def test_a_thread_waiting_for_a_write_gives_up_at_its_wait_even_as_the_first_writer(
    transactional_db: Any,
) -> None:
    # No other write leads: the caller's own is the first to meet the lock.
    # Were it written on the caller's thread, the caller would wait out the
    # database's timeout (20 s on SQLite here), not its own.
    store = Store("test-node", lambda ready: None)
    store.start()
    gave_up: list[BaseException] = []

    def touch(cursor: Any, dialect: Any) -> None:
        cursor.execute("UPDATE leek_task SET priority = priority WHERE 1 = 0")

    def wait() -> None:
        try:
            store.call(touch).wait(0.5)
        except TimeoutError as exc:
            gave_up.append(exc)

    waiter = threading.Thread(target=wait)
    try:
        with writes_held("leek_task"):
            waiter.start()
            waiter.join(10)
            assert not waiter.is_alive(), "the wait outlasted its 0.5 s while the write waited"
        assert len(gave_up) == 1
        assert store.call(lambda cursor, dialect: "written").wait(10) == "written"
    finally:
        waiter.join(30)
        store.stop()


def test_a_sweep_whose_claim_commits_after_its_wait_still_runs_what_it_claimed(
    broker_factory: BrokerFactory,
) -> None:
    broker = started(broker_factory, heartbeat="0.2")
    message = task_message(tasks.add, 2, 3)
    spool([message])  # committed; no sweep of the broker's own comes meanwhile
    with writes_held("leek_task", "leek_brokernode"):
        wait_until_a_write_waits()  # the heartbeat holds the writer
        assert client.call("sweep", {}) == 0  # its claim queued behind, past its wait
        assert "sweep not committed within 0.5s" in broker.output()
    task_id = uuid.UUID(message["id"])
    wait_for(lambda: Task.objects.get(pk=task_id).status == "succeeded")
    assert "after the sweep's wait" in broker.output()


def test_a_periodic_run_claimed_after_its_wait_still_runs(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    broker = started(broker_factory, heartbeat="120")
    row = PeriodicTask.objects.create(
        name="tick", task=STAMP, args=[str(tmp_path / "marks")], every=1
    )
    runs = Task.objects.filter(name=STAMP)
    wait_for(lambda: runs.filter(status="succeeded").exists())
    before = runs.count()
    with writes_held("leek_task"):
        sweep = sweeping()
        wait_until_a_write_waits()
        wait_for(lambda: "periodic tasks paused error=TimeoutError" in broker.output())
    sweep.join(30)
    # The claim that gave up commits now, and its run is routed to a worker.
    wait_for(lambda: "periodic task pushed after the claim's wait" in broker.output())

    def all_ran() -> bool:
        statuses = list(runs.values_list("status", flat=True))
        return len(statuses) > before and set(statuses) == {"succeeded"}

    wait_for(all_ran)
    PeriodicTask.objects.filter(pk=row.pk).update(enabled=False)


def test_a_cancel_committed_after_its_wait_still_keeps_the_task_from_running(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    started(broker_factory, heartbeat="120")
    marks = tmp_path / "marks"
    doomed = leek.enqueue(tasks.append_line, args=(str(marks), "cancelled"), delay=6)
    sentinel = leek.enqueue(tasks.append_line, args=(str(marks), "sentinel"), delay=6.5)
    with writes_held("leek_task"):
        sweep = sweeping()
        wait_until_a_write_waits()
        assert doomed.cancel() is False  # not cancelled yet, as far as the caller knows
    sweep.join(30)
    wait_for(lambda: doomed.status() == "cancelled")  # the cancel committed after all
    assert sentinel.result(timeout=30) == "sentinel"  # due after the cancelled one
    assert marks.read_text() == "sentinel\n"
    assert doomed.status() == "cancelled"
