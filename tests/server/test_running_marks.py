"""Running marks held back a moment (store/marks.py): a task that ends within
it is written once, by its outcome; one that runs on shows running.

A trigger in the database logs every write that sets a task running, so the
tests see what the broker wrote, not only where the row ended up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection

import leek
from leek.models import Task
from leek.server.ops import Call, Mark
from leek.server.store import Store
from leek.server.store.marks import MARK_AFTER, HeldMarks
from tests import tasks
from tests.conftest import BOTH_POOLS, wait_for
from tests.server.test_outcome_writes import EPOCH, inserted, success

SQLITE_LOG = [
    "CREATE TABLE marks_seen (task_id TEXT)",
    "CREATE TRIGGER marks_seen_log AFTER UPDATE OF status ON leek_task "
    "WHEN NEW.status = 'running' AND OLD.status <> 'running' "
    "BEGIN INSERT INTO marks_seen VALUES (NEW.id); END",
]
PG_LOG = [
    "CREATE TABLE marks_seen (task_id uuid)",
    "CREATE FUNCTION marks_seen_log() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN INSERT INTO marks_seen VALUES (NEW.id); RETURN NEW; END $$",
    "CREATE TRIGGER marks_seen_log AFTER UPDATE ON leek_task FOR EACH ROW "
    "WHEN (NEW.status = 'running' AND OLD.status <> 'running') "
    "EXECUTE FUNCTION marks_seen_log()",
]
SQLITE_UNDO = ["DROP TRIGGER IF EXISTS marks_seen_log", "DROP TABLE IF EXISTS marks_seen"]
PG_UNDO = [
    "DROP TRIGGER IF EXISTS marks_seen_log ON leek_task",
    "DROP FUNCTION IF EXISTS marks_seen_log()",
    "DROP TABLE IF EXISTS marks_seen",
]


@pytest.fixture
def marks_seen(transactional_db: Any) -> Iterator[Any]:
    """A function of the ids of the tasks the database saw set running, in order."""
    sqlite = connection.vendor == "sqlite"
    with connection.cursor() as cursor:
        for statement in SQLITE_LOG if sqlite else PG_LOG:
            cursor.execute(statement)

    def seen() -> list[str]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT task_id FROM marks_seen")
            return [hexed(key) for (key,) in cursor.fetchall()]

    try:
        yield seen
    finally:
        with connection.cursor() as cursor:
            for statement in SQLITE_UNDO if sqlite else PG_UNDO:
                cursor.execute(statement)


@pytest.fixture
def store(marks_seen: Any) -> Iterator[Store]:
    store = Store("marks-a", lambda ready: None)
    store.epoch = EPOCH
    store.start()
    try:
        yield store
    finally:
        store.stop()


def written(store: Store) -> None:
    """Wait until the outcomes lane has written what it was handed."""
    store.outcomes.wait_for(Call(lambda cursor, d: None)).wait(10)


def hexed(key: Any) -> str:
    return str(key).replace("-", "")


def test_a_task_that_ends_within_the_moment_gets_no_running_mark(
    store: Store, marks_seen: Any
) -> None:
    (key,) = inserted(store, 1)
    store.mark_running(key, 1, time.time(), EPOCH)
    store.nudge()  # the duty's tick: the mark is not due yet
    written(store)
    assert Task.objects.get(pk=key).status == "queued"
    ended = threading.Event()
    store.record(success(key), ended.set)
    assert ended.wait(10)
    store.nudge()
    written(store)
    row = Task.objects.get(pk=key)
    assert (row.status, row.attempts) == ("succeeded", 1)
    assert marks_seen() == []
    assert len(store.marks) == 0


def test_a_task_still_running_after_the_moment_shows_running(store: Store, marks_seen: Any) -> None:
    keys = inserted(store, 2)
    started = time.time()
    for key in keys:
        store.mark_running(key, 1, started, EPOCH)
    store.nudge()
    written(store)
    assert marks_seen() == []
    time.sleep(max(0.0, started + MARK_AFTER - time.time()) + 0.01)
    store.nudge()
    written(store)
    assert sorted(marks_seen()) == sorted(hexed(k) for k in keys)
    rows = Task.objects.filter(pk__in=keys)
    assert {(r.status, r.attempts) for r in rows} == {("running", 1)}


def test_a_stop_writes_the_running_marks_it_holds(marks_seen: Any) -> None:
    store = Store("marks-b", lambda ready: None)
    store.epoch = EPOCH
    store.start()
    (key,) = inserted(store, 1)
    store.mark_running(key, 1, time.time(), EPOCH)
    store.stop()
    assert Task.objects.get(pk=key).status == "running"
    assert marks_seen() == [hexed(key)]


@BOTH_POOLS
def test_a_broker_marks_its_long_tasks_running_and_not_its_short_ones(
    broker_factory: Any, pool: str, marks_seen: Any
) -> None:
    broker_factory(LEEK_POOL=pool, LEEK_WORKERS="1")
    # Each runs a fifth of the moment: the old way, a tick of the duties
    # (every 0.1 s) wrote the mark of one in five.
    short = [leek.enqueue(tasks.sleep, (MARK_AFTER / 5,)) for _ in range(10)]
    long = leek.enqueue(tasks.sleep, (MARK_AFTER * 15,))
    wait_for(lambda: long.status() == "running")
    assert all(h.status() == "succeeded" for h in short)
    assert long.result(timeout=20) == MARK_AFTER * 15
    assert marks_seen() == [hexed(long.id)]


def test_a_mark_whose_start_is_ahead_of_the_clock_is_not_held_for_ever() -> None:
    # The clock was set back an hour after the task started.
    marks = HeldMarks()
    ahead, now = Mark("a", 1, time.time() + 3600), Mark("b", 1, time.time())
    marks.hold(ahead)
    marks.hold(now)
    assert marks.take() == [ahead]
    assert marks.take(every=True) == [now]
