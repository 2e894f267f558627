"""The plans PostgreSQL makes for the store's statements, as the task table changes.

A statement that finds tasks by a list is planned for each run (sql.by_list):
a plan kept from a broker's first runs, made while the table was small, would
read the whole table on every run once it grew. The batch of successes finds
each task by its id, whatever the statistics say.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from leek.models import SuccessTask, Task
from leek.server.store import Store
from tests.server.test_outcome_writes import EPOCH, inserted, success, successes_in_one_batch
from tests.server.test_store import new_task


def add_tasks(cursor: Any, status: str, broker: str) -> None:
    """20,000 tasks of `status`, owned by `broker`, straight into the table (PostgreSQL)."""
    cursor.execute(
        "INSERT INTO leek_task (id, name, queue, priority, status, payload, args_repr, "
        "attempts, max_retries, queued_at, broker, spooled, code_version, progress_note, "
        "requeues, key_running, rate_limit, epoch) SELECT gen_random_uuid(), 'n', "
        "'default', 0, %s, '\\x00', '', 0, 0, now(), %s, false, '', '', 0, false, '', 1 "
        "FROM generate_series(1, 20000)",
        [status, broker],
    )


@pytest.mark.postgresql
def test_the_successes_statement_finds_each_task_by_its_id_when_the_statistics_are_stale(
    transactional_db: Any,
) -> None:
    """The statistics saw only ended tasks; then a backlog came. Read by the
    status index, each batch of successes would read every queued task."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's planner")
    import psycopg

    from leek.server.rows import Dialect
    from leek.server.store.outcomes import many_params
    from leek.server.store.sql import PG_SUCCESS_MANY

    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE leek_task SET (autovacuum_enabled = false)")
        try:
            add_tasks(cursor, "succeeded", "b")
            cursor.execute("ANALYZE leek_task")
            add_tasks(cursor, "queued", "b")
            cursor.execute("SELECT id FROM leek_task WHERE status = 'queued' LIMIT 3")
            keys = [key for (key,) in cursor.fetchall()]
            plan = psycopg.Cursor(cursor.connection)
            params = many_params(Dialect("postgresql"), [success(k) for k in keys], "b")
            plan.execute("EXPLAIN " + PG_SUCCESS_MANY, params)
            text = "\n".join(line for (line,) in plan.fetchall())
        finally:
            cursor.execute("ALTER TABLE leek_task RESET (autovacuum_enabled)")
    assert "leek_task_pkey" in text and "leek_task_status_queued_at" not in text, text


@pytest.mark.postgresql
def test_a_batch_of_successes_has_no_nested_loop_on_a_table_never_analysed(
    transactional_db: Any,
) -> None:
    """A backlog has just come into a task table that was never analysed:
    the planner expects one of its rows to match a batch's, and a nested
    loop would read the whole table once and the batch's arrays again for
    each task it found (136 s for 2,300 tasks in a table of 120,000). As
    the store plans the statement (outcomes.hashed), it has none."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's planner")
    import psycopg

    from leek.server.rows import Dialect
    from leek.server.store.outcomes import hashed, many_params
    from leek.server.store.sql import PG_SUCCESS_MANY

    d = Dialect("postgresql")
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE leek_task SET (autovacuum_enabled = false)")
        try:
            add_tasks(cursor, "queued", "b")
            cursor.execute("SELECT reltuples FROM pg_class WHERE relname = 'leek_task'")
            assert cursor.fetchone()[0] < 0  # never analysed
            cursor.execute("SELECT id FROM leek_task LIMIT 2000")
            keys = [key for (key,) in cursor.fetchall()]
            plan = psycopg.Cursor(cursor.connection)
            params = many_params(d, [success(k) for k in keys], "b")
            hashed(d, plan, "EXPLAIN " + PG_SUCCESS_MANY, params)
            text = "\n".join(line for (line,) in plan.fetchall())
        finally:
            cursor.execute("ALTER TABLE leek_task RESET (autovacuum_enabled)")
    assert "Join" in text and "Nested Loop" not in text, text


def seq_tuples_read() -> int:
    """Rows of leek_task read by sequential scans, as the statistics have them
    once every other connection to the database has ended (each reports its
    own when it ends)."""
    with connection.cursor() as cursor:
        deadline = time.monotonic() + 10
        while True:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            if cursor.fetchone()[0] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = 'leek_task'")
        return int(cursor.fetchone()[0])


def read_on_a_grown_table(action: Callable[[Store], None]) -> int:
    """Rows of leek_task read by sequential scans while a broker's store runs
    `action` fifteen times on a small task table (psycopg prepares a statement
    after five runs, and PostgreSQL may keep a generic plan after five more),
    then three times once 20,000 tasks more are there (with no new statistics:
    autovacuum is off for the table meanwhile). One sequential scan of the
    grown table reads 20,000 rows; all those of the small one, a few hundred."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's plans")
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE leek_task SET (autovacuum_enabled = false)")
    before = seq_tuples_read()
    store = Store("write-a", lambda ready: None)
    store.epoch = EPOCH
    store.start()
    try:
        for _ in range(15):
            action(store)
        with connection.cursor() as cursor:
            add_tasks(cursor, "succeeded", "write-a")
        for _ in range(3):
            action(store)
    finally:
        store.stop()
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE leek_task RESET (autovacuum_enabled)")
    return seq_tuples_read() - before


