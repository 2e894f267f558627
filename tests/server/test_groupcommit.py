"""GroupCommit on a real database connection, with threads queueing as it writes."""

from __future__ import annotations

import sys
import threading
import uuid
from typing import Any

import pytest
from django.db import connection

from leek.server.groupcommit import GroupCommit
from leek.server.ops import Insert, Mark, Op


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
