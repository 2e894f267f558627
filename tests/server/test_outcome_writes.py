"""The outcomes of tasks as the store writes them, in batches of one and of many.

On PostgreSQL a batch's successes are one statement and each failure one, and
a batch of one write, or of successes alone, is a transaction of its own
(store/batch.py, store/outcomes.py `at_once`), while a
task that is refused, cancelled, gone or a chain's step goes the whole way
(`write_rows`). Each case here ends its task as the whole way would, on both
databases.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction

from leek.models import FailedTask, SuccessTask, Task
from leek.server.rows import Outcome
from leek.server.store import Store
from leek.server.store.outcomes import MANY_SUCCESSES
from tests.server.test_store import new_task

EPOCH = 3


@pytest.fixture
def store(transactional_db: Any) -> Iterator[Store]:
    routed: list[Any] = []
    store = Store("write-a", routed.extend)
    store.epoch = EPOCH
    store.routed = routed  # type: ignore[attr-defined]
    store.start()
    try:
        yield store
    finally:
        store.stop()


def inserted(store: Store, count: int, **changes: Any) -> list[Any]:
    tasks = [new_task(**changes) for _ in range(count)]
    done = threading.Event()
    store.insert(tasks, lambda value, error: done.set())
    assert done.wait(10)
    return [t.id for t in tasks]


def alone(store: Store, outcome: Outcome) -> None:
    """Write `outcome` in a batch of its own, and wait for its commit."""
    ended = threading.Event()
    store.record(outcome, ended.set)
    assert ended.wait(10)


def success(key: Any) -> Outcome:
    now = time.time()
    return Outcome(key, "t", 1, now, now + 1, True, b"r", "'r'", "out", epoch=EPOCH)


def failure(key: Any, final: bool, retry_at: float | None = None) -> Outcome:
    now = time.time()
    return Outcome(key, "t", 1, now, now + 1, False, exc_type="E", exc_message="m",
                   traceback="tb", final=final, retry_at=retry_at, epoch=EPOCH)  # fmt: skip


def test_one_success_alone_ends_its_task_with_its_row(store: Store) -> None:
    (key,) = inserted(store, 1)
    alone(store, success(key))
    row = Task.objects.get(pk=key)
    assert (row.status, row.attempts) == ("succeeded", 1)
    attempt = SuccessTask.objects.get(task_id=key)
    assert (attempt.result, attempt.stdout, attempt.broker) == (b"r", "out", "write-a")
    assert abs(attempt.duration - 1) < 0.001


def test_one_failure_alone_retries_or_ends_its_task(store: Store) -> None:
    again, over = inserted(store, 2, max_retries=1)
    later = time.time() + 60
    alone(store, failure(again, final=False, retry_at=later))
    alone(store, failure(over, final=True))
    rows = {t.id: t for t in Task.objects.all()}
    assert rows[again].status == "queued" and rows[over].status == "failed"
    retry_at = rows[again].run_after
    assert retry_at is not None and abs(retry_at.timestamp() - later) < 0.001
    finals = dict(FailedTask.objects.values_list("task_id", "final"))
    assert finals == {again: False, over: True}


def test_one_mark_alone_shows_its_task_running(store: Store) -> None:
    (key,) = inserted(store, 1)
    store.mark_running(key, 1, time.time() - 1, EPOCH)  # a task running for a second
    store.nudge()  # the duty that hands the marks due to the lane
    wait = time.monotonic() + 10
    while Task.objects.get(pk=key).status != "running":
        assert time.monotonic() < wait
        time.sleep(0.01)
    assert Task.objects.get(pk=key).attempts == 1


def test_the_outcome_of_a_task_another_claim_holds_is_refused(store: Store) -> None:
    (key,) = inserted(store, 1)
    Task.objects.filter(pk=key).update(broker="write-b")
    alone(store, success(key))
    assert Task.objects.get(pk=key).status == "queued"
    assert not SuccessTask.objects.exists() and store.writes.refused == 1


def test_a_cancelled_task_keeps_its_status_and_gets_its_attempt_s_row(store: Store) -> None:
    (key,) = inserted(store, 1)
    Task.objects.filter(pk=key).update(status="cancelled")
    alone(store, success(key))
    assert Task.objects.get(pk=key).status == "cancelled"
    assert SuccessTask.objects.filter(task_id=key).count() == 1
    assert store.writes.refused == 0


def test_the_outcome_of_a_task_gone_is_dropped_loudly(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    (key,) = inserted(store, 1)
    Task.objects.filter(pk=key).delete()
    alone(store, success(key))
    assert not SuccessTask.objects.exists()
    assert "outcome dropped: its task is gone" in caplog.text


def test_the_success_of_a_chain_s_step_releases_the_next_one(store: Store) -> None:
    first, then = inserted(store, 2)
    Task.objects.filter(pk=then).update(status="waiting")
    Task.objects.filter(pk=first).update(next_step=then)
    alone(store, success(first))
    assert Task.objects.get(pk=first).status == "succeeded"
    assert Task.objects.get(pk=then).status == "queued"
    assert then in [r.id for r in store.routed]  # type: ignore[attr-defined]


def test_a_step_released_by_an_outcome_written_again_is_dispatched_once(store: Store) -> None:
    """The first try of a batch committed a step's success, releasing the
    next step, and its answer was lost: nothing dispatched the step. The
    batch written again finds the success written, and dispatches it."""
    first, then = inserted(store, 2)
    Task.objects.filter(pk=then).update(status="waiting")
    Task.objects.filter(pk=first).update(next_step=then)
    outcome = success(first)
    with transaction.atomic(), connection.cursor() as cursor:  # committed, its answer lost
        store.writes.write_outcomes(cursor.cursor, [outcome])
    assert Task.objects.get(pk=then).status == "queued"
    routed: list[Any] = store.routed  # type: ignore[attr-defined]
    routed.clear()
    alone(store, outcome)
    assert [r.id for r in routed] == [then]
    assert SuccessTask.objects.filter(task_id=first).count() == 1
    assert store.writes.refused == 0


def test_a_batch_of_marks_and_outcomes_writes_each_task_as_one_by_one_would(
    transactional_db: Any,
) -> None:
    """Marks and outcomes of several tasks in one batch (on PostgreSQL, one
    statement an outcome, in one transaction): every task ends as its own
    statements would leave it, the task another claim took over included."""
    store = Store("batch-a", lambda ready: None)
    store.epoch = 3
    store.start()
    try:
        tasks = [new_task(max_retries=1) for _ in range(8)]
        done = threading.Event()
        store.insert(tasks, lambda value, error: done.set())
        assert done.wait(10)
        a, b, c, d, e, f, g, h = (t.id for t in tasks)
        Task.objects.filter(pk=h).update(broker="batch-b")  # another broker's claim now
        now = time.time()
        later = now + 60
        ended = threading.Event()
        with store.outcomes._lock:  # no batch is written until all wait: one batch
            for key in (a, b, c, d, e, f):
                store.mark_running(key, 1, now, 3)
            store.record(Outcome(c, "c", 1, now, now + 1, True, b"\x00r", "'r'", "out", epoch=3))
            store.record(Outcome(d, "d", 1, now, now + 2, True, None, "None", epoch=3))
            store.record(
                Outcome(e, "e", 1, now, now + 3, False, exc_type="E", exc_message="again",
                        traceback="tb", final=False, retry_at=later, epoch=3)
            )  # fmt: skip
            store.record(
                Outcome(f, "f", 1, now, now + 4, False, exc_type="F", exc_message="over",
                        stderr="err", final=True, epoch=3)
            )  # fmt: skip
            store.record(Outcome(g, "g", 1, now, now + 5, True, epoch=3))
            store.record(Outcome(h, "h", 1, now, now + 6, True, epoch=3), ended.set)
        assert ended.wait(10)
    finally:
        store.stop()
    rows = {t.id: t for t in Task.objects.all()}
    assert [(rows[k].status, rows[k].attempts) for k in (a, b, c, d, e, f, g, h)] == [
        ("running", 1),
        ("running", 1),
        ("succeeded", 1),
        ("succeeded", 1),
        ("queued", 1),
        ("failed", 1),
        ("succeeded", 1),
        ("queued", 0),  # refused: another claim holds it
    ]
    assert rows[a].started_at is not None and rows[a].finished_at is None
    retry_at, failed_at = rows[e].run_after, rows[f].finished_at
    assert retry_at is not None and abs(retry_at.timestamp() - later) < 0.001
    assert failed_at is not None and abs(failed_at.timestamp() - (now + 4)) < 0.001
    successes = {s.task_id: s for s in SuccessTask.objects.all()}
    assert sorted(successes) == sorted([c, d, g])
    assert (successes[c].result, successes[c].result_repr, successes[c].stdout) == (
        b"\x00r",
        "'r'",
        "out",
    )
    assert successes[d].result is None and abs(successes[d].duration - 2) < 0.001
    assert {s.broker for s in successes.values()} == {"batch-a"}
    failures = {x.task_id: x for x in FailedTask.objects.all()}
    assert sorted(failures) == sorted([e, f])
    assert (failures[e].final, failures[e].exc_message, failures[e].traceback) == (
        False,
        "again",
        "tb",
    )
    assert (failures[f].final, failures[f].exc_type, failures[f].stderr) == (True, "F", "err")
    assert store.writes.refused == 1


def successes_in_one_batch(store: Store, outcomes: list[Outcome]) -> None:
    """Record `outcomes` so that one batch takes them all, and wait for its commit."""
    ended = threading.Event()
    with store.outcomes._lock:  # no batch is written until all wait: one batch
        for outcome in outcomes[:-1]:
            store.record(outcome)
        store.record(outcomes[-1], ended.set)
    assert ended.wait(10)


@pytest.mark.parametrize("more", [0, MANY_SUCCESSES], ids=["few", "many"])
def test_a_batch_of_successes_ends_each_task_as_one_by_one_would(store: Store, more: int) -> None:
    """Successes alone in a batch (on PostgreSQL a statement each, or one
    for all past MANY_SUCCESSES, in autocommit, and the whole way for the
    rest): plain ones, one another claim holds, one cancelled, one gone and
    a chain's step."""
    plain, empty, taken, cancelled, gone, first, then = inserted(store, 7)
    others = inserted(store, more)
    Task.objects.filter(pk=taken).update(broker="write-b")
    Task.objects.filter(pk=cancelled).update(status="cancelled")
    Task.objects.filter(pk=then).update(status="waiting")
    Task.objects.filter(pk=first).update(next_step=then)
    Task.objects.filter(pk=gone).delete()
    now = time.time()
    outcomes = [success(key) for key in (plain, taken, cancelled, gone, first, *others)]
    outcomes.insert(1, Outcome(empty, "e", 1, now, now + 2, True, None, "None", epoch=EPOCH))
    successes_in_one_batch(store, outcomes)
    status = dict(Task.objects.values_list("id", "status"))
    assert [status[k] for k in (plain, empty, taken, cancelled, first, then)] == [
        "succeeded",
        "succeeded",
        "queued",  # refused: another claim holds it
        "cancelled",
        "succeeded",
        "queued",  # released by its step
    ]
    assert {status[k] for k in others} <= {"succeeded"}
    rows = {s.task_id: s for s in SuccessTask.objects.all()}
    assert sorted(rows) == sorted([plain, empty, cancelled, first, *others])
    assert (rows[plain].result, rows[plain].stdout, rows[plain].broker) == (b"r", "out", "write-a")
    assert rows[empty].result is None and abs(rows[empty].duration - 2) < 0.001
    assert Task.objects.get(pk=plain).lock_key is None
    assert store.writes.refused == 1
    assert then in [r.id for r in store.routed]  # type: ignore[attr-defined]


