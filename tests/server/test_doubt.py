"""Inserts and claims in doubt (store/doubt.py): which rows a look finds, and when it looks.

The broker's side of a lost answer to a commit, through a connection that
really breaks, is in test_database_outage.py (PostgreSQL); here the look runs
on each database, against rows as others leave them, and its schedule."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from leek.models import Task
from leek.server.rows import Dialect, Ready
from leek.server.store import Store, doubt
from leek.server.store.cursor import raw_cursor
from leek.server.store.doubt import Doubt, Doubts
from leek.server.store.sql import Statements
from tests.conftest import wait_for
from tests.server.test_store import Replies, new_task


def test_a_look_finds_only_the_rows_the_failed_insert_wrote(transactional_db: Any) -> None:
    routed: list[Ready] = []
    store = Store("test-node", routed.extend)
    store.start()
    ours, spooled, claimed, never = new_task(), new_task(), new_task(), new_task()
    replies = Replies()
    try:
        store.insert([ours, claimed], replies.to("insert", 1))
        assert replies.all_in.wait(10)
        at = Task.objects.get(pk=ours.id).queued_at
        # Rows of the same ids that others wrote: the client's own, spooled;
        # one this broker claimed from a client's spool (its time is the
        # client's, the flag cleared by the claim).
        Task.objects.create(
            id=spooled.id, name="x", payload=b"x", queued_at=at, broker="", spooled=True
        )
        Task.objects.filter(pk=claimed.id).update(queued_at=at.replace(year=2001))
        routed.clear()
        doubts = store.writes.doubts
        doubts.begin()
        doubts.tried(store.dialect.time(at.timestamp()), [ours, spooled, claimed, never])
        doubts.failed()
        store.recheck()
        wait_for(lambda: not doubts.checking, timeout=10)
        assert [r.id for r in routed] == [ours.id]
        assert not doubts.due()  # the next look waits
    finally:
        store.stop()


def test_a_failed_insert_leaves_its_unowned_tasks_out_of_doubt(transactional_db: Any) -> None:
    """With peers that have room, an insert leaves some tasks unowned (share.py),
    for any broker to claim, this one too: once claimed here (routed by the
    claim), a look must not find them as this broker's own insert."""
    routed: list[Ready] = []
    store = Store("test-node", routed.extend)
    store.start()
    kept, unowned = new_task(), new_task()
    store.writes.admit = lambda tasks: [t.id == kept.id for t in tasks]
    try:
        doubts = store.writes.doubts
        doubts.begin()
        with connection.cursor() as cursor:  # the insert commits; say its answer was lost
            store.writes.insert_tasks(cursor.cursor, [kept, unowned])
        doubts.failed()
        assert Task.objects.get(pk=unowned.id).broker == ""
        Task.objects.filter(pk=unowned.id).update(broker="test-node", spooled=False)  # claimed
        store.recheck()
        wait_for(lambda: not doubts.checking, timeout=10)
        assert [r.id for r in routed] == [kept.id]
    finally:
        store.stop()


def test_a_look_finds_only_the_rows_the_failed_claim_took(transactional_db: Any) -> None:
    """A claim of unowned tasks commits and its answer is lost: a look finds
    the rows it took, once, and none that another claim of this broker
    took, nor another broker's."""
    routed: list[Ready] = []
    store = Store("test-node", routed.extend)
    store.start()
    d = store.dialect
    now = timezone.now()
    for _ in range(3):
        Task.objects.create(name="x", payload=b"x", queued_at=now, spooled=True)
    claim = store.sql.claim_unowned(1, True)
    doubts = store.writes.doubts
    try:
        with connection.cursor() as cursor:
            doubts.begin()  # a claim that commits, its answer lost
            take = (store.node, store.epoch, doubts.claim(), False, d.time(time.time()))
            cursor.cursor.execute(claim, (*take, "default", 1))
            doubts.failed()
            doubts.begin()  # another claim, answered: its task is in memory
            take = (store.node, store.epoch, doubts.claim(), False, d.time(time.time()))
            cursor.cursor.execute(claim, (*take, "default", 1))
            doubts.begin()
        # The third, another broker's claim numbered as the first.
        Task.objects.filter(spooled=True).update(broker="another", spooled=False, claim=1)
        first = Task.objects.get(broker="test-node", claim=1)
        store.recheck()
        wait_for(lambda: not doubts.checking, timeout=10)
        assert [r.id for r in routed] == [first.id]
        assert not doubts.due()
        time.sleep(doubt.FIRST_WAIT + 0.1)
        assert not doubts.due()  # a claim found is settled: no look finds it again
    finally:
        store.stop()


