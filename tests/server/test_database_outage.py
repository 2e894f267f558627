"""The database going away under a running broker, and coming back."""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

import leek
from leek.client import TaskHandle
from leek.client.api import message
from leek.client.delivery import send
from leek.client.spool import spool
from leek.models import FailedTask, SuccessTask, Task
from tests import tasks
from tests.admin.factories import make_node
from tests.conftest import BOTH_POOLS, BrokerProcess, leek_cli, task_message, wait_for
from tests.server import chain_tasks, fence_tasks
from tests.server.dbcut import CommitCutter
from tests.server.fence_tasks import runs_of
from tests.server.test_lease import node

#: The tests of a database reached over a socket that can break: PostgreSQL.
OVER_A_SOCKET = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="needs a database reached over a socket"
)


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


@OVER_A_SOCKET
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
    broker: BrokerProcess = broker_factory(
        LEEK_HEARTBEAT_INTERVAL="60", LEEK_HEARTBEAT_TIMEOUT="120", LEEK_SWEEP_INTERVAL="60"
    )
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


@pytest.fixture
def cutter() -> Iterator[CommitCutter]:
    """A proxy in front of the test's PostgreSQL that can lose an insert's answer."""
    params = connection.settings_dict
    proxy = CommitCutter((params["HOST"] or "127.0.0.1", int(params["PORT"] or 5432)))
    yield proxy
    proxy.close()


def _through(proxy: CommitCutter) -> str:
    """DATABASE_URL for a broker whose connections go through `proxy`."""
    user = connection.settings_dict["USER"] or "postgres"
    return f"postgres://{user}@127.0.0.1:{proxy.port}/{connection.settings_dict['NAME']}"


@OVER_A_SOCKET
@pytest.mark.parametrize("fallback", ["database", "raise"])
@BOTH_POOLS
def test_a_push_committed_whose_answer_was_lost_runs_without_a_restart(
    broker_factory: Any, leek_settings: Any, cutter: CommitCutter, fallback: str, pool: str
) -> None:
    """The database commits a push's insert and the connection breaks before
    the broker reads the answer: the broker cannot tell whether the task is
    there, and the client's retry (the database fallback, or the caller's own
    push of the same id) finds the row and is ignored. The broker looks
    again once the database answers, and runs the task it did commit."""
    leek_settings(FALLBACK=fallback)
    broker: BrokerProcess = broker_factory(DATABASE_URL=_through(cutter), LEEK_POOL=pool)
    cutter.arm()  # before the first push: its statement's text is sent then, and seen
    pushed = task_message(tasks.add, 20, 22)
    if fallback == "database":
        send("enqueue", pushed)  # the client writes the row itself: there already
    else:
        with pytest.raises(leek.CommitFailed, match="could not commit enqueue"):
            send("enqueue", pushed)
        send("enqueue", pushed)  # the caller pushes it again: ignored, as a replay
    assert cutter.cut.is_set()
    task_id = uuid.UUID(pushed["id"])
    assert Task.objects.get(pk=task_id).broker == node(broker.port)  # the broker's commit
    assert TaskHandle(task_id).result(timeout=15) == 42
    assert leek.push_task_to_queue(tasks.add, 2, 2).result(timeout=10) == 4
    assert "database write failed" in broker.output()
    assert SuccessTask.objects.filter(task_id=task_id).count() == 1


@OVER_A_SOCKET
@pytest.mark.parametrize("push", ["batch", "chain"])
def test_a_batch_committed_whose_answer_was_lost_runs_without_a_restart(
    broker_factory: Any, cutter: CommitCutter, push: str
) -> None:
    """As a single push's: the tasks of a batch, and a chain's first step
    (its later steps wait for it, and follow)."""
    broker_factory(DATABASE_URL=_through(cutter))
    cutter.arm()
    if push == "batch":
        handles = leek.enqueue_many([(tasks.add, (n, n)) for n in range(50)])
        assert cutter.cut.is_set()
        assert [h.result(timeout=15) for h in handles] == [2 * n for n in range(50)]
    else:
        handle = leek.chain(
            chain_tasks.add.s(1, 2), chain_tasks.mul.s(10), chain_tasks.add.s(5)
        ).delay()
        assert cutter.cut.is_set()
        assert handle.result(timeout=15) == 35