@pytest.mark.postgresql
def test_a_batch_held_back_after_its_successes_were_committed_writes_none_twice(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """The successes of a batch are committed by their own statement; a chain's
    step in the same batch waits for a row another transaction holds, and the
    batch is tried again until it is let go: the retry writes the rest, and
    not the successes already committed (which it would find ended, and refuse)."""
    if connection.vendor != "postgresql":
        pytest.skip("row locks: PostgreSQL")
    plain, other, first, then = inserted(store, 4)
    Task.objects.filter(pk=then).update(status="waiting")
    Task.objects.filter(pk=first).update(next_step=then)
    holder = connections.create_connection(DEFAULT_DB_ALIAS)
    holder.inc_thread_sharing()  # let go of by a timer's thread
    try:
        holder.set_autocommit(False)
        with holder.cursor() as cursor:
            cursor.execute("SELECT 1 FROM leek_task WHERE id = %s FOR UPDATE", [first])
        threading.Timer(0.5, holder.rollback).start()
        successes_in_one_batch(store, [success(key) for key in (plain, other, first)])
    finally:
        time.sleep(0.6)
        holder.close()
    status = dict(Task.objects.values_list("id", "status"))
    assert [status[k] for k in (plain, other, first, then)] == [
        "succeeded",
        "succeeded",
        "succeeded",
        "queued",
    ]
    assert sorted(SuccessTask.objects.values_list("task_id", flat=True)) == sorted(
        [plain, other, first]
    )
    assert store.writes.refused == 0, caplog.text
    assert "outcome refused" not in caplog.text


@pytest.fixture
def success_statements(store: Store) -> Iterator[Any]:
    """How many statements have inserted SuccessTask rows, and in how many
    transactions (PostgreSQL: a trigger for each statement logs it with its
    transaction's id, and whether the planner could choose a nested loop
    for it)."""
    if connection.vendor != "postgresql":
        pytest.skip("a statement trigger: PostgreSQL")
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE success_statements (xid bigint, nestloop text)")
        cursor.execute(
            "CREATE FUNCTION success_statements_log() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN INSERT INTO success_statements "
            "VALUES (txid_current(), current_setting('enable_nestloop')); RETURN NULL; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER success_statements_log AFTER INSERT ON leek_successtask "
            "FOR EACH STATEMENT EXECUTE FUNCTION success_statements_log()"
        )

    def count() -> tuple[int, int]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*), count(DISTINCT xid) FROM success_statements")
            statements, transactions = cursor.fetchone()
            return int(statements), int(transactions)

    try:
        yield count
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER IF EXISTS success_statements_log ON leek_successtask")
            cursor.execute("DROP FUNCTION IF EXISTS success_statements_log()")
            cursor.execute("DROP TABLE IF EXISTS success_statements")


