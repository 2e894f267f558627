"""The group commit on a real database: what one bad write may and may not cost."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from leek.ids import new_task_id
from leek.models import Task
from leek.server.rows import NewTask, Outcome
from leek.server.store import Store


def new_task(**changes: Any) -> NewTask:
    fields: dict[str, Any] = {
        "id": new_task_id(),
        "name": "tests.tasks.noop",
        "queue": "default",
        "priority": 0,
        "payload": b"x",
        "args_repr": "",
        "max_retries": 0,
        "timeout": None,
        "run_after": None,
        "code_version": "",
    }
    return NewTask(**{**fields, **changes})


class Replies:
    def __init__(self) -> None:
        self.got: dict[str, tuple[Any, BaseException | None]] = {}
        self.all_in = threading.Event()

    def to(self, name: str, expected: int) -> Any:
        def done(value: Any, error: BaseException | None) -> None:
            self.got[name] = (value, error)
            if len(self.got) == expected:
                self.all_in.set()

        return done


def test_an_error_that_is_not_the_database_fails_only_its_own_writes(
    transactional_db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store("test-node", lambda ready: None)
    store.start()
    good, bad = new_task(), new_task(run_after=float("inf"))  # no datetime holds it
    replies = Replies()

    def broken(cursor: Any, dialect: Any) -> None:
        raise RuntimeError("a bug in a sweep")

    def queue_one_batch() -> Any:  # all queued while no batch is written: one batch
        store.insert([good], replies.to("good", 2))
        store.insert([bad], replies.to("bad", 2))
        return store.call(broken)

    try:
        sweep = store.between_batches(queue_one_batch)
        assert replies.all_in.wait(10), replies.got
        value, error = replies.got["good"]
        assert error is None and [r.id for r in value] == [good.id]
        value, error = replies.got["bad"]
        assert isinstance(error, OverflowError)
        with pytest.raises(RuntimeError, match="a bug in a sweep"):
            sweep.wait(10)
        assert store.call(lambda cursor, dialect: "still writing").wait(10) == "still writing"
    finally:
        store.stop()
    assert list(Task.objects.values_list("id", flat=True)) == [good.id]
    assert store.healthy  # the database was never the problem
    assert "write refused kind=insert error=OverflowError" in caplog.text


def test_a_failing_commit_handler_still_sends_the_replies(transactional_db: Any) -> None:
    def on_ready(ready: Any) -> None:
        raise RuntimeError("the queues refused")

    store = Store("test-node", on_ready)
    store.start()
    replies = Replies()
    task = new_task()
    try:
        store.insert([task], replies.to("task", 1))
        assert replies.all_in.wait(10)
    finally:
        store.stop()
    value, error = replies.got["task"]
    assert error is None and [r.id for r in value] == [task.id]
    assert Task.objects.filter(pk=task.id).exists()


def test_inserts_of_one_batch_share_a_statement_and_a_replayed_id_runs_once(
    transactional_db: Any,
) -> None:
    routed: list[Any] = []
    store = Store("test-node", routed.extend)
    store.start()
    first, second, again = new_task(), new_task(), new_task()
    replay = new_task(id=first.id)  # a client that resent its frame
    replies = Replies()

    def queue_one_batch() -> None:
        store.insert([first], replies.to("first", 3))
        store.insert([second, again], replies.to("second", 3))
        store.insert([replay, replay], replies.to("replay", 3))

    try:
        commits = store.commits
        store.between_batches(queue_one_batch)
        assert replies.all_in.wait(10), replies.got
    finally:
        store.stop()
    assert store.commits == commits + 1  # the three clients' inserts, one commit
    assert [r.id for r in replies.got["first"][0]] == [first.id]
    assert [r.id for r in replies.got["second"][0]] == [second.id, again.id]
    assert replies.got["replay"] == ([], None)  # accepted, and nothing new to run
    assert sorted(r.id for r in routed) == sorted([first.id, second.id, again.id])
    assert Task.objects.count() == 3


@pytest.mark.parametrize("options", [{}, {"prepare_threshold": None}])
def test_postgresql_prepares_the_insert_unless_the_options_say_not_to(
    transactional_db: Any, options: dict[str, Any]
) -> None:
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's prepared statements")
    saved = connection.settings_dict.get("OPTIONS", {})
    connection.settings_dict["OPTIONS"] = {**saved, **options}
    store = Store("test-node", lambda ready: None)
    store.start()
    try:
        for _ in range(8):
            replies = Replies()
            store.insert([new_task()], replies.to("task", 1))
            assert replies.all_in.wait(10)

        def prepared(cursor: Any, dialect: Any) -> list[str]:
            cursor.execute("SELECT statement FROM pg_prepared_statements")
            return [row[0] for row in cursor.fetchall()]

        statements = store.call(prepared).wait(10)
    finally:
        store.stop()
        connection.settings_dict["OPTIONS"] = saved
    inserts = [s for s in statements if s.startswith("INSERT INTO leek_task")]
    assert len(inserts) == (0 if options else 1)


def test_on_postgresql_an_outcome_held_up_never_holds_up_an_acknowledgement(
    transactional_db: Any,
) -> None:
    from django.db import DEFAULT_DB_ALIAS, connection, connections

    if connection.vendor != "postgresql":
        pytest.skip("SQLite writes with one connection at a time")
    store = Store("test-node", lambda ready: None)
    store.start()
    first, second = new_task(), new_task()
    other = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        replies = Replies()
        store.insert([first], replies.to("first", 1))
        assert replies.all_in.wait(10)
        other.ensure_connection()
        with other.connection.transaction():
            # Another session holds the task's row: its outcome waits for it.
            other.connection.execute(
                "SELECT id FROM leek_task WHERE id = %s FOR UPDATE", (first.id,)
            )
            now = time.time()
            store.record(Outcome(first.id, first.name, 1, now, now, succeeded=True))
            waiting = (
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            deadline = time.monotonic() + 10
            while _one(waiting) != 1:  # seen from a third session, outside this transaction
                assert time.monotonic() < deadline, "the outcome never reached the lock"
                time.sleep(0.01)
            replies = Replies()
            store.insert([second], replies.to("second", 1))
            assert replies.all_in.wait(5), "the acknowledgement waited for the outcome"
            assert replies.got["second"][1] is None
        deadline = time.monotonic() + 10
        while Task.objects.get(pk=first.id).status != "succeeded":
            assert time.monotonic() < deadline, "the outcome was lost"
            time.sleep(0.01)
    finally:
        store.stop()
        other.close()


def _one(sql: str) -> Any:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]
