"""Fencing: every claim stamps its task with a broker and an epoch, and a
broker writes a task only under its own claim, so a late outcome of a task
another broker took over is refused."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import leek
from leek.client import connection as client
from leek.models import FailedTask, SuccessTask, Task
from leek.server.rows import Outcome
from leek.server.store import Store
from tests.conftest import BOTH_POOLS, BrokerProcess, wait_for
from tests.server import fence_tasks
from tests.server.fence_tasks import gate_for, runs_of
from tests.server.test_lease import FAST, node, use
from tests.server.test_pauses import OBSERVE
from tests.server.test_store import new_task


def stats(port: int, leek_settings: Any) -> dict[str, Any]:
    use(port, leek_settings)
    found: dict[str, Any] = client.call("stats", {})
    return found


def stop_until_adopted(paused: BrokerProcess, ids: list[Any], adopter: Any) -> BrokerProcess:
    """SIGSTOP `paused` until `adopter()` (a broker it starts) owns every task of `ids`."""
    assert paused.proc is not None
    os.kill(paused.proc.pid, signal.SIGSTOP)
    try:
        other: BrokerProcess = adopter()
        wait_for(
            lambda: (
                set(Task.objects.filter(pk__in=ids).values_list("broker", flat=True))
                == {node(other.port)}
            )
        )
    except BaseException:
        os.kill(paused.proc.pid, signal.SIGCONT)
        raise
    return other


@BOTH_POOLS
def test_the_late_outcome_of_a_task_another_broker_took_over_is_refused(
    broker_factory: Any, leek_settings: Any, tmp_path: Path, pool: str
) -> None:
    runs, gates = tmp_path / "runs", tmp_path / "gates"
    gates.mkdir()
    first = broker_factory(**FAST, LEEK_POOL=pool)
    handle = leek.enqueue(fence_tasks.held_per_broker, (str(runs), str(gates)))
    wait_for(lambda: runs_of(runs))  # it runs on the first broker, held at its gate
    wait_for(lambda: Task.objects.get(pk=handle.id).status == "running")
    second = stop_until_adopted(first, [handle.id], lambda: broker_factory(**FAST, LEEK_POOL=pool))
    try:
        gate_for(str(gates), node(second.port), 2).touch()
        assert handle.result(timeout=20) == node(second.port)
        gate_for(str(gates), node(first.port), 1).touch()  # the first run may end now
    finally:
        assert first.proc is not None
        os.kill(first.proc.pid, signal.SIGCONT)
    wait_for(lambda: stats(first.port, leek_settings)["outcomes_refused"] == 1)
    assert "outcome refused" in first.output()
    assert [(n, a) for _, n, a in runs_of(runs)] == [(node(first.port), 1), (node(second.port), 2)]
    time.sleep(OBSERVE)  # time for a stale write or a third run to show
    task = Task.objects.get(pk=handle.id)
    assert (task.status, task.broker, task.attempts) == ("succeeded", node(second.port), 2)
    assert list(SuccessTask.objects.filter(task=task).values_list("broker", flat=True)) == [
        node(second.port)
    ]
    # The first run's attempt is the one the adoption counted as cut short.
    assert list(FailedTask.objects.filter(task=task).values_list("broker", "attempt")) == [
        (node(first.port), 1)
    ]
    assert len(runs_of(runs)) == 2
    assert stats(second.port, leek_settings)["outcomes_refused"] == 0


def _written(store: Store, outcome: Outcome) -> None:
    """Record `outcome` through `store` and wait for its batch's commit."""
    done = threading.Event()
    store.record(outcome, done.set)
    assert done.wait(10)