@pytest.mark.postgresql
def test_a_batch_of_many_successes_is_one_statement(store: Store, success_statements: Any) -> None:
    keys = inserted(store, MANY_SUCCESSES + 1)
    successes_in_one_batch(store, [success(key) for key in keys])
    assert set(Task.objects.values_list("status", flat=True)) == {"succeeded"}
    assert SuccessTask.objects.count() == MANY_SUCCESSES + 1
    assert success_statements() == (1, 1)


def nested_loops() -> list[str]:
    """The planner's enable_nestloop as each statement that inserted
    SuccessTask rows ran (the `success_statements` trigger)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT nestloop FROM success_statements")
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.postgresql
def test_many_successes_are_planned_with_no_nested_loop(
    store: Store, success_statements: Any
) -> None:
    """Planned with the statistics of a table never analysed, a nested loop
    over the whole table read the batch's arrays once for each task it
    found: minutes for a batch of thousands (outcomes.hashed). The
    one-task statement keeps the planner's default."""
    keys = inserted(store, MANY_SUCCESSES + 4)
    successes_in_one_batch(store, [success(key) for key in keys[: MANY_SUCCESSES + 1]])
    successes_in_one_batch(store, [success(key) for key in keys[MANY_SUCCESSES + 1 :]])
    assert nested_loops() == ["off", "on", "on", "on"]
    assert SuccessTask.objects.count() == MANY_SUCCESSES + 4