@pytest.fixture
def doubts(transactional_db: Any) -> Doubts:
    """Doubts of the test database's dialect."""
    return Doubts(Statements(Dialect(connection.vendor)), "test-node")


def failed(doubts: Doubts, *ids: uuid.UUID) -> None:
    """An insert of `ids` that failed."""
    doubts.begin()
    doubts.tried(Dialect(connection.vendor).time(time.time()), [new_task(id=i) for i in ids])
    doubts.failed()


def look(doubts: Doubts) -> list[Doubt]:
    """A look that finds nothing, committed; the doubts it looked at."""
    looks = doubts.check(raw_cursor(), Dialect(connection.vendor), 0)
    assert [found for _, found in looks] == [[]] * len(looks)
    doubts.settle(looks)
    return [doubt for doubt, _ in looks]


def test_a_failed_write_without_inserts_leaves_no_doubt(doubts: Doubts) -> None:
    doubts.begin()
    doubts.failed()
    assert not doubts.due()
    failed(doubts)  # an insert of no task
    assert not doubts.due()


def test_the_looks_back_off_and_end_with_the_window(
    doubts: Doubts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doubt, "FIRST_WAIT", 0.2)
    monkeypatch.setattr(doubt, "DOUBT_WINDOW", 0.5)
    failed(doubts, uuid.uuid4())
    assert doubts.due()
    assert len(look(doubts)) == 1
    assert not doubts.due()  # the next look in 0.2 s
    time.sleep(0.25)
    assert doubts.due()
    assert len(look(doubts)) == 1
    time.sleep(0.3)
    assert not doubts.due()  # the next in 0.4 s, past the window
    time.sleep(0.15)
    assert len(look(doubts)) == 1
    assert look(doubts) == []  # ended


def test_a_doubt_outlives_its_window_until_a_look_commits(
    doubts: Doubts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database may be away longer than the window: the doubt waits for
    one look that commits, then ends."""
    monkeypatch.setattr(doubt, "DOUBT_WINDOW", 0.0)
    failed(doubts, uuid.uuid4())
    time.sleep(0.01)
    doubts.settle([])  # a look that saw none of it
    assert doubts.due()
    assert len(look(doubts)) == 1
    assert not doubts.due()
    assert look(doubts) == []


def test_a_look_for_a_claim_reads_only_the_queued_rows_claims_took(transactional_db: Any) -> None:
    # The look holds the tasks lane's transaction (on SQLite, the write
    # lock): it must not walk the queued tasks, which a backlog makes many.
    now = timezone.now()
    rows = [
        Task(name="t", payload=b"", queued_at=now, claim=i if i < 5 else None)
        for i in range(20_000)
    ]
    Task.objects.bulk_create(rows, batch_size=2_000)
    d = Dialect(connection.vendor)
    look = Statements(d).claimed_by
    raw = raw_cursor()
    try:
        params = ("me", 1, 3)
        if d.sqlite:  # a broker's SQLite file has no statistics
            raw.execute("EXPLAIN QUERY PLAN " + look, params)
            plan = " ".join(str(row[-1]) for row in raw.fetchall())
        else:
            raw.execute("ANALYZE leek_task")
            raw.execute("EXPLAIN " + look, params)
            plan = " ".join(row[0] for row in raw.fetchall())
    finally:
        raw.close()
    assert "leek_task_claimed" in plan, plan
    assert "status_queued_at" not in plan and "Seq Scan" not in plan, plan