@pytest.mark.postgresql
def test_the_successes_statement_is_planned_for_the_table_as_it_is_not_as_it_was(
    transactional_db: Any,
) -> None:
    """A plan kept from a broker's first batches, made while the task table
    was small (a sequential scan then costs least), would read the whole table
    for each batch once it has grown: the statement is planned for each batch."""
    ended: list[Any] = []

    def three_successes(store: Store) -> None:
        keys = inserted(store, 3)
        successes_in_one_batch(store, [success(key) for key in keys])
        ended.extend(keys)

    assert read_on_a_grown_table(three_successes) < 20_000
    assert Task.objects.filter(pk__in=ended, status="succeeded").count() == 54


@pytest.mark.postgresql
def test_the_holders_of_keys_are_found_by_index_on_a_grown_table(transactional_db: Any) -> None:
    """Three pushes whose keys other tasks hold, in one batch: the store looks
    up the holders and the tasks by a list of each (keys.py)."""
    held: list[Any] = []

    def three_held(store: Store) -> None:
        if not held:
            held.extend(inserted(store, 1, key=f"k{i}")[0] for i in range(3))
        tasks = [new_task(key=f"k{i}") for i in range(3)]
        done = threading.Event()
        store.insert(tasks, lambda value, error: done.set())
        assert done.wait(10)
        assert [t.holder for t in tasks] == held

    assert read_on_a_grown_table(three_held) < 20_000


@pytest.mark.postgresql
def test_the_steps_of_chains_are_found_by_index_on_a_grown_table(transactional_db: Any) -> None:
    """The first steps of three chains succeed in one batch: the store looks
    up their next steps, locks them and releases them by a list of each
    (chains.py)."""
    released: list[Any] = []

    def three_chains(store: Store) -> None:
        firsts, thens = inserted(store, 3), inserted(store, 3)
        Task.objects.filter(pk__in=thens).update(status="waiting")
        for first, then in zip(firsts, thens, strict=True):
            Task.objects.filter(pk=first).update(next_step=then)
        successes_in_one_batch(store, [success(key) for key in firsts])
        released.extend(thens)

    assert read_on_a_grown_table(three_chains) < 20_000
    assert Task.objects.filter(pk__in=released, status="queued").count() == 54


@pytest.mark.postgresql
def test_outcomes_not_written_are_told_apart_by_index_on_a_grown_table(
    transactional_db: Any,
) -> None:
    """Three tasks cancelled while they ran succeed in one batch: no finish
    writes, and the store reads the three by a list to tell why (outcomes.py)."""
    cancelled: list[Any] = []

    def three_cancelled(store: Store) -> None:
        keys = inserted(store, 3)
        Task.objects.filter(pk__in=keys).update(status="cancelled")
        successes_in_one_batch(store, [success(key) for key in keys])
        cancelled.extend(keys)

    assert read_on_a_grown_table(three_cancelled) < 20_000
    assert SuccessTask.objects.filter(task_id__in=cancelled).count() == 54
