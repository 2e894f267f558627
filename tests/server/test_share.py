"""Work sharing between brokers on one database: a broker keeps in memory only
what its workers start soon, and idle brokers claim the rest, whoever accepted it."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

import leek
from leek.client import connection as client
from leek.client.spool import spool
from leek.models import Task
from tests import tasks
from tests.conftest import BOTH_POOLS, BrokerFactory, task_message, wait_for
from tests.server.test_stranded import writes_held

#: Tasks and seconds each of the three brokers' test.
SHARED_TASKS = 30
SHARED_SECONDS = 0.5


def runs(path: Path) -> Counter[str]:
    """Runs per task id, from the lines tasks.note_run appended."""
    if not path.exists():
        return Counter()
    return Counter(line.split()[0] for line in path.read_text().splitlines() if line)


def ports(path: Path) -> Counter[str]:
    """Runs per broker port, from the lines tasks.note_run appended."""
    return Counter(line.split()[1] for line in path.read_text().splitlines() if line)


def brokers(broker_factory: Any, count: int, **env: str) -> list[Any]:
    """`count` brokers on the test's database; the client pushes to the first only."""
    started = []
    for _ in range(count):
        client.close()
        started.append(broker_factory(**env))
    client.close()
    broker_factory.leek_settings(PORT=started[0].port)
    wait_for(lambda: leek.stats()[1]["sharing"]["peers"] == count - 1)
    return started


def beside_a_peer(broker_factory: Any, **env: str) -> Any:
    """A broker that knows another broker is alive (one serving another queue
    only, which claims none of its tasks): the client pushes to it."""
    broker_factory(args=("--queues", "elsewhere"))
    client.close()
    broker = broker_factory(**env)
    wait_for(lambda: leek.stats()[1]["sharing"]["peers"] == 1)
    return broker


