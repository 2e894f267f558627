"""Nothing accepted is lost: restarts, the database fallback, the cron retry."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from contextlib import closing
from typing import Any

import pytest
from django.db import connection as db

import leek
from leek.client import connection
from leek.models import Event, FailedTask, Task
from tests import tasks
from tests.conftest import REPO, BrokerProcess, broker_env, free_port, task_message, wait_for


def test_a_task_running_at_sigkill_runs_again_at_restart(broker_factory: Any) -> None:
    port = free_port()
    broker: BrokerProcess = broker_factory(port=port)
    handle = leek.push_task_to_queue(tasks.sleep, 1.0)
    wait_for(lambda: handle.status() == "running")
    broker.kill(signal.SIGKILL)
    assert handle.status() == "running"
    broker_factory(port=port)
    assert handle.result(timeout=20) == 1.0
    failure = FailedTask.objects.get(task_id=handle.id)
    assert (failure.exc_type, failure.attempt, failure.final) == (
        "leek.exceptions.WorkerLost",
        1,
        False,
    )
    assert "broker's process ended while the task ran" in failure.exc_message
    assert Task.objects.get().attempts == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_leaves_queued_tasks_for_the_next_start(
    broker_factory: Any, sig: int
) -> None:
    port = free_port()
    broker: BrokerProcess = broker_factory(port=port, LEEK_WORKERS="1")
    gate = leek.push_task_to_queue(tasks.sleep, 2.0)  # seen running on a busy host too
    wait_for(lambda: gate.status() == "running")
    later = [leek.push_task_to_queue(tasks.add, i, i) for i in range(5)]
    assert broker.kill(sig) == 0
    assert gate.status() == "succeeded"
    assert [h.status() for h in later] == ["queued"] * 5
    broker_factory(port=port)
    assert [h.result(timeout=20) for h in later] == [0, 2, 4, 6, 8]


def test_a_task_still_running_at_the_grace_deadline_is_requeued(broker_factory: Any) -> None:
    port = free_port()
    broker: BrokerProcess = broker_factory(port=port, LEEK_SHUTDOWN_GRACE="0.3")
    handle = leek.push_task_to_queue(tasks.sleep, 2.0)
    wait_for(lambda: handle.status() == "running")
    started = time.monotonic()
    assert broker.kill(signal.SIGTERM) == 0
    assert time.monotonic() - started < 1.8  # it did not wait for the task
    assert "still running at the deadline" in broker.output()
    broker_factory(port=port)
    assert handle.result(timeout=20) == 2.0
    assert FailedTask.objects.get(task_id=handle.id).exc_type == "leek.exceptions.Interrupted"


def test_pushes_without_a_broker_are_spooled_and_run_at_start(
    broker_factory: Any, leek_settings: Any
) -> None:
    port = free_port()
    leek_settings(PORT=port, CONNECT_TIMEOUT=0.5)
    handles = [leek.push_task_to_queue(tasks.add, i, 1) for i in range(100)]
    assert Task.objects.filter(spooled=True, status="queued").count() == 100
    started = time.monotonic()
    broker_factory(port=port)
    assert [h.result(timeout=20) for h in handles] == [i + 1 for i in range(100)]
    assert time.monotonic() - started < 10
    assert not Task.objects.filter(spooled=True).exists()


def test_a_batch_pushed_without_a_broker_is_spooled_with_its_options(
    broker_factory: Any, leek_settings: Any
) -> None:
    port = free_port()
    leek_settings(PORT=port, CONNECT_TIMEOUT=0.5)
    calls = [(tasks.add, (i, 1)) for i in range(20)]
    handles = leek.enqueue_many(calls, queue="mail", priority=3, max_retries=2, timeout=9.0)
    rows = Task.objects.filter(spooled=True, status="queued")
    assert {r.id for r in rows} == {h.id for h in handles}
    assert {(r.queue, r.priority, r.max_retries, r.timeout) for r in rows} == {("mail", 3, 2, 9.0)}
    assert {r.name for r in rows} == {"tests.tasks.add"}
    broker_factory(port=port)
    assert [h.result(timeout=20) for h in handles] == [i + 1 for i in range(20)]


def test_spooled_rows_are_swept_while_the_broker_runs(
    broker: BrokerProcess, leek_settings: Any
) -> None:
    from leek.client.spool import spool

    message = task_message(tasks.add, 5, 5)
    spool([message])
    assert leek.TaskHandle(message["id"]).result(timeout=10) == 10


def test_a_sweep_reads_only_the_spooled_rows_however_many_wait(transactional_db: Any) -> None:
    # A sweep runs every SWEEP_INTERVAL inside a write: were its claim to walk
    # the queued tasks, a large backlog would hold every enqueue up each time.
    from django.utils import timezone

    from leek.server.rows import Dialect
    from leek.server.store import raw_cursor
    from leek.server.store.sql import claim_spooled

    now = timezone.now()
    rows = [Task(name="t", payload=b"", queued_at=now, spooled=i < 5) for i in range(20_000)]
    Task.objects.bulk_create(rows, batch_size=2_000)
    claim = claim_spooled(Dialect(db.vendor))
    with closing(raw_cursor()) as raw:  # the claim is in the driver's own placeholders
        if db.vendor == "sqlite":  # a broker's SQLite file has no statistics
            raw.execute("EXPLAIN QUERY PLAN " + claim, ("me", 0, 1, False))
            plan = " ".join(str(row[-1]) for row in raw.fetchall())
        else:
            raw.execute("ANALYZE leek_task")
            raw.execute("EXPLAIN " + claim, ("me", 0, 1, False))
            plan = " ".join(row[0] for row in raw.fetchall())
    assert "leek_task_spooled" in plan, plan
    assert "status_queued_at" not in plan and "Seq Scan" not in plan, plan


def test_a_broker_under_a_new_name_runs_the_tasks_left_under_the_old_one(
    broker_factory: Any,
) -> None:
    # The upgrade from names of HOST:PORT: the old name's row says stopped, and
    # the first sweep of the broker under the new name adopts its queue.
    port = free_port()
    old: BrokerProcess = broker_factory(
        port=port, LEEK_NODE_NAME=f"127.0.0.1:{port}", LEEK_WORKERS="0"
    )
    handles = [leek.push_task_to_queue(tasks.add, i, 1) for i in range(20)]
    assert old.kill(signal.SIGTERM) == 0
    broker_factory(port=port)
    assert [h.result(timeout=20) for h in handles] == [i + 1 for i in range(20)]
    assert not Task.objects.filter(broker=f"127.0.0.1:{port}").exists()


def test_a_gone_brokers_tasks_are_walked_for_again_only_when_its_row_changes(
    transactional_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing indexes Task.broker: a walk for a gone broker's tasks reads every
    # unfinished task, so it must not run at every sweep while the row stays.
    from datetime import timedelta

    from django.utils import timezone

    from leek.models import BrokerNode
    from leek.server import recovery
    from leek.server.store import Store
    from tests.admin.factories import make_node

    now = timezone.now()
    make_node("gone:1", now, stopped=True)

    def queued() -> Any:
        return Task.objects.create(name="t", payload=b"", queued_at=now, broker="gone:1").id

    store = Store("me:1", lambda ready: None)
    store.start()
    adopt = recovery.Adopter(store, dead_after=60)
    try:
        first = queued()
        assert [r.id for r in adopt()] == [first]
        late = queued()  # committed by the gone broker after the walk: its row is unchanged
        assert adopt() == []
        BrokerNode.objects.update(heartbeat_at=now + timedelta(seconds=1))  # it lived again
        assert [r.id for r in adopt()] == [late]
        last = queued()
        assert adopt() == []
        monkeypatch.setattr(recovery, "LOOK_AGAIN_AFTER", 0.0)  # the look at long intervals
        assert [r.id for r in adopt()] == [last]
    finally:
        store.stop()
    assert set(Task.objects.values_list("broker", flat=True)) == {"me:1"}


def test_fallback_raise_names_the_address(transactional_db: Any, leek_settings: Any) -> None:
    port = free_port()
    leek_settings(PORT=port, FALLBACK="raise")
    with pytest.raises(leek.BrokerUnavailable, match=f"127.0.0.1:{port}.*refused"):
        leek.push_task_to_queue(tasks.noop)
    assert not Task.objects.exists()


def test_a_client_fails_over_to_the_next_broker(broker_factory: Any, leek_settings: Any) -> None:
    broker = broker_factory()
    leek_settings(PORT=free_port(), BROKERS=[f"127.0.0.1:{broker.port}"])
    assert leek.push_task_to_queue(tasks.add, 2, 2).result(timeout=10) == 4
    assert not Task.objects.filter(spooled=True).exists()


def test_retry_failed_with_the_broker_up_and_down(broker_factory: Any) -> None:
    port = free_port()
    broker: BrokerProcess = broker_factory(port=port)
    handle = leek.enqueue(tasks.fail, ("first",), max_retries=0)
    with pytest.raises(leek.TaskFailed):
        handle.result(timeout=10)

    def retry_failed(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(REPO / "scripts" / "run_failed_tasks"), *args],
            cwd=REPO,
            env=broker_env(port),
            capture_output=True,
            text=True,
            timeout=60,
        )

    dry = retry_failed("--dry-run")
    assert (dry.returncode, dry.stdout) == (0, "would requeue 1 failed tasks\n")
    done = retry_failed()
    assert (done.returncode, done.stdout) == (0, "requeued 1 failed tasks\n")
    wait_for(lambda: FailedTask.objects.filter(task_id=handle.id).count() == 2)
    wait_for(lambda: handle.status() == "failed")

    broker.kill(signal.SIGTERM)  # and with no broker at all
    assert retry_failed().stdout == "requeued 1 failed tasks\n"
    assert retry_failed().stdout == "requeued 0 failed tasks\n"  # not twice
    assert handle.status() == "queued"
    broker_factory(port=port)
    wait_for(lambda: FailedTask.objects.filter(task_id=handle.id).count() == 3)
    assert FailedTask.objects.filter(task_id=handle.id, requeued_at__isnull=False).count() == 2


def test_purge_deletes_old_finished_tasks(broker: BrokerProcess) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from leek.cli.repair import purge

    old = leek.push_task_to_queue(tasks.add, 1, 1)
    new = leek.push_task_to_queue(tasks.add, 2, 2)
    old.result(timeout=10), new.result(timeout=10)
    Task.objects.filter(pk=old.id).update(finished_at=timezone.now() - timedelta(days=40))
    assert purge("30d", dry_run=True) == 1
    assert purge("30d") == 1
    assert list(Task.objects.values_list("id", flat=True)) == [new.id]
    with pytest.raises(ValueError, match="only finished tasks"):
        purge("30d", statuses=["queued"])
    with pytest.raises(ValueError, match="like 30d"):
        purge("thirty days")


def test_purge_forgets_brokers_long_gone_once_they_own_no_unfinished_task(
    transactional_db: Any,
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from leek.cli.repair import forget_brokers
    from leek.models import BrokerNode
    from tests.admin.factories import make_node

    long_ago = timezone.now() - timedelta(days=40)
    make_node("gone:1", seen=long_ago, stopped=True)
    make_node("silent:1", seen=long_ago)
    make_node("owner:1", seen=long_ago, stopped=True)  # its task waits to be adopted
    make_node("recent:1", seen=timezone.now() - timedelta(days=2), stopped=True)
    make_node("alive:1")
    Task.objects.create(name="t", payload=b"", queued_at=long_ago, broker="owner:1")
    Task.objects.create(
        name="t", payload=b"", queued_at=long_ago, broker="gone:1", status="succeeded"
    )
    assert forget_brokers("30d", dry_run=True) == 2
    assert forget_brokers("30d") == 2
    names = set(BrokerNode.objects.values_list("name", flat=True))
    assert names == {"owner:1", "recent:1", "alive:1"}
    out = subprocess.run(
        [sys.executable, "-m", "leek.cli", "purge", "--older-than", "1d"],
        env=broker_env(free_port()),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "deleted 0 tasks and 1 rows of gone brokers"
    assert set(BrokerNode.objects.values_list("name", flat=True)) == {"owner:1", "alive:1"}


@pytest.mark.slow
def test_random_sigkills_lose_no_acknowledged_task(broker_factory: Any) -> None:
    port = free_port()
    broker_factory(port=port)
    acknowledged: list[str] = []
    done = threading.Event()

    def push() -> None:
        try:
            for i in range(2000):
                acknowledged.append(leek.push_task_to_queue(tasks.log_mark, f"m{i}").id.hex)
        finally:
            connection.close()
            db.close()
            done.set()

    pusher = threading.Thread(target=push)
    pusher.start()
    rng = random.Random(7)
    kills = 0
    while not done.is_set() and kills < 4:
        time.sleep(rng.uniform(0.2, 0.8))
        for process in broker_factory.running():
            process.kill(signal.SIGKILL)
        kills += 1
        broker_factory(port=port)
    pusher.join()
    assert kills >= 2 and len(acknowledged) == 2000
    wait_for(lambda: Task.objects.filter(status="succeeded").count() == 2000, timeout=120)
    marks = list(Event.objects.filter(kind="mark").values_list("message", flat=True))
    assert set(marks) == {f"m{i}" for i in range(2000)}
    duplicates = len(marks) - len(set(marks))
    sys.stderr.write(f"\nrandom SIGKILLs: kills={kills} duplicate runs={duplicates}\n")


def test_a_broker_that_accepts_but_never_answers_times_out(
    transactional_db: Any, leek_settings: Any
) -> None:
    import socket

    from leek.client import connection

    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens, reads nothing
        port = silent.getsockname()[1]
        connection.close()
        leek_settings(PORT=port, FALLBACK="raise", REPLY_TIMEOUT=0.5)
        started = time.monotonic()
        with pytest.raises(leek.BrokerUnavailable, match=f"127.0.0.1:{port}.*did not answer"):
            leek.push_task_to_queue(tasks.noop)
        took = time.monotonic() - started
    assert took < 5, f"a 0.5 s reply timeout took {took:.1f} s"  # not one per retry of 30 s
    assert not Task.objects.exists()


def test_payloads_loaded_ahead_are_not_kept_for_tasks_already_taken(
    broker_factory: Any,
) -> None:
    first = broker_factory(LEEK_WORKERS="0")
    handles = leek.enqueue_many([(tasks.noop, ()) for _ in range(3000)])
    assert first.kill(signal.SIGTERM) == 0
    second = broker_factory(port=first.port, LEEK_WORKERS="4")  # loads payloads ahead, in pages
    try:
        wait_for(leek.handled, equals=(True, 3000), timeout=60)
    except AssertionError as exc:  # say where the tasks not run are
        left = Task.objects.exclude(status="succeeded").values_list(
            "id", "status", "broker", "epoch", "attempts", "spooled"
        )
        pytest.fail(
            f"{exc}\nnot succeeded: {list(left)[:20]}\nstats: {leek.stats()[1]}\n"
            f"log:\n{second.output()[-5000:]}"
        )
    assert leek.stats()[1]["payloads_in_memory"] == 0
    assert handles[-1].result(timeout=10) is None