@pytest.fixture
def writing(transactional_db: Any) -> Iterator[Any]:
    """A cursor of a psycopg connection of its own in autocommit, as a
    writing connection's is (PostgreSQL)."""
    if connection.vendor != "postgresql":
        pytest.skip("a psycopg connection: PostgreSQL")
    import psycopg

    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as conn:
        yield conn.cursor()


def hashed(cursor: Any, statement: str) -> None:
    """`statement` run on `cursor` as the batch of successes is (outcomes.hashed)."""
    from leek.server.rows import Dialect
    from leek.server.store import outcomes

    outcomes.hashed(Dialect("postgresql"), cursor, statement, ())


NESTLOOP = "SELECT current_setting('enable_nestloop')"


@pytest.mark.postgresql
def test_no_nested_loop_is_the_statement_s_own_in_an_open_transaction(writing: Any) -> None:
    """In a batch's transaction (marks and successes together), the
    statements after it are planned as before."""
    writing.execute("BEGIN")
    hashed(writing, NESTLOOP)
    assert writing.fetchall() == [("off",)]
    writing.execute(NESTLOOP)
    assert writing.fetchall() == [("on",)]
    writing.execute("COMMIT")
    hashed(writing, NESTLOOP)
    assert writing.fetchall() == [("off",)]
    writing.execute(NESTLOOP)
    assert writing.fetchall() == [("on",)]