def test_three_brokers_share_the_tasks_pushed_to_one(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    started = brokers(broker_factory, 3, LEEK_WORKERS="2", LEEK_PREFETCH="1")
    marks = tmp_path / "runs"
    began = time.monotonic()
    handles = [
        leek.enqueue(tasks.note_run, (str(marks), SHARED_SECONDS)) for _ in range(SHARED_TASKS)
    ]
    results = [h.result(timeout=60) for h in handles]
    elapsed = time.monotonic() - began
    assert set(results) == {str(b.port) for b in started}  # every broker ran some
    assert sorted(runs(marks).values()) == [1] * SHARED_TASKS  # each task once
    assert set(ports(marks)) == {str(b.port) for b in started}
    alone = SHARED_TASKS * SHARED_SECONDS / 2  # one broker's two workers
    assert elapsed < 0.7 * alone, (elapsed, alone, ports(marks))


def test_a_full_lane_leaves_its_pushes_in_the_table_and_still_runs_them(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    broker = beside_a_peer(
        broker_factory, LEEK_WORKERS="1", LEEK_PREFETCH="2", LEEK_SWEEP_INTERVAL="0.5"
    )
    gate = tmp_path / "gate"
    blocker = leek.enqueue(tasks.wait_for_file, (str(gate),))
    wait_for(lambda: blocker.status() == "running")
    marks = tmp_path / "runs"
    handles = [leek.enqueue(tasks.note_run, (str(marks),)) for _ in range(6)]
    ids = [h.id for h in handles]
    kept = Task.objects.filter(pk__in=ids, spooled=False).exclude(broker="")
    assert sorted(kept.values_list("pk", flat=True)) == sorted(ids[:2])  # the bound
    unowned = Task.objects.filter(pk__in=ids[2:], spooled=True, broker="", status="queued")
    assert unowned.count() == 4
    stats = leek.stats()[1]
    assert stats["payloads_in_memory"] <= 2 and stats["waiting"]["default"] == 2
    time.sleep(0.5)  # several ticks: the lane is full, so nothing is claimed
    assert unowned.count() == 4
    gate.touch()
    assert [h.result(timeout=20) for h in handles] == [str(broker.port)] * 6
    assert sorted(runs(marks).values()) == [1] * 6
    assert not Task.objects.filter(spooled=True, status="succeeded").exists()


@pytest.mark.skipif(
    connection.vendor != "sqlite",
    reason="SQLite fails a write that waits past its timeout; PostgreSQL waits for the lock",
)
def test_a_claim_the_database_failed_leaves_the_broker_claiming_once_it_is_back(
    broker_factory: BrokerFactory,
) -> None:
    broker = beside_a_peer(broker_factory, SQLITE_TIMEOUT="0.3", LEEK_SWEEP_INTERVAL="3600")
    with writes_held("leek_task"):
        time.sleep(4.0)  # past the claims' back-off: one claim meets the lock, and fails
    message = task_message(tasks.add, 2, 5)
    spool([message])  # unowned, in the table: for a claim, not a sweep (none comes)
    task = Task.objects.filter(pk=message["id"])
    wait_for(lambda: task.filter(status="succeeded").exists())
    failed = "database write failed writer=leek-writer error=OperationalError: database is locked"
    assert failed in broker.output()
    assert "callback failed" not in broker.output()


def test_unowned_tasks_are_claimed_highest_priority_first_then_oldest(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    beside_a_peer(broker_factory, LEEK_WORKERS="1", LEEK_PREFETCH="1")
    gate = tmp_path / "gate"
    blocker = leek.enqueue(tasks.wait_for_file, (str(gate),))
    wait_for(lambda: blocker.status() == "running")
    marks = tmp_path / "order"
    first = leek.enqueue(tasks.append_line, (str(marks), "kept"))  # fills the lane
    low = [leek.enqueue(tasks.append_line, (str(marks), f"low{i}")) for i in range(3)]
    high = [leek.enqueue(tasks.append_line, (str(marks), f"high{i}"), priority=5) for i in range(3)]
    assert Task.objects.filter(broker="", spooled=True).count() == 6
    gate.touch()
    for handle in [first, *low, *high]:
        handle.result(timeout=20)
    expected = ["kept", "high0", "high1", "high2", "low0", "low1", "low2"]
    assert marks.read_text().split() == expected


@BOTH_POOLS
def test_brokers_sharing_a_database_never_run_one_task_twice(
    broker_factory: BrokerFactory, pool: str, tmp_path: Path
) -> None:
    brokers(broker_factory, 3, LEEK_WORKERS="3", LEEK_PREFETCH="1", LEEK_POOL=pool)
    marks = tmp_path / "runs"
    count = 300
    handles = leek.enqueue_many([(tasks.note_run, (str(marks),)) for _ in range(count)])
    wait_for(lambda: sum(runs(marks).values()) >= count, timeout=120)
    for handle in handles[:: count // 10]:
        handle.result(timeout=30)
    time.sleep(0.5)  # a second run, were there one, has time to show
    seen = runs(marks)
    assert len(seen) == count and max(seen.values()) == 1, seen.most_common(3)
    assert len(ports(marks)) >= 2
    assert Task.objects.filter(status="succeeded").count() == count


def test_a_claim_reads_the_unowned_rows_in_its_order_however_many_wait(
    transactional_db: Any,
) -> None:
    # Every idle broker claims often: were its claim to sort every unowned
    # task, or walk the queued ones, a large backlog would slow each claim.
    from django.db import connection
    from django.utils import timezone

    from leek.server.rows import Dialect
    from leek.server.store import raw_cursor
    from leek.server.store.sql import claim_unowned

    now = timezone.now()
    rows = [Task(name="t", payload=b"", queued_at=now, spooled=i < 5) for i in range(20_000)]
    Task.objects.bulk_create(rows, batch_size=2_000)
    d = Dialect(connection.vendor)
    claim = claim_unowned(d, " AND queue IN (%s)")
    raw = raw_cursor()
    try:
        params = ("me", 1, 1, False, d.time(time.time()), "default", 10)
        if d.sqlite:  # a broker's SQLite file has no statistics
            raw.execute("EXPLAIN QUERY PLAN " + claim, params)
            plan = " ".join(str(row[-1]) for row in raw.fetchall())
            assert "TEMP B-TREE" not in plan, plan  # no sort
        else:
            raw.execute("ANALYZE leek_task")
            raw.execute("EXPLAIN " + claim, params)
            plan = " ".join(row[0] for row in raw.fetchall())
            assert "Sort" not in plan, plan
    finally:
        raw.close()
    assert "leek_task_spooled" in plan, plan
    assert "status_queued_at" not in plan and "Seq Scan" not in plan, plan


def test_a_broker_alone_keeps_every_task_it_accepts(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    broker_factory(LEEK_WORKERS="1", LEEK_PREFETCH="1")
    gate = tmp_path / "gate"
    blocker = leek.enqueue(tasks.wait_for_file, (str(gate),))
    wait_for(lambda: blocker.status() == "running")
    handles = [leek.enqueue(tasks.add, (i, 1)) for i in range(5)]
    assert not Task.objects.filter(broker="").exists()  # nobody else to take them
    sharing = leek.stats()[1]["sharing"]
    assert sharing["unowned"] == 0 and sharing["peers"] == 0
    gate.touch()
    assert [h.result(timeout=20) for h in handles] == [1, 2, 3, 4, 5]
