"""The outcomes of a batch as written: each task's new status, its attempt's row, what follows.

Writes (batch.py) calls `write_rows` inside its batch's transaction and holds
what it returns until the commit: the steps the outcomes released, which it
then dispatches, and the outcomes refused, which it then tells
(`tell_refused`). An outcome is written only under the claim its attempt
started under; `refuse` sorts out those that were not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext, suppress
from typing import Any

from ...logs import task_extra
from ..rows import Dialect, Outcome, Ready
from . import chains
from .sql import PG_SUCCESS_MANY, Statements, by_list, stamp

logger = logging.getLogger(__name__)

#: The savepoint of a batch's finishes on SQLite (`_finish`).
FINISH_SAVEPOINT = "leek_finish"
#: Seconds within which a stored end time is the outcome's own: the databases
#: keep microseconds.
ROUNDING = 2e-6
#: Successes in a batch past which they are written in one statement
#: (PG_SUCCESS_MANY, `at_once`); as many or fewer go as one prepared statement
#: each, in one pipeline. PostgreSQL parses and plans PG_SUCCESS_MANY anew
#: at each run (a plan kept would be the one made while the table was small):
#: a run for two tasks took it some 480 µs, where the prepared statement for
#: one task took 125-160; the two cross near eight (docs/benchmarks.md: "A
#: few successes, a prepared statement each").
MANY_SUCCESSES = 8


def write_rows(
    cursor: Any, sql: Statements, node: str, epoch: Callable[[], int], outcomes: list[Outcome]
) -> tuple[list[Ready], list[Outcome]]:
    """The task's new status and its SuccessTask or FailedTask row, for each
    outcome; the row names `node` as the attempt's broker. The steps the
    outcomes released, claimed under `node` and its epoch now, and the
    outcomes refused.

    Only while the claim the attempt started under still holds the task
    (its broker and epoch, sql.OWNED): an outcome of a task another broker
    has taken over since, or that ended already, is refused, nothing of
    it written (`refuse`). A cancelled task keeps its status and still
    gets its attempt's row."""
    if not outcomes:
        return [], []
    d = sql.dialect
    finishes = [finish_row(d, o, node) for o in outcomes]
    written = _finish(cursor, sql, finishes)
    refused: list[Outcome] = []
    before: list[Outcome] = []
    if len(written) < len(outcomes):
        outcomes, refused, before = refuse(cursor, sql, node, outcomes, written)
    successes, failures = [], []
    for o in outcomes:
        if o.succeeded:
            successes.append(success_row(d, o, node))
        else:
            failures.append(failure_row(d, o, node))
    if successes:
        cursor.executemany(sql.success, successes)
    if failures:
        cursor.executemany(sql.failure, failures)
    owner = stamp(node, epoch())
    steps = chains.follow(cursor, d, outcomes, owner)
    if before:
        steps += chains.released_before(cursor, d, before, owner)
    return steps, refused


def at_once(cursor: Any, sql: Statements, node: str, outcomes: list[Outcome]) -> set[Any]:
    """Write each outcome in one statement, its finish and its attempt's row
    (PostgreSQL; each task once in `outcomes`); the keys of the tasks written.

    An outcome not written has nothing of it written: its finish wrote
    nothing (its task is refused, cancelled or gone, which `write_rows` tells
    apart), or its task is a chain's step (whose next one `write_rows`
    releases). Where `write_rows` costs a statement for each kind of row and
    one to look for chains, this is one statement for all the successes
    (PG_SUCCESS_MANY) past MANY_SUCCESSES of them, else one for each, and
    one for each failure. Statements sent together go in one pipeline, with
    one Sync after the last: outside a transaction they are one implicit
    transaction, committed whole or not at all."""
    d = sql.dialect
    written: set[Any] = set()
    successes = [o for o in outcomes if o.succeeded]
    if len(successes) > MANY_SUCCESSES:
        hashed(d, cursor, PG_SUCCESS_MANY, many_params(d, successes, node))
        written.update(key for (key,) in cursor.fetchall())
        outcomes = [o for o in outcomes if not o.succeeded]
    for statement, succeeded, row in (
        (sql.success_at_once, True, success_row),
        (sql.failure_at_once, False, failure_row),
    ):
        rows = [
            finish_row(d, o, node) + row(d, o, node) for o in outcomes if o.succeeded is succeeded
        ]
        if len(rows) == 1:
            cursor.execute(statement, rows[0])
            written.update(key for (key,) in cursor.fetchall())
        elif rows:  # psycopg's pipeline: a result set each
            cursor.executemany(statement, rows, returning=True)
            while True:
                written.update(key for (key,) in cursor.fetchall())
                if not cursor.nextset():
                    break
    return written