@pytest.mark.postgresql
def test_a_batch_statement_that_fails_leaves_its_connection_as_it_found_it(writing: Any) -> None:
    """Its own transaction rolled back; an open one left for the caller's rollback."""
    import psycopg

    status = writing.connection.info
    with pytest.raises(psycopg.errors.DivisionByZero):
        hashed(writing, "SELECT 1 / 0")
    assert status.transaction_status == psycopg.pq.TransactionStatus.IDLE
    writing.execute(NESTLOOP)
    assert writing.fetchall() == [("on",)]
    writing.execute("BEGIN")
    with pytest.raises(psycopg.errors.DivisionByZero):
        hashed(writing, "SELECT 1 / 0")
    assert status.transaction_status == psycopg.pq.TransactionStatus.INERROR
    writing.execute("ROLLBACK")
    writing.execute(NESTLOOP)
    assert writing.fetchall() == [("on",)]


@pytest.mark.postgresql
def test_a_few_successes_are_a_statement_each_committed_together(
    store: Store, success_statements: Any
) -> None:
    """Sent in one pipeline, in autocommit: one transaction, which commits
    at the pipeline's Sync, all of them or none."""
    keys = inserted(store, 3)
    successes_in_one_batch(store, [success(key) for key in keys])
    assert set(Task.objects.values_list("status", flat=True)) == {"succeeded"}
    assert SuccessTask.objects.count() == 3
    assert success_statements() == (3, 1)


@pytest.mark.parametrize("ending", ["success", "retry", "final", "cancelled"])
def test_an_outcome_written_again_is_written_once(store: Store, ending: str) -> None:
    """A batch whose commit's answer was lost is written again: its outcomes,
    committed the first time, are each written once, and none is refused
    (which would drop a retry waiting for its time, and log a lost claim)."""
    (key,) = inserted(store, 1, max_retries=1)
    if ending == "cancelled":
        Task.objects.filter(pk=key).update(status="cancelled")
    if ending in ("success", "cancelled"):
        outcome = success(key)
    else:
        outcome = failure(key, final=ending == "final", retry_at=time.time() + 60)
    alone(store, outcome)
    first = Task.objects.get(pk=key)
    alone(store, outcome)
    again = Task.objects.get(pk=key)
    assert (again.status, again.attempts, again.run_after) == (
        first.status,
        first.attempts,
        first.run_after,
    )
    ended = {"success": "succeeded", "retry": "queued", "final": "failed"}
    assert again.status == ended.get(ending, ending)
    rows = SuccessTask if outcome.succeeded else FailedTask
    assert rows.objects.filter(task_id=key, attempt=1).count() == 1
    assert store.writes.refused == 0


def test_the_next_attempt_s_outcome_is_written_after_a_retry(store: Store) -> None:
    """What keeps an attempt's outcome from being written twice keeps none of
    the next attempt's: the task queued again for its retry ends with it."""
    (key,) = inserted(store, 1, max_retries=1)
    alone(store, failure(key, final=False, retry_at=time.time()))
    now = time.time()
    alone(store, Outcome(key, "t", 2, now, now + 1, True, b"r", "'r'", "", epoch=EPOCH))
    row = Task.objects.get(pk=key)
    assert (row.status, row.attempts) == ("succeeded", 2)
    assert FailedTask.objects.filter(task_id=key).count() == 1
    assert SuccessTask.objects.filter(task_id=key, attempt=2).count() == 1
