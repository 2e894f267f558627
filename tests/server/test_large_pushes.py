"""A push of many tasks is written off the event loop: the broker answers its
other connections while the write goes on.

The write is held for real: a trigger on the task table sleeps in the
database, inserting a marked task, until the test opens a gate (a row in a
table of its own). PostgreSQL shows the broker's backend asleep in
pg_stat_activity, so the test knows the write has begun."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection

import leek
from leek.models import Task
from leek.server.store import HEAVY_PUSH
from tests import tasks
from tests.conftest import BrokerProcess, wait_for

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="pg_sleep holds the write where the test sees it"
)

MARK = "hold-the-write"  # as the trigger matches it


@pytest.fixture
def held_writes(transactional_db: Any) -> Iterator[None]:
    """A trigger that holds the insert of a task marked MARK until the gate opens."""
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE leek_test_gate (opened boolean)")
        cursor.execute(
            "CREATE FUNCTION leek_test_hold() RETURNS trigger AS $$ BEGIN "
            "IF NEW.args_repr LIKE '%hold-the-write%' THEN "
            "WHILE NOT EXISTS (SELECT 1 FROM leek_test_gate) LOOP PERFORM pg_sleep(0.02); "
            "END LOOP; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        cursor.execute(
            "CREATE TRIGGER leek_test_hold BEFORE INSERT ON leek_task "
            "FOR EACH ROW EXECUTE FUNCTION leek_test_hold()"
        )
    try:
        yield
    finally:
        open_gate()
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER leek_test_hold ON leek_task")
            cursor.execute("DROP FUNCTION leek_test_hold()")
            cursor.execute("DROP TABLE leek_test_gate")


def open_gate() -> None:
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO leek_test_gate VALUES (true)")


def writes_held() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event = 'PgSleep' AND datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        return bool(cursor.fetchone()[0])


def test_the_broker_answers_while_a_large_push_is_written(
    held_writes: None, broker: BrokerProcess
) -> None:
    calls = [(tasks.add, (i, 1)) for i in range(HEAVY_PUSH)] + [(tasks.echo, (MARK,))]
    pushed: list[Any] = []
    pusher = threading.Thread(target=lambda: pushed.append(leek.enqueue_many(calls)))
    pusher.start()
    try:
        wait_for(writes_held)
        # Answered while the push's write waits in the database, its tasks not committed.
        assert leek.ping() == (True, "I'm OK")
        assert Task.objects.count() == 0
        assert pusher.is_alive()
    finally:
        open_gate()
        pusher.join(30)
    assert len(pushed[0]) == HEAVY_PUSH + 1
    assert Task.objects.count() == HEAVY_PUSH + 1
    assert pushed[0][-1].result(timeout=20) == {"args": [MARK], "kwargs": {}}


def test_a_small_push_is_still_written_by_the_loop_that_read_it(
    held_writes: None, broker: BrokerProcess
) -> None:
    # Below HEAVY_PUSH the loop writes the push itself, as one client pushing
    # alone pays no thread switch: a ping waits for that write.
    calls = [(tasks.add, (i, 1)) for i in range(3)] + [(tasks.echo, (MARK,))]
    pushed: list[Any] = []
    pusher = threading.Thread(target=lambda: pushed.append(leek.enqueue_many(calls)))
    pusher.start()
    answered: list[Any] = []
    pinger = threading.Thread(target=lambda: answered.append(leek.ping()))
    try:
        wait_for(writes_held)
        pinger.start()
        pinger.join(0.5)
        assert not answered  # the loop is in the write
    finally:
        open_gate()
        pusher.join(30)
        pinger.join(30)
    assert answered == [(True, "I'm OK")]
    assert Task.objects.count() == 4