def hashed(d: Dialect, cursor: Any, statement: str, params: Any) -> None:
    """Run `statement`, which joins the task table to arrays of a batch
    (PG_SUCCESS_MANY), planned for this run with no nested loop, on `cursor`
    (a psycopg cursor of a writing connection); its rows stay on `cursor`.

    Its plan must hold whatever the statistics say. A task table never
    analysed (new, or emptied) that has just taken a backlog has the planner
    expect one of its rows to match, so that reading the whole table once,
    then the batch's arrays again for each row it finds, looks cheapest: 136 s
    for a batch of 2,300 tasks in a table of 120,000 (docs/benchmarks.md).
    With no nested loop the plan is a hash or a merge join, on the primary
    key's index or one reading of the table: 36-51 µs a task for batches of
    50 to 2,300, analysed or not, as fast as the nested loop over the index
    where the planner chose that.

    The setting is the transaction's own: the statement runs in a
    transaction of its own when none is open, else the setting is put back
    after it. What it sends goes in one pipeline, one round trip, where
    libpq has pipelines (14 and later). A statement that fails in a
    transaction of its own rolls it back; in one open, the caller's
    rollback ends it."""
    import psycopg

    connection = cursor.connection
    alone = connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    piped = connection.pipeline() if psycopg.Pipeline.is_supported() else nullcontext()
    try:
        with piped:
            if alone:
                connection.execute("BEGIN")
            connection.execute("SET LOCAL enable_nestloop = off")
            by_list(d, cursor, statement, params)
            connection.execute("COMMIT" if alone else "SET LOCAL enable_nestloop TO DEFAULT")
    except BaseException:
        if alone and not connection.closed:
            with suppress(psycopg.Error):
                connection.execute("ROLLBACK")
        raise


def many_params(d: Dialect, outcomes: list[Outcome], node: str) -> tuple[Any, ...]:
    """What PG_SUCCESS_MANY binds for `outcomes`, all succeeded, written by
    broker `node`: one array a column, the ids again, the broker twice."""
    columns = success_columns(d, outcomes)
    return (*columns, columns[0], node, node)


def success_columns(d: Dialect, outcomes: list[Outcome]) -> list[list[Any]]:
    """The arrays PG_SUCCESS_MANY binds for `outcomes`, all succeeded, one a column."""
    return [
        [d.pk(o.task_id) for o in outcomes],
        [o.name for o in outcomes],
        [o.attempt for o in outcomes],
        [d.time(o.started) for o in outcomes],
        [d.time(o.finished) for o in outcomes],
        [o.finished - o.started for o in outcomes],
        [o.result for o in outcomes],
        [o.result_repr for o in outcomes],
        [o.stdout for o in outcomes],
        [o.stderr for o in outcomes],
        [o.epoch for o in outcomes],
    ]


def finish_row(d: Dialect, o: Outcome, node: str) -> tuple[Any, ...]:
    """The bound values of Statements.finish for outcome `o`, its attempt
    started under `node`'s claim of epoch `o.epoch`."""
    if o.succeeded:
        status = "succeeded"
    else:
        status = "failed" if o.final else "queued"
    return (status, d.time(o.started), d.time(o.finished), o.attempt, d.time(o.retry_at)) + (
        status == "queued",
        d.pk(o.task_id),
        *stamp(node, o.epoch),
        o.attempt,
    )


def success_row(d: Dialect, o: Outcome, broker: str) -> tuple[Any, ...]:
    """The bound values of Statements.success for a succeeded attempt run by `broker`."""
    return (
        d.pk(o.task_id),
        o.name,
        o.attempt,
        d.time(o.started),
        d.time(o.finished),
        o.finished - o.started,
        o.result,
        o.result_repr,
        o.stdout,
        o.stderr,
        broker,
    )