def test_a_store_writes_under_its_own_claim_only_and_never_over_an_end(
    transactional_db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    mine, theirs = Store("fence-a", lambda ready: None), Store("fence-b", lambda ready: None)
    mine.epoch, theirs.epoch = 3, 9
    for store in (mine, theirs):
        store.start()
    try:
        task = new_task()
        done = threading.Event()
        mine.insert([task], lambda value, error: done.set())
        assert done.wait(10)
        assert Task.objects.filter(pk=task.id, broker="fence-a", epoch=3).exists()
        # Another broker takes it over, as an adoption stamps it.
        Task.objects.filter(pk=task.id).update(broker="fence-b", epoch=9)
        now = time.time()
        mine.mark_running(task.id, 1, now, 3)
        _written(mine, Outcome(task.id, task.name, 1, now, now, True, epoch=3))
        row = Task.objects.get(pk=task.id)
        assert (row.status, row.attempts, row.started_at) == ("queued", 0, None)
        assert not SuccessTask.objects.filter(task_id=task.id).exists()
        assert mine.writes.refused == 1
        assert [r.action for r in caplog.records if hasattr(r, "action")].count(
            "outcome_refused"
        ) == 1
        # Its owner's outcome is written; a second one of the same claim is
        # refused, and so is a late failure of the broker that lost it.
        _written(theirs, Outcome(task.id, task.name, 1, now, now, True, epoch=9))
        _written(theirs, Outcome(task.id, task.name, 1, now, now, False, epoch=9))
        _written(mine, Outcome(task.id, task.name, 1, now, now, False, final=False, epoch=3))
        row = Task.objects.get(pk=task.id)
        assert (row.status, row.broker) == ("succeeded", "fence-b")
        assert list(
            SuccessTask.objects.filter(task_id=task.id).values_list("broker", flat=True)
        ) == ["fence-b"]
        assert not FailedTask.objects.filter(task_id=task.id).exists()
        assert (mine.writes.refused, theirs.writes.refused) == (2, 1)
    finally:
        for store in (mine, theirs):
            store.stop()


def test_a_late_outcome_of_a_broker_s_earlier_life_under_its_name_is_refused(
    broker_factory: Any, leek_settings: Any, tmp_path: Path
) -> None:
    # The broker's name alone cannot tell its lives apart: its epoch does.
    runs, gates = tmp_path / "runs", tmp_path / "gates"
    gates.mkdir()
    name = {"LEEK_NODE_NAME": "fence-one"}
    first = broker_factory(**FAST, **name)
    handle = leek.enqueue(fence_tasks.held_per_broker, (str(runs), str(gates)))
    # Its run recorded, not only its status: a broker stopped between the two
    # would record the first run only once it wakes.
    wait_for(lambda: runs_of(runs))
    wait_for(lambda: Task.objects.get(pk=handle.id).status == "running")
    assert first.proc is not None
    os.kill(first.proc.pid, signal.SIGSTOP)
    try:
        again = broker_factory(**FAST, **name)  # a supervisor starts it anew
        wait_for(lambda: len(runs_of(runs)) == 2)
        gate_for(str(gates), "fence-one", 2).touch()
        assert handle.result(timeout=20) == "fence-one"
        gate_for(str(gates), "fence-one", 1).touch()
    finally:
        os.kill(first.proc.pid, signal.SIGCONT)
    wait_for(lambda: stats(first.port, leek_settings)["outcomes_refused"] == 1)
    assert (
        stats(again.port, leek_settings)["epoch"] == stats(first.port, leek_settings)["epoch"] + 1
    )
    time.sleep(OBSERVE)
    task = Task.objects.get(pk=handle.id)
    assert (task.status, task.attempts) == ("succeeded", 2)
    assert list(SuccessTask.objects.filter(task=task).values_list("attempt", flat=True)) == [2]
    assert [a for _, _, a in runs_of(runs)] == [1, 2]


def test_tasks_waiting_in_a_rate_limit_s_line_are_dropped_once_another_broker_adopted_them(
    broker_factory: Any, leek_settings: Any, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    limited = json.dumps({"limited": {"rate_limit": "1/m"}})
    first = broker_factory(**FAST, LEEK_QUEUES=limited)
    handles = [
        leek.enqueue(fence_tasks.run_for, (str(runs), 0.0), queue="limited") for _ in range(4)
    ]
    assert handles[0].result(timeout=20) == node(first.port)
    # One more waits for its token in the delayed heap, the others in the line behind it.
    wait_for(lambda: leek.waiting("limited") == (True, 3))
    waiting = [h.id for h in handles[1:]]
    # The other broker has no rate limit on the queue: it runs them at once.
    second = stop_until_adopted(first, waiting, lambda: broker_factory(**FAST))
    assert first.proc is not None
    os.kill(first.proc.pid, signal.SIGCONT)
    assert [h.result(timeout=20) for h in handles[1:]] == [node(second.port)] * 3
    wait_for(lambda: "lease regained dropped=3" in first.output())
    use(first.port, leek_settings)
    assert leek.waiting("limited") == (True, 0)
    assert stats(first.port, leek_settings)["rate_limits"]["waiting"] == {}
    time.sleep(OBSERVE)
    ran = sorted(n for _, n, _ in runs_of(runs))
    assert ran == sorted([node(first.port)] + [node(second.port)] * 3)


def test_two_outcomes_of_one_task_in_one_batch_are_both_written(transactional_db: Any) -> None:
    store = Store("fence-a", lambda ready: None)
    store.epoch = 4
    store.start()
    try:
        task = new_task(max_retries=1)
        done = threading.Event()
        store.insert([task], lambda value, error: done.set())
        assert done.wait(10)
        now = time.time()
        retried = Outcome(task.id, task.name, 1, now, now, False, final=False, epoch=4)
        ended = threading.Event()
        with store.outcomes._lock:  # no batch is written until both wait: one batch
            store.record(retried)
            store.record(Outcome(task.id, task.name, 2, now, now, True, epoch=4), ended.set)
        assert ended.wait(10)
        row = Task.objects.get(pk=task.id)
        assert (row.status, row.attempts) == ("succeeded", 2)
        assert FailedTask.objects.filter(task_id=task.id).count() == 1
        assert SuccessTask.objects.filter(task_id=task.id).count() == 1
        assert store.writes.refused == 0
    finally:
        store.stop()
