"""GroupCommit on a real database connection, with threads queueing as it writes."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from typing import Any

import pytest
from django.db import connection

from leek.server import groupcommit
from leek.server.groupcommit import GATHER, GroupCommit
from leek.server.ops import Call, Insert, Mark, Op


class Nothing:
    """Batches that write nothing: one result an op, in a transaction of SQLite's own."""

    def open(self, cursor: Any, db: Any) -> Any:
        return cursor

    def write(self, cursor: Any, bound: Any, ops: list[Op]) -> list[Any]:
        cursor.execute("SELECT 1")
        return [None] * len(ops)

    def write_apart(self, cursor: Any, bound: Any, ops: list[Op]) -> list[Any]:
        return [(None, None) for _ in ops]

    def committed(self, ops: list[Op], results: list[Any]) -> None:
        pass

    def failed(self, ops: list[Op]) -> None:
        pass


@pytest.mark.django_db(transaction=True)
def test_a_thread_that_leads_while_others_queue_outcomes_never_fails() -> None:
    """The event loop leads its round's inserts while worker threads queue
    running marks: the check of what is left must not iterate a queue that
    another thread appends to (it raised 'deque mutated during iteration',
    which stopped the loop)."""
    commit = GroupCommit("test", Nothing())
    stop = threading.Event()

    def queue_marks() -> None:
        while not stop.is_set():
            commit.later(Mark("id", 1, 0.0), wake=False)

    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch within the check's loop
    marks = [threading.Thread(target=queue_marks) for _ in range(2)]
    for thread in marks:
        thread.start()
    committed = []
    try:
        for _ in range(300):
            commit.lead(Insert([], done=lambda value, error: committed.append(error)))
    finally:
        stop.set()
        for thread in marks:
            thread.join()
        sys.setswitchinterval(before)
        commit._close()
    assert committed and not any(committed)


def _writer_lock_timeout() -> str:
    """`lock_timeout` as a Store's writing connection has it."""
    from leek.server.store import Store

    store = Store("test-node", lambda ready: None)
    store.start()
    try:

        def show(cursor: Any, dialect: Any) -> str:
            cursor.execute("SHOW lock_timeout")
            return str(cursor.fetchone()[0])

        return str(store.call(show).wait(10))
    finally:
        store.stop()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="lock_timeout is PostgreSQL's")
def test_the_writing_connection_waits_briefly_for_a_lock_unless_behind_a_pooler(
    transactional_db: Any,
) -> None:
    from django.db import connections

    assert _writer_lock_timeout() == "20ms"
    options = connections.databases["default"].setdefault("OPTIONS", {})
    saved = dict(options)
    options["prepare_threshold"] = None  # what the README asks for behind PgBouncer
    try:
        assert _writer_lock_timeout() == "0"  # nothing set on a session others may get
    finally:
        options.clear()
        options.update(saved)


@pytest.mark.django_db(transaction=True)
def test_a_push_is_answered_once_its_tasks_are_in_the_broker_s_queues() -> None:
    """The reply comes after the dispatch: a client that pushes and then asks
    (`waiting`, the gauges) finds its task counted."""
    from leek.server.rows import NewTask
    from leek.server.store import Store

    events: list[str] = []
    store = Store("test-node", lambda ready: events.append("dispatched"))
    store.start()
    try:
        task = NewTask(uuid.uuid4(), "tests.tasks.noop", b"x", "", "default", 0, 0, None, None, "")
        store.insert([task], lambda value, error: events.append(f"replied {error}"))
    finally:
        store.stop()
    assert events == ["dispatched", "replied None"]


class Timed(Nothing):
    """Nothing, with each batch's size and when its write began and ended;
    the first write waits for `gate`."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, float, float]] = []
        self.writing = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def write(self, cursor: Any, bound: Any, ops: list[Op]) -> list[Any]:
        began = time.monotonic()
        self.writing.set()
        self.gate.wait(10)
        result = super().write(cursor, bound, ops)
        self.batches.append((len(ops), began, time.monotonic()))
        return result

    def written(self, count: int) -> list[int]:
        """The batches' sizes once `count` ops are written (10 s at most)."""
        deadline = time.monotonic() + 10
        while sum(n for n, _, _ in self.batches) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        return [n for n, _, _ in self.batches]


def _mark() -> Mark:
    return Mark(uuid.uuid4(), 1, 0.0)


@pytest.fixture
def writer(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A started GroupCommit on Timed batches, whose writer lingers 0.5 s:
    long enough to tell a linger from none on a busy host."""
    monkeypatch.setattr(groupcommit, "LINGER_MIN", 0.5)
    monkeypatch.setattr(groupcommit, "LINGER_MAX", 2.0)
    timed = Timed()
    commit = GroupCommit("test", timed)
    commit.start()
    yield commit, timed
    timed.gate.set()
    commit.stop()


def _during_a_commit(commit: GroupCommit, timed: Timed, *ops: Op) -> float:
    """Queue `ops` while the writer commits a first op, nobody waiting for
    either; the seconds between the end of that commit and the next write."""
    timed.gate.clear()
    commit.later(_mark())
    assert timed.writing.wait(10)
    for op in ops:
        commit.later(op)
    timed.gate.set()
    assert timed.written(1 + len(ops)) == [1, len(ops)]
    (_, _, first_ended), (_, second_began, _) = timed.batches
    return second_began - first_ended


@pytest.mark.django_db(transaction=True)
def test_outcomes_that_came_during_a_commit_gather_before_the_next(writer: Any) -> None:
    """Ops nobody waits for, queued while the writer commits, are not written
    the moment that commit ends (the lane of outcomes committed the two or
    three that came during each commit, commit after commit): the writer
    lingers first, and more gather meanwhile."""
    assert _during_a_commit(*writer, *[_mark() for _ in range(3)]) >= 0.5


@pytest.mark.django_db(transaction=True)
def test_enough_outcomes_are_written_at_once(writer: Any) -> None:
    """GATHER of them queued are written as soon as the commit before ends."""
    assert _during_a_commit(*writer, *[_mark() for _ in range(GATHER)]) < 0.25


@pytest.mark.django_db(transaction=True)
def test_a_write_someone_waits_for_is_written_at_once(writer: Any) -> None:
    """A call someone waits for (a heartbeat, a claim, a cancel) queued with
    them is written, with them, as soon as the commit before ends."""
    call = Call(lambda cursor, dialect: None, done=lambda value, error: None)
    assert _during_a_commit(*writer, _mark(), _mark(), call) < 0.25


@pytest.mark.django_db(transaction=True)
def test_a_lone_outcome_waits_one_linger(writer: Any) -> None:
    """An op nobody waits for is written after one linger of the writer."""
    commit, timed = writer
    queued = time.monotonic()
    commit.later(_mark())
    assert timed.written(1) == [1]
    assert 0.5 <= timed.batches[0][1] - queued < 4.0
