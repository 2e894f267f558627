"""Statements of scalar values sent through libpq directly (store/wire.py), on a real PostgreSQL.

A push of one task, a round of a few and a lone running mark skip psycopg's
cursor: each value must reach its column as psycopg would have sent it, a
value of any other type must be refused before anything is sent, and the
server's errors must keep the classes that tell an op's own fault from an
outage (dberrors.py).
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import DEFAULT_DB_ALIAS, connection, connections

from leek.models import Task
from leek.protocol import spin as spin_module
from leek.protocol.spin import RUNS, SHARED_WINDOW, AnswerSpins
from leek.server.dberrors import transient
from leek.server.store import Store
from tests.server.test_store import Replies, new_task


@pytest.fixture
def pg(transactional_db: Any) -> Iterator[Any]:
    """A psycopg connection of its own to the test database, in autocommit."""
    if connection.vendor != "postgresql":
        pytest.skip("libpq's statements are PostgreSQL's")
    db = connections.create_connection(DEFAULT_DB_ALIAS)
    db.ensure_connection()
    try:
        yield db.connection
    finally:
        db.close()


@pytest.fixture(autouse=True)
def no_task_lately(monkeypatch: pytest.MonkeyPatch) -> None:
    """No task of this process runs, nor started or ended lately: the waits may poll."""
    monkeypatch.setattr(RUNS, "count", 0)
    monkeypatch.setattr(RUNS, "at", 0.0)


@pytest.fixture
def kinds(pg: Any) -> Any:
    """A temporary table with a column of each kind a row holds, and its insert."""
    pg.execute(
        "CREATE TEMP TABLE kinds (b boolean, i bigint, f double precision, s text, "
        "x bytea, u uuid, d timestamptz)"
    )
    return "INSERT INTO kinds VALUES (%s, %s, %s, %s, %s, %s, %s)"


def direct(pg: Any, prepare_threshold: int | None = 5, spin: float = 0.0) -> Any:
    from leek.server.store.wire import Direct

    pg.prepare_threshold = prepare_threshold
    return Direct(pg, spin)


#: A wait for the answer that sleeps at once, and one that polls first, for
#: as long as any answer of these tests takes.
WAITS = pytest.mark.parametrize("spin", [0.0, 0.5], ids=["sleeping", "polling"])


@pytest.mark.parametrize("prepare_threshold", [5, None])
def test_each_kind_of_value_reaches_its_column_as_it_was(
    pg: Any, kinds: str, prepare_threshold: int | None
) -> None:
    rows = direct(pg, prepare_threshold)
    when = datetime(2026, 12, 6, 4, 5, 6, 789012, tzinfo=UTC)
    values = [
        (True, -(2**62), 2.5, "é\u2603 '\"\\ %s $1", b"\0\xff\x00bytes", uuid.uuid4(), when),
        (False, 0, -0.1, "", b"", uuid.uuid4(), when.astimezone(UTC) - timedelta(days=400)),
        (None, None, None, None, None, None, None),
    ]
    for row in values:
        assert rows.run(kinds, row) == 1
    got = pg.execute("SELECT b, i, f, s, x, u, d FROM kinds").fetchall()
    assert [(*r[:4], None if r[4] is None else bytes(r[4]), *r[5:]) for r in got] == values
    named = pg.execute("SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'leek_%'")
    assert named.fetchone()[0] == (0 if prepare_threshold is None else 1)


def test_floats_that_are_not_finite_go_as_postgresql_reads_them(pg: Any, kinds: str) -> None:
    rows = direct(pg)
    for value in (math.inf, -math.inf, math.nan):
        rows.run(kinds, (None, None, value, None, None, None, None))
    got = [r[0] for r in pg.execute("SELECT f FROM kinds").fetchall()]
    assert got[:2] == [math.inf, -math.inf] and math.isnan(got[2])


@pytest.mark.parametrize("value", [Decimal("1.5"), datetime(2026, 1, 1), [1, 2], 1 + 2j], ids=repr)
def test_a_value_of_another_kind_is_refused_before_anything_is_sent(
    pg: Any, kinds: str, value: Any
) -> None:
    rows = direct(pg)
    with pytest.raises(TypeError):
        rows.run(kinds, (None, None, None, None, None, None, value))
    assert rows.run(kinds, (True, 1, 1.0, "next", b"", None, None)) == 1  # still usable
    assert pg.execute("SELECT count(*) FROM kinds").fetchone()[0] == 1


@WAITS
def test_a_value_refused_raises_psycopgs_class_and_leaves_the_connection_usable(
    pg: Any, kinds: str, spin: float
) -> None:
    import psycopg

    rows = direct(pg, spin=spin)
    # libpq would end a text at its NUL: refused before it is sent, as psycopg does
    with pytest.raises(psycopg.DataError) as nul:
        rows.run(kinds, (None, None, None, "nul \0 inside", None, None, None))
    assert not transient(nul.value)  # the op's own fault: it is not tried again
    with pytest.raises(psycopg.errors.NumericValueOutOfRange) as refused:  # by the server
        rows.run(kinds, (None, 2**70, None, None, None, None, None))
    assert not transient(refused.value) and refused.value.sqlstate == "22003"
    pg.execute("CREATE UNIQUE INDEX ON kinds (i)")
    rows.run(kinds, (None, 7, None, None, None, None, None))
    with pytest.raises(psycopg.errors.UniqueViolation) as twice:
        rows.run(kinds, (None, 7, None, None, None, None, None))
    assert not transient(twice.value) and twice.value.sqlstate == "23505"
    assert rows.run(kinds, (None, 8, None, None, None, None, None)) == 1


@WAITS
def test_a_connection_the_server_ends_raises_an_outage(pg: Any, kinds: str, spin: float) -> None:
    rows = direct(pg, spin=spin)
    pid = pg.info.backend_pid
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    time.sleep(0.1)
    with pytest.raises(Exception) as ended:
        rows.run(kinds, (True, 1, None, None, None, None, None))
    assert transient(ended.value)  # the database's fault: the write is tried again


@WAITS
def test_a_connection_the_server_ends_while_its_answer_is_awaited_raises_an_outage(
    pg: Any, spin: float
) -> None:
    rows = direct(pg, spin=spin)
    pid = pg.info.backend_pid
    ender = threading.Timer(0.2, _terminate, [pid])
    ender.start()
    began = time.monotonic()
    try:
        with pytest.raises(Exception) as ended:
            rows.run("SELECT pg_sleep(%s)", (5.0,))
    finally:
        ender.join()
    assert transient(ended.value)
    assert time.monotonic() - began < 4  # not the statement's own end


def _terminate(pid: int) -> None:
    db = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        with db.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    finally:
        db.close()


def test_the_wait_for_an_answer_polls_first_while_answers_come_within_the_spin(
    pg: Any, kinds: str
) -> None:
    rows = direct(pg, spin=0.5)
    rows.run(kinds, (True, 0, None, None, None, None, None))  # prepared, then run
    polled, received = AnswerSpins.polled, AnswerSpins.received
    for n in range(1, 6):
        assert rows.run(kinds, (True, n, None, None, None, None, None)) == 1
    assert AnswerSpins.polled - polled == 5
    assert AnswerSpins.received - received == 5  # each answer found by a poll

    polled = AnswerSpins.polled
    unspun = direct(pg, None)  # another Direct on the connection: it prepares nothing
    assert unspun.run(kinds, (True, 9, None, None, None, None, None)) == 1
    assert AnswerSpins.polled == polled  # no spin: it sleeps at once


def test_answers_slower_than_the_spin_are_slept_on(pg: Any) -> None:
    rows = direct(pg, spin=0.01)
    polled = AnswerSpins.polled
    for _ in range(6):
        rows.run("SELECT pg_sleep(%s)", (0.05,))
    # Each wait of 50 ms moves the average most of the way past 10 ms: the
    # first waits poll, and the later ones sleep at once.
    assert 1 <= AnswerSpins.polled - polled < 6
    polls = AnswerSpins.polled
    rows.run("SELECT pg_sleep(%s)", (0.05,))
    assert AnswerSpins.polled == polls


def test_the_wait_does_not_poll_while_tasks_come_and_go(
    pg: Any, kinds: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = direct(pg, spin=0.5)
    rows.run(kinds, (True, 0, None, None, None, None, None))  # prepared, then run
    polled = AnswerSpins.polled
    with RUNS:  # a task of this process runs
        assert rows.run(kinds, (True, 1, None, None, None, None, None)) == 1
        monkeypatch.setattr(RUNS, "at", time.monotonic() - 2 * SHARED_WINDOW)
        assert rows.run(kinds, (True, 2, None, None, None, None, None)) == 1  # long running
    assert AnswerSpins.polled == polled
    assert rows.run(kinds, (True, 3, None, None, None, None, None)) == 1  # one ended just now
    assert AnswerSpins.polled == polled
    monkeypatch.setattr(RUNS, "at", time.monotonic() - 2 * SHARED_WINDOW)  # a while ago
    assert rows.run(kinds, (True, 4, None, None, None, None, None)) == 1
    assert AnswerSpins.polled == polled + 1


def test_one_thread_of_a_process_polls_at_a_time(pg: Any, kinds: str) -> None:
    rows = direct(pg, spin=0.5)
    polled = AnswerSpins.polled
    with spin_module._SPINNER:  # another thread spins meanwhile
        assert rows.run(kinds, (True, 1, None, None, None, None, None)) == 1
    assert AnswerSpins.polled == polled
    assert rows.run(kinds, (True, 2, None, None, None, None, None)) == 1
    assert AnswerSpins.polled == polled + 1  # its turn again
    assert pg.execute("SELECT count(*) FROM kinds").fetchone()[0] == 2


def test_the_rows_a_statement_returns_come_back_as_text(pg: Any, kinds: str) -> None:
    rows = direct(pg)
    ids = [uuid.uuid4() for _ in range(3)]
    many = "INSERT INTO kinds (u, i) VALUES (%s, %s), (%s, %s), (%s, %s) RETURNING u"
    got = rows.returning(many, [value for n, u in enumerate(ids) for value in (u, n)])
    assert [uuid.UUID(g.decode()) for g in got] == ids
    assert rows.returning("UPDATE kinds SET i = %s WHERE false RETURNING u", (1,)) == []


def test_a_statement_that_binds_anything_but_its_values_is_refused(pg: Any) -> None:
    with pytest.raises(ValueError, match="binds %s and nothing else"):
        direct(pg).run("SELECT 1 WHERE 'a' LIKE '%%' AND %s", (True,))


@pytest.mark.parametrize("others", [0, 2, 20], ids=["alone", "of three", "of 21"])
def test_a_task_keeps_every_value_in_a_push_of_any_size_on_every_database(
    transactional_db: Any, others: int
) -> None:
    # On PostgreSQL, one task is one statement of one row and a few one of a
    # few rows, through libpq; more than PG_DIRECT_ROWS go as arrays.
    store = Store("one-row", lambda ready: None)
    store.start()
    task = new_task(
        name="tâche.ünïcode",
        payload=b"\0\xff" * 40,
        args_repr="'quote' \"double\" %s $1",
        queue="q" * 64,
        priority=-7,
        max_retries=4,
        timeout=2.5,
        run_after=time.time() + 60,
        code_version="v9",
        key="k:1",
        key_running=True,
        expires=time.time() + 120,
        rate_limit="10/m",
    )
    push = (
        [new_task() for _ in range(others // 2)] + [task] + [new_task() for _ in range(others // 2)]
    )
    try:
        replies = Replies()
        store.insert(push, replies.to("push", 1))
        assert replies.all_in.wait(10) and replies.got["push"][1] is None
        assert [r.id for r in replies.got["push"][0]] == [t.id for t in push]
        again = Replies()  # the same ids again: accepted, inserted once
        store.insert(push, again.to("push", 1))
        assert again.all_in.wait(10) and again.got["push"] == ([], None)
    finally:
        store.stop()
    assert Task.objects.count() == len(push)
    row = Task.objects.get(pk=task.id)
    assert (row.name, bytes(row.payload), row.args_repr) == (
        task.name,
        task.payload,
        task.args_repr,
    )
    assert (row.queue, row.priority, row.max_retries, row.timeout) == (task.queue, -7, 4, 2.5)
    assert (row.code_version, row.key, row.key_running) == ("v9", "k:1", True)
    assert row.rate_limit == "10/m"
    assert row.run_after is not None and row.expires_at is not None
    assert abs(row.run_after.timestamp() - (task.run_after or 0)) < 1e-3
    assert abs(row.expires_at.timestamp() - (task.expires or 0)) < 1e-3
    assert (row.broker, row.status) == ("one-row", "queued")