@OVER_A_SOCKET
@BOTH_POOLS
def test_a_claim_committed_whose_answer_was_lost_runs_without_a_restart(
    broker_factory: Any, cutter: CommitCutter, pool: str
) -> None:
    """A claim of a task a client wrote itself (spooled, for any broker)
    commits and the connection breaks before the broker reads the answer:
    the task is the broker's in the table and in no broker's memory. The
    broker looks for the claim's rows once the database answers, and runs
    the task, once."""
    pushed = task_message(tasks.add, 20, 22)
    spool([pushed])
    cutter.arm(statement=b"ORDER BY priority DESC, queued_at LIMIT")  # the start's first claim
    broker: BrokerProcess = broker_factory(DATABASE_URL=_through(cutter), LEEK_POOL=pool)
    task_id = uuid.UUID(pushed["id"])
    assert TaskHandle(task_id).result(timeout=15) == 42
    assert cutter.cut.is_set()
    assert "tasks found committed whose claim had failed count=1" in broker.output()
    assert SuccessTask.objects.filter(task_id=task_id).count() == 1


@OVER_A_SOCKET
def test_a_sweep_committed_whose_answer_was_lost_runs_its_tasks_without_a_restart(
    broker_factory: Any, cutter: CommitCutter
) -> None:
    """The sweep's claim, of a task spooled for later and of a gone broker's
    task, commits and its answer is lost: both run all the same."""
    broker: BrokerProcess = broker_factory(DATABASE_URL=_through(cutter), LEEK_SWEEP_INTERVAL="0.5")
    wait_for(lambda: "tasks recovered" in broker.output(), timeout=10)  # the start's sweep
    later, gone = (
        message(tasks.add, (1, 2), run_after=time.time() + 3),
        task_message(tasks.add, 3, 4),
    )
    spool([later, gone])
    make_node("gone:1", stopped=True)
    Task.objects.filter(pk=gone["id"]).update(broker="gone:1", spooled=False)
    cutter.arm(statement=b"AND run_after > ")  # the sweep's claim of spooled tasks not due
    wait_for(cutter.cut.is_set, timeout=10)
    assert TaskHandle(uuid.UUID(gone["id"])).result(timeout=15) == 7
    assert TaskHandle(uuid.UUID(later["id"])).result(timeout=15) == 3
    assert "tasks found committed whose claim had failed count=2" in broker.output()


@OVER_A_SOCKET
def test_a_push_the_database_never_saw_runs_once(
    broker_factory: Any, cutter: CommitCutter, tmp_path: Path
) -> None:
    """The connection breaks before the insert reaches the database: the
    client writes the task itself, spooled, and the broker claims it. The
    look for failed inserts that did commit must not queue it a second time:
    it runs once. (It waits behind two tasks that keep both workers busy,
    so that a second copy would be taken beside the first.)"""
    broker: BrokerProcess = broker_factory(DATABASE_URL=_through(cutter))
    cutter.arm(before=True)
    runs, busy = tmp_path / "runs", tmp_path / "busy"
    spool([task_message(fence_tasks.run_for, str(busy), 3.0) for _ in range(2)])
    wait_for(lambda: len(runs_of(busy)) == 2, timeout=10)
    handle = leek.enqueue(fence_tasks.run_for, (str(runs), 0.5))
    assert cutter.cut.is_set()
    wait_for(lambda: Task.objects.get(pk=handle.id).broker == node(broker.port), timeout=10)
    assert handle.result(timeout=15) == node(broker.port)
    time.sleep(1.0)  # a second run would have begun beside the first
    assert [task for task, _, _ in runs_of(runs)] == [str(handle.id)]


@OVER_A_SOCKET
@pytest.mark.parametrize("ending", ["failure", "success"])
@BOTH_POOLS
def test_an_outcome_committed_whose_answer_was_lost_is_written_once(
    broker_factory: Any, cutter: CommitCutter, tmp_path: Path, ending: str, pool: str
) -> None:
    """The database commits an attempt's outcome and the connection breaks
    before the broker reads the answer; the broker writes it again. A
    failure to retry keeps one row of its attempt and its retry (which runs),
    and a success is neither written twice nor told as refused."""
    broker: BrokerProcess = broker_factory(DATABASE_URL=_through(cutter), LEEK_POOL=pool)
    table = b"leek_failedtask" if ending == "failure" else b"leek_successtask"
    cutter.arm(statement=b"INSERT INTO " + table)
    if ending == "failure":
        handle = leek.enqueue(tasks.retry_later, (str(tmp_path / "runs"),), max_retries=1)
    else:
        handle = leek.enqueue(tasks.add, (20, 22))
    handle.result(timeout=20)
    assert cutter.cut.is_set()
    # Written after the outcome's batch was written again (one writer, in order).
    assert leek.push_task_to_queue(tasks.add, 2, 2).result(timeout=10) == 4
    assert "database write failed" in broker.output()
    assert SuccessTask.objects.filter(task_id=handle.id).count() == 1
    failures = list(FailedTask.objects.filter(task_id=handle.id).values_list("attempt", flat=True))
    assert failures == ([1] if ending == "failure" else [])
    assert "outcome refused" not in broker.output()
    assert leek.stats()[1]["outcomes_refused"] == 0