def _finish(cursor: Any, sql: Statements, finishes: list[tuple[Any, ...]]) -> set[Any]:
    """Run the finish of each outcome; the keys of the tasks it wrote."""
    finish = sql.finish
    if sql.dialect.sqlite:
        # All at once, as nearly always all are written; else again one
        # by one (in process, that costs no round trip) to see which.
        cursor.execute(f"SAVEPOINT {FINISH_SAVEPOINT}")
        cursor.executemany(finish, finishes)
        every = cursor.rowcount == len(finishes)  # one row each at most: by id
        if not every:
            cursor.execute(f"ROLLBACK TO SAVEPOINT {FINISH_SAVEPOINT}")
        cursor.execute(f"RELEASE SAVEPOINT {FINISH_SAVEPOINT}")
        if every:
            return {row[6] for row in finishes}
        written = set()
        for row in finishes:
            cursor.execute(finish, row)
            if cursor.rowcount == 1:
                written.add(row[6])
        return written
    # One round trip for all (psycopg's pipeline), a result set each.
    cursor.executemany(finish, finishes, returning=True)
    written = set()
    while True:
        written.update(key for (key,) in cursor.fetchall())
        if not cursor.nextset():
            return written


def refuse(
    cursor: Any, sql: Statements, node: str, outcomes: list[Outcome], written: set[Any]
) -> tuple[list[Outcome], list[Outcome], list[Outcome]]:
    """The outcomes to record, those refused, and those written before. Of
    the outcomes whose finish wrote nothing (not in `written`), a cancelled
    task's, still under the attempt's claim, is recorded, and so is a deleted
    task's (its row is refused at the commit: Writes.write_apart). One whose
    attempt's row is there already, under the same claim, was written
    before: a try of the batch committed and its answer was lost, and the
    batch is written again. The others are refused: their task is another
    broker's claim now, or ended already. They are told and counted once
    the batch commits."""
    d = sql.dialect
    missed = [o for o in outcomes if d.pk(o.task_id) not in written]
    if not missed:  # a task with two outcomes in the batch, both written
        return outcomes, [], []
    by_list(d, cursor, sql.unwritten(len(missed)), [d.pk(o.task_id) for o in missed])
    now = {d.read_uuid(r[0]): (r[1], r[2], int(r[3])) for r in cursor.fetchall()}
    held = [o for o in missed if o.task_id in now and now[o.task_id][1:] == (node, o.epoch)]
    earlier = _written_before(cursor, sql, held)
    refused, before = [], []
    for o in missed:
        row = now.get(o.task_id)
        if id(o) in earlier:
            before.append(o)
        elif row is not None and row != ("cancelled", node, o.epoch):
            refused.append(o)
    if not refused and not before:
        return outcomes, [], []
    dropped = {id(o) for o in (*refused, *before)}
    return [o for o in outcomes if id(o) not in dropped], refused, before


def _written_before(cursor: Any, sql: Statements, outcomes: list[Outcome]) -> set[int]:
    """Of `outcomes`, the ids (id()) of those whose attempt's row is written
    already: a SuccessTask of a success, a FailedTask of a failure, of the
    same task, attempt and end."""
    d = sql.dialect
    before: set[int] = set()
    for succeeded, table in ((True, "leek_successtask"), (False, "leek_failedtask")):
        of = [o for o in outcomes if o.succeeded is succeeded]
        if not of:
            continue
        keys = list({d.pk(o.task_id) for o in of})
        by_list(d, cursor, sql.attempt_rows(table, len(keys)), keys)
        ends: dict[tuple[Any, int], list[float]] = {}
        for key, attempt, end in cursor.fetchall():
            ends.setdefault((d.read_uuid(key), int(attempt)), []).append(d.read_time(end) or 0.0)
        before.update(
            id(o)
            for o in of
            if any(abs(e - o.finished) < ROUNDING for e in ends.get((o.task_id, o.attempt), ()))
        )
    return before


def tell_refused(refused: list[Outcome]) -> list[Outcome]:
    """Log the outcomes a commit refused, each attempt's once (a stand-in
    refused again too); those logged."""
    once = {(o.task_id, o.attempt): o for o in refused}
    for o in once.values():
        logger.warning(
            "outcome refused: the task is no longer this broker's claim, or it ended "
            "task=%s name=%s attempt=%s epoch=%s",
            o.task_id,
            o.name,
            o.attempt,
            o.epoch,
            extra=task_extra("outcome_refused", o.task_id, o.name, attempt=o.attempt),
        )
    return list(once.values())


def failure_row(d: Dialect, o: Outcome, broker: str, task_key: Any = None) -> tuple[Any, ...]:
    """The bound values of Statements.failure for a failed attempt run by `broker`."""
    return (
        d.pk(o.task_id) if task_key is None else task_key,
        o.name,
        o.attempt,
        d.time(o.started),
        d.time(o.finished),
        o.exc_type,
        o.exc_message,
        o.traceback,
        o.final,
        o.stdout,
        o.stderr,
        broker,
    )
