"""The database going away under a running broker, and coming back."""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connection

import leek
from tests import tasks
from tests.conftest import BrokerProcess, leek_cli, wait_for


@contextmanager
def outage() -> Iterator[None]:
    """Make the test database refuse the broker's writes, then give it back."""
    name = str(connection.settings_dict["NAME"])
    if connection.vendor == "sqlite":
        holder = sqlite3.connect(name, timeout=5, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # every other writer now times out
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    import psycopg

    params = connection.settings_dict
    admin = psycopg.connect(
        dbname="postgres",
        host=params["HOST"] or None,
        port=params["PORT"] or None,
        user=params["USER"] or None,
        password=params["PASSWORD"] or None,
        autocommit=True,
    )
    connection.close()  # ours goes too; Django reconnects after the outage
    try:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name]
        )
        yield
    finally:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin.close()


@contextmanager
def busy_timeout(seconds: float) -> Iterator[None]:
    """This process's SQLite connection waits at most `seconds` for a lock
    (the tests' settings give it 20): its fallback write into a database held
    by another fails after that, as a client's would after its own timeout."""
    if connection.vendor != "sqlite":
        yield
        return
    options = connection.settings_dict.setdefault("OPTIONS", {})
    before = options.get("timeout")
    options["timeout"] = seconds
    connection.close()
    try:
        yield
    finally:
        connection.close()
        if before is None:
            options.pop("timeout")
        else:
            options["timeout"] = before


def test_the_broker_survives_the_database_going_away(broker_factory: Any) -> None:
    broker: BrokerProcess = broker_factory(SQLITE_TIMEOUT="0.2", LEEK_HEARTBEAT_INTERVAL="0.2")
    assert leek.push_task_to_queue(tasks.add, 1, 1).result(timeout=10) == 2
    with outage():
        wait_for(lambda: leek.ping()[0] is False, timeout=20)
        ok, reason = leek.ping()
        assert reason.startswith("database unavailable")
        down = leek_cli(broker.port, "ping")
        assert down.returncode == 1 and "database unavailable" in down.stdout
        # The broker cannot commit and the client cannot write the row itself:
        # a clear error, nothing silently lost.
        with (
            busy_timeout(0.5),
            pytest.raises(leek.CommitFailed, match="could not commit enqueue.*fallback failed"),
        ):
            leek.push_task_to_queue(tasks.add, 2, 2)
        assert broker.alive
    wait_for(leek.ping, equals=(True, "I'm OK"), timeout=30)
    assert leek_cli(broker.port, "ping").returncode == 0
    assert leek.push_task_to_queue(tasks.add, 3, 3).result(timeout=10) == 6
    assert "database write failed" in broker.output()


def cut_while_stopped(pid: int, tries: int = 20) -> list[int]:
    """End every connection of the broker's from the server's side while no
    statement of its is under way; the backends ended.

    The broker's duties write several times a second, so it is never quite
    idle: a statement running when the server ends its connection fails as
    it should, and is not what is tested. So the broker is stopped (SIGSTOP)
    until each of its backends is idle between transactions, then its
    connections are ended, and it goes on (SIGCONT) to find them dead at its
    next write. Stopped inside a transaction, it is let go on a moment and
    stopped again."""
    for _ in range(tries):
        os.kill(pid, signal.SIGSTOP)
        try:
            cut = _idle_backends()
            if cut:
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT count(pg_terminate_backend(pid)) FROM unnest(%s) pid", [cut]
                    )
                wait_for(functools.partial(_ended, cut))
                return cut
        finally:
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError(f"the broker was inside a transaction each of {tries} times it stopped")


def _ended(pids: list[int]) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [pids])
        return bool(cursor.fetchone()[0] == 0)


def _idle_backends(wait: float = 1.0) -> list[int]:
    """The test database's backends other than this one, once each is idle
    between transactions (within `wait` seconds); empty when one is not."""
    deadline = time.monotonic() + wait
    while True:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT array_agg(pid), bool_and(state = 'idle') FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            pids, idle = cursor.fetchone()
        if pids and idle:
            return list(pids)
        if time.monotonic() > deadline:
            return []
        time.sleep(0.02)


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="needs a database reached over a socket"
)
def test_a_push_after_the_database_cut_the_brokers_connections_is_accepted(
    broker_factory: Any, leek_settings: Any
) -> None:
    """PostgreSQL ends every connection of the broker's (a restart, a failover,
    an administrator) while the broker is idle: the next push is written on a
    fresh connection, not failed on the dead one."""
    from leek.client import connection as client

    leek_settings(FALLBACK="raise")
    # Nothing of the broker's own writes after the pushes: a duty's write that
    # had passed its check of the connection when the broker was stopped would
    # fail on the cut one, and hide whether the check works (the tests' sweep,
    # every 0.2 s, writes on both lanes).
    broker: BrokerProcess = broker_factory(LEEK_HEARTBEAT_INTERVAL="60", LEEK_SWEEP_INTERVAL="60")
    for n in range(20):  # batches of every kind, on connections nobody cut
        assert leek.push_task_to_queue(tasks.add, n, 1).result(timeout=10) == n + 1
    assert "reconnecting" not in broker.output()
    assert broker.proc is not None
    cut = cut_while_stopped(broker.proc.pid)
    assert cut
    client.close()
    for n in range(5):
        assert leek.push_task_to_queue(tasks.add, n, 1).result(timeout=10) == n + 1
    assert leek.ping() == (True, "I'm OK")
    assert "database write failed" not in broker.output()
    assert "writing connection closed by the database, reconnecting" in broker.output()