@OVER_A_SOCKET
def test_a_step_whose_success_s_answer_was_lost_releases_the_next_one(
    broker_factory: Any, cutter: CommitCutter
) -> None:
    """A chain's step succeeds, and its success commits with the release of
    the next step; the connection breaks before the broker reads the answer.
    The broker writes the batch again, finds the success there, and runs the
    step it released (which would wait, queued, for the broker's restart)."""
    broker: BrokerProcess = broker_factory(DATABASE_URL=_through(cutter))
    cutter.arm(statement=b"stderr, broker) VALUES")  # a step's success, in a transaction
    handle = leek.chain(chain_tasks.add.s(1, 2), chain_tasks.mul.s(10)).delay()
    assert handle.result(timeout=15) == 30
    assert cutter.cut.is_set()
    assert "database write failed" in broker.output()
    assert SuccessTask.objects.count() == 2
    assert leek.stats()[1]["outcomes_refused"] == 0


@OVER_A_SOCKET
@BOTH_POOLS
def test_a_task_whose_cancel_s_answer_was_lost_never_starts(
    broker_factory: Any, cutter: CommitCutter, tmp_path: Path, pool: str
) -> None:
    """The database commits a cancel and the connection breaks before the
    broker reads the answer: the cancel fails, as its caller is told, and the
    task, whose payload the broker holds in memory, does not start: the
    worker that takes it reads its status first. (It waits behind two tasks
    that keep both workers busy.)"""
    broker_factory(DATABASE_URL=_through(cutter), LEEK_POOL=pool)
    runs, busy = tmp_path / "runs", tmp_path / "busy"
    for _ in range(2):
        leek.enqueue(fence_tasks.run_for, (str(busy), 2.0))
    wait_for(lambda: len(runs_of(busy)) == 2, timeout=10)
    handle = leek.enqueue(fence_tasks.run_for, (str(runs), 0.1))
    cutter.arm(statement=b"SET status = 'cancelled'")
    with pytest.raises(leek.LeekError):
        leek.cancel(handle.id)
    assert cutter.cut.is_set()
    assert Task.objects.get(pk=handle.id).status == "cancelled"  # committed all the same
    # Both workers free again, and a task behind it run: it was taken by now.
    assert leek.push_task_to_queue(tasks.add, 2, 2).result(timeout=15) == 4
    time.sleep(0.5)  # a start would be recorded by now
    assert runs_of(runs) == []
    assert handle.status() == "cancelled"


@OVER_A_SOCKET
@BOTH_POOLS
def test_a_running_task_whose_cancel_s_answer_was_lost_runs_no_retry(
    broker_factory: Any, cutter: CommitCutter, tmp_path: Path, pool: str
) -> None:
    """A cancel of a running task commits and the connection breaks before
    the broker reads the answer: the cancel fails and the attempt goes on, as
    one not cancelled. It fails; its failure is recorded, and the task,
    cancelled in the database, runs no retry (whose payload the broker holds
    in memory: the worker that takes it reads its status first)."""
    broker_factory(DATABASE_URL=_through(cutter), LEEK_POOL=pool, LEEK_RETRY_BACKOFF="0.1")
    runs = tmp_path / "runs"
    handle = leek.enqueue(fence_tasks.fail_after, (str(runs), 1.0), max_retries=3)
    wait_for(lambda: len(runs_of(runs)) == 1, timeout=10)
    cutter.arm(statement=b"SET status = 'cancelled'")
    with pytest.raises(leek.LeekError):
        leek.cancel(handle.id, running=True)
    assert cutter.cut.is_set()
    assert Task.objects.get(pk=handle.id).status == "cancelled"  # committed all the same
    wait_for(lambda: FailedTask.objects.filter(task_id=handle.id).exists(), timeout=15)
    # Its retry would be due 0.1-0.125 s after the failure, and start at once.
    assert leek.push_task_to_queue(tasks.add, 2, 2).result(timeout=15) == 4
    time.sleep(1.0)
    assert [attempt for _, _, attempt in runs_of(runs)] == [1]
    assert handle.status() == "cancelled"
