"""Expiry on real brokers: a task not started by its expiry never runs."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import leek
from leek.models import Task
from tests.conftest import BOTH_POOLS, free_port, wait_for
from tests.server import control_tasks


@BOTH_POOLS
def test_a_task_behind_a_busy_worker_expires_unrun(
    broker_factory: Any, pool: str, tmp_path: Path
) -> None:
    broker_factory(LEEK_WORKERS="1", LEEK_POOL=pool)
    gate = tmp_path / "gate"
    blocker = leek.enqueue(control_tasks.gated, (str(gate),))
    wait_for(lambda: blocker.status() == "running")
    marks = tmp_path / "marks"
    short = leek.enqueue(control_tasks.mark, (str(marks), "short"), expires=timedelta(seconds=0.3))
    long = leek.enqueue(control_tasks.mark, (str(marks), "long"), expires=timedelta(minutes=5))
    time.sleep(0.5)  # past the short one's expiry, while the worker is still busy
    gate.touch()
    with pytest.raises(leek.TaskExpired, match="expired before it started"):
        short.result(timeout=20)
    assert long.result(timeout=20) == "long"
    row = Task.objects.get(pk=short.id)
    assert (row.status, row.attempts, row.started_at) == ("expired", 0, None)
    assert row.finished_at is not None
    assert marks.read_text() == "long\n"


def test_the_sweep_expires_a_waiting_task_while_its_worker_stays_busy(
    broker_factory: Any, tmp_path: Path
) -> None:
    broker_factory(LEEK_WORKERS="1")
    gate = tmp_path / "gate"
    blocker = leek.enqueue(control_tasks.gated, (str(gate),))
    wait_for(lambda: blocker.status() == "running")
    at = datetime.now(UTC) + timedelta(seconds=0.2)
    doomed = leek.enqueue(control_tasks.mark, (str(tmp_path / "m"), "x"), expires=at)
    wait_for(lambda: doomed.status() == "expired")
    assert blocker.status() == "running"  # no worker found it: the sweep did
    assert leek.waiting()[1] == 0
    gate.touch()
    assert blocker.result(timeout=20) == str(gate)
    assert not (tmp_path / "m").exists()


def test_a_delayed_task_runs_at_its_time_before_its_expiry(broker: Any, tmp_path: Path) -> None:
    """The expiry counts from the push, not from the run time: a delay shorter
    than it leaves the task to run."""
    delayed = leek.enqueue(
        control_tasks.mark,
        (str(tmp_path / "m"), "x"),
        delay=timedelta(seconds=0.5),
        expires=timedelta(seconds=30),
    )
    assert delayed.result(timeout=20) == "x"


def test_a_spooled_task_expires_when_no_broker_starts_it_in_time(
    broker_factory: Any, leek_settings: Any, tmp_path: Path
) -> None:
    port = free_port()
    leek_settings(PORT=port, CONNECT_TIMEOUT=0.5)
    marks = tmp_path / "m"
    doomed = leek.enqueue(control_tasks.mark, (str(marks), "x"), expires=timedelta(seconds=0.2))
    kept = leek.enqueue(control_tasks.mark, (str(marks), "y"), expires=timedelta(minutes=5))
    time.sleep(0.3)
    broker_factory(port=port)
    assert kept.result(timeout=20) == "y"
    with pytest.raises(leek.TaskExpired):
        doomed.result(timeout=20)
    assert marks.read_text() == "y\n"


def test_an_expired_task_frees_its_key(broker_factory: Any, tmp_path: Path) -> None:
    broker_factory(LEEK_WORKERS="1")
    gate = tmp_path / "gate"
    blocker = leek.enqueue(control_tasks.gated, (str(gate),))
    wait_for(lambda: blocker.status() == "running")
    path = str(tmp_path / "m")
    doomed = leek.enqueue(control_tasks.mark, (path, "1"), key="k", expires=timedelta(seconds=0.2))
    wait_for(lambda: doomed.status() == "expired")
    again = leek.enqueue(control_tasks.mark, (path, "2"), key="k")
    assert again.id != doomed.id
    gate.touch()
    assert again.result(timeout=20) == "2"


def test_an_expiry_before_the_run_time_is_refused_at_the_call() -> None:
    with pytest.raises(ValueError, match="would never run"):
        leek.enqueue(
            control_tasks.mark,
            ("p", "t"),
            delay=timedelta(minutes=2),
            expires=timedelta(minutes=1),
        )


def test_a_naive_expiry_is_refused_at_the_call() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        leek.enqueue(control_tasks.mark, ("p", "t"), expires=datetime(2030, 1, 1))  # noqa: DTZ001


@pytest.mark.django_db
def test_the_expiry_sweep_reads_only_the_index_of_expiring_tasks() -> None:
    """Not the status index, which holds every waiting task: the sweep runs
    every second however many wait."""
    from django.db import connection

    from leek.server.rows import Dialect
    from leek.server.store.sql import Statements

    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL's planner picks by its statistics, which an empty table lacks")
    sql = Statements(Dialect("sqlite"))
    with connection.cursor() as cursor:
        for statement, args in ((sql.any_expired, [0]), (sql.expire_due, [0, 0])):
            cursor.execute("EXPLAIN QUERY PLAN " + statement, args)
            plan = " ".join(str(row[-1]) for row in cursor.fetchall())
            assert "USING INDEX leek_task_expiring" in plan, plan
