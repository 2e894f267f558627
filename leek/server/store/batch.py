"""How one batch of the group commit is written: inserts, running marks, outcomes, calls.

Every insert of a batch, whichever clients sent them, is one multi-row
statement (on PostgreSQL, one statement over an array per column); a batch of
inserts alone is that one statement in autocommit, with no BEGIN and COMMIT.
The rows of its outcomes are outcomes.py's. The SQL is prepared by hand on the
raw DB-API cursor: the models are the schema, and the ORM's per-object cost
would dominate the commit it waits for. On PostgreSQL, a statement of
scalar values (a push of one task, a round of a few, a lone running mark)
skips the cursor too and goes through libpq directly (wire.py).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ...logs import task_extra
from ..dberrors import transient
from ..lifecycle import received
from ..ops import Call, Insert, Mark, Op, Record
from ..rows import Dialect, Job, NewTask, Outcome, Ready
from . import keys, storable
from .doubt import Doubts
from .outcomes import at_once, tell_refused, write_rows
from .sql import PG_ARRAY_COLUMNS, PG_INSERT_MANY, Statements, stamp

if TYPE_CHECKING:
    from .wire import Direct

logger = logging.getLogger(__name__)

#: Most tasks in one INSERT statement on SQLite (its bound variables are limited).
INSERT_CHUNK = 500
#: Runs of one statement after which the writing connection prepares it (PostgreSQL).
PG_PREPARE_THRESHOLD = 5
#: Most tasks in one insert of scalar values on PostgreSQL (wire.py), a
#: statement prepared for each number of rows up to it; more go as one array
#: a column, which psycopg dumps in Python at some 200 µs for a round of three.
PG_DIRECT_ROWS = 16


class Writes:
    """The store's side of the group commit (groupcommit.Batches), for both lanes."""

    def __init__(
        self,
        node: str,
        sql: Statements,
        on_ready: Callable[[list[Ready]], None],
        text_limit: int,
        epoch: Callable[[], int] = lambda: 0,
        spin: float = 0.0,
    ) -> None:
        self.node = node
        self.spin = spin  # SPIN: how long a statement sent directly polls for its answer
        self.epoch = epoch  # this broker's epoch now, which its claims are stamped with
        self.text_limit = text_limit  # CAPTURE_LIMIT, for storable's texts
        self.sql = sql
        self.dialect: Dialect = sql.dialect
        self.on_ready = on_ready
        self._inserts: dict[tuple[int, bool], str] = {}
        #: Per writing connection on PostgreSQL, its statements sent directly (wire.py).
        self._direct: weakref.WeakKeyDictionary[Any, Direct] = weakref.WeakKeyDictionary()
        #: Which of the tasks about to be inserted this broker keeps (the rest
        #: are inserted unowned, for any broker to claim: server/share.py);
        #: None keeps them all.
        self.admit: Callable[[Sequence[NewTask]], list[bool] | None] | None = None
        # The ids of the tasks the insert being written left unowned, per
        # writing thread (a lane each), as `_released`.
        self._unowned = threading.local()
        # The steps the outcomes of the batch being written released, and the
        # outcomes it refused, per writing thread (a lane each), for
        # `committed` to dispatch and to tell.
        self._released = threading.local()
        #: Outcomes refused since the start: their task's claim was another's.
        self.refused = 0
        #: Called after a commit with the ids of the tasks whose outcomes it
        #: refused: the broker drops what it still holds of them.
        self.on_lost: Callable[[list[uuid.UUID]], None] = lambda ids: None
        #: The inserts a failed write may have committed all the same.
        self.doubts = Doubts(sql, node)

    def open(self, cursor: Any, db: Any) -> Any:
        """Set up a new writing connection; the cursor that binds parameters."""
        if self.dialect.sqlite:
            # The duties thread checkpoints (Store.checkpoint), so no commit of
            # a client's task pays for copying the log and its fsync.
            cursor.execute("PRAGMA wal_autocheckpoint=0")
            return cursor
        # Django's psycopg cursors quote every parameter into the SQL text in
        # Python; the hot path's statements send them apart instead, and
        # psycopg prepares a statement once it has run five times: unless the
        # database's OPTIONS choose (None: never, for a connection pooler
        # that cannot hold prepared statements).
        import psycopg

        from .wire import Direct

        if "prepare_threshold" not in db.settings_dict.get("OPTIONS", {}):
            cursor.connection.prepare_threshold = PG_PREPARE_THRESHOLD
        self._direct[cursor.connection] = Direct(cursor.connection, self.spin)
        return psycopg.Cursor(cursor.connection)

    def _direct_of(self, bound: Any) -> Direct | None:
        """The statements sent directly on `bound`'s connection; None on SQLite."""
        return None if self.dialect.sqlite else self._direct.get(bound.connection)

    def _run_scalar(self, bound: Any, statement: str, params: Sequence[Any]) -> int:
        """Run a statement of scalar values on `bound`; the count of rows it
        wrote. On PostgreSQL it goes through libpq directly (wire.py)."""
        direct = self._direct_of(bound)
        if direct is None:
            bound.execute(statement, params)
            return int(bound.rowcount)
        return direct.run(statement, params)

    def committed(self, ops: list[Op], results: list[Any]) -> None:
        """Tell of the tasks just inserted (lifecycle.received), then send
        them to the broker's queues; tell the outcomes just written
        (Record.committed), those refused first (outcomes.refuse)."""
        self.doubts.begin()  # committed: nothing of it in doubt (and its tasks let go)
        refused: list[Outcome] = self._released.__dict__.pop("refused", [])
        if refused:
            self._tell_refused(refused)
        for op in ops:
            if isinstance(op, Record) and op.committed is not None:
                op.committed()
        ready = [
            r
            for op, result in zip(ops, results, strict=True)
            if isinstance(op, Insert)
            for r in result
        ]
        ready += self._take_released()
        if ready:
            received(ready)
            self.on_ready(ready)

    def failed(self, ops: list[Op]) -> None:
        """The database failed the write of `ops` for a reason not theirs: the
        inserts in it may have committed all the same (doubt.py)."""
        self.doubts.failed()

    def write(self, cursor: Any, bound: Any, ops: list[Op]) -> list[Any]:
        """Write `ops` in one transaction; one result per op."""
        d = self.dialect
        self.doubts.begin()
        self._take_released()
        inserts = [op for op in ops if isinstance(op, Insert)]
        tasks = [t for op in inserts for t in op.tasks]
        if len(inserts) == len(ops) and (len(tasks) <= INSERT_CHUNK or not d.sqlite):
            # One statement is a transaction of its own (the connection is in
            # autocommit): no BEGIN and COMMIT to send, which on PostgreSQL
            # are two round trips.
            return _per_op(ops, self.insert_tasks(bound, tasks))
        outcomes = [op.outcome for op in ops if isinstance(op, Record) and not op.written]
        finished = {o.task_id for o in outcomes}
        # A task whose outcome is in this batch needs no running mark.
        marks = [
            (d.time(op.started), op.attempt, d.pk(op.task_id), *stamp(self.node, op.epoch))
            for op in ops
            if isinstance(op, Mark) and op.task_id not in finished
        ]
        # On PostgreSQL, where each statement is a round trip, a batch's
        # successes are one statement, or a few in one pipeline, and each
        # failure one (outcomes.at_once); a batch of one running mark, of one
        # outcome, or of successes alone is a transaction of its own, in
        # autocommit (a pipeline's statements commit together at its Sync),
        # with no BEGIN and COMMIT.
        quick = (
            not d.sqlite
            and not tasks
            and len(finished) == len(outcomes)
            and not any(isinstance(op, Call) for op in ops)
        )
        if quick and len(marks) == 1 and not outcomes:
            self._run_scalar(bound, self.sql.mark, marks[0])
            return _per_op(ops, [])
        if quick and not marks and (len(outcomes) == 1 or all(o.succeeded for o in outcomes)):
            # One statement (at_once): the outcomes written are committed.
            written = at_once(bound, self.sql, self.node, outcomes)
            if len(written) == len(outcomes):
                return _per_op(ops, [])
            # write_rows tells why the rest were not written (or writes a
            # chain's step), in a transaction that a retry of the batch
            # repeats without those committed here.
            for op in ops:
                if isinstance(op, Record) and d.pk(op.outcome.task_id) in written:
                    op.written = True
            outcomes = [o for o in outcomes if d.pk(o.task_id) not in written]
            quick = False
        cursor.execute("BEGIN IMMEDIATE" if d.sqlite else "BEGIN")
        try:
            results = _per_op(ops, self.insert_tasks(bound, tasks))
            if marks:
                bound.executemany(self.sql.mark, marks)
            if quick:
                written = at_once(bound, self.sql, self.node, outcomes)
                outcomes = [o for o in outcomes if d.pk(o.task_id) not in written]
            self.write_outcomes(bound, outcomes)
            for i, op in enumerate(ops):
                if isinstance(op, Call):
                    results[i] = op.fn(cursor, d)
            cursor.execute("COMMIT")
        except BaseException:
            _rollback(cursor)
            raise
        return results

    def write_apart(
        self, cursor: Any, bound: Any, ops: list[Op]
    ) -> list[tuple[Any, BaseException | None]]:
        """Write `ops` in one transaction, each in a savepoint of its own, in
        the order `write` takes them; (result, None) for an op written,
        (None, error) for one refused. A transient error is raised.

        An outcome is written only while its task's row exists (on PostgreSQL
        the row is locked against deletion until the commit), as the foreign
        keys are checked at the commit, too late to tell whose they were: an
        outcome whose task was deleted is dropped, with a log line. An outcome
        the database refuses is written again as `storable.not_stored` has
        it, so its task still ends, failed, saying why."""
        d = self.dialect
        finished = {op.outcome.task_id for op in ops if isinstance(op, Record)}
        written: list[tuple[Any, BaseException | None]] = [(None, None)] * len(ops)
        self.doubts.begin()
        self._take_released()
        cursor.execute("BEGIN IMMEDIATE" if d.sqlite else "BEGIN")
        try:
            for i in sorted(range(len(ops)), key=lambda i: _ORDER[type(ops[i])]):
                op = ops[i]
                if isinstance(op, Insert):
                    written[i] = _alone(cursor, self.insert_tasks, bound, op.tasks)
                elif isinstance(op, Mark) and op.task_id not in finished:
                    row = (
                        d.time(op.started),
                        op.attempt,
                        d.pk(op.task_id),
                        *stamp(self.node, op.epoch),
                    )
                    written[i] = _alone(cursor, bound.execute, self.sql.mark, row)
                elif isinstance(op, Record) and not op.written:
                    written[i] = self._outcome_alone(cursor, bound, op.outcome)
                elif isinstance(op, Call):
                    written[i] = _alone(cursor, op.fn, cursor, d)
            cursor.execute("COMMIT")
        except BaseException:
            _rollback(cursor)
            raise
        return written

    def _outcome_alone(
        self, cursor: Any, bound: Any, outcome: Outcome
    ) -> tuple[None, BaseException | None]:
        """Write one outcome in a savepoint, or its stand-in (see `write_apart`)."""
        bound.execute(self.sql.task_exists, (self.dialect.pk(outcome.task_id),))
        if bound.fetchone() is None:
            logger.warning(
                "outcome dropped: its task is gone task=%s name=%s attempt=%s",
                outcome.task_id,
                outcome.name,
                outcome.attempt,
                extra=task_extra(
                    "outcome_dropped", outcome.task_id, outcome.name, attempt=outcome.attempt
                ),
            )
            return None, None
        _, error = _alone(cursor, self.write_outcomes, bound, [outcome])
        if error is None:
            return None, None
        stand_in = storable.not_stored(outcome, error, self.text_limit)
        _, again = _alone(cursor, self.write_outcomes, bound, [stand_in])
        if again is not None:
            return None, again
        logger.error(
            "outcome not stored, its task failed instead task=%s name=%s attempt=%s error=%s",
            outcome.task_id,
            outcome.name,
            outcome.attempt,
            stand_in.exc_message,
            extra=task_extra(
                "outcome_not_stored", outcome.task_id, outcome.name, attempt=outcome.attempt
            ),
        )
        return None, None

    def insert_tasks(self, cursor: Any, tasks: Sequence[NewTask]) -> list[Ready]:
        """Insert the tasks not already there, on `cursor`; the ones inserted, as Ready.

        A task with a key that another task holds is not inserted: its
        `holder` is set to that task's id (keys.py). A task inserted unowned
        (`admit`) is `shared`: the broker does not queue it."""
        if not tasks:
            return []
        unowned: set[uuid.UUID] = set()
        self._unowned.ids = unowned
        fresh = self._insert_rows(cursor, tasks)
        if any(t.key is not None for t in tasks):
            fresh = keys.settle(self.dialect, self._insert_rows, cursor, tasks, fresh)
        return [
            Ready(
                t.id,
                t.priority,
                t.queue,
                t.run_after,
                Job(t.payload, t.name, 0, t.max_retries, t.timeout, t.expires, t.rate_limit),
                shared=t.id in unowned,
            )
            for t in fresh
        ]

    def _insert_rows(self, cursor: Any, tasks: Sequence[NewTask]) -> Sequence[NewTask]:
        """Insert the rows of `tasks`; those inserted."""
        if not tasks:  # an empty push: no statement (PostgreSQL's takes no empty arrays)
            return []
        d = self.dialect
        now = d.time(time.time())
        epoch = self.epoch()
        node = self.node
        kept = None if self.admit is None else self.admit(tasks)
        owners = [node] * len(tasks) if kept is None else [node if k else "" for k in kept]
        if kept is None:
            self.doubts.tried(now, tasks)
        else:
            self._unowned.ids.update(t.id for t, k in zip(tasks, kept, strict=True) if not k)
            # An unowned task is any broker's to claim, this one's too: never in doubt here.
            self.doubts.tried(now, [t for t, k in zip(tasks, kept, strict=True) if k])
        rows = [  # the bound values of TASK_ROW, in its order
            (
                d.pk(t.id),
                t.name,
                t.queue,
                t.priority,
                t.payload,
                t.args_repr,
                t.max_retries,
                t.timeout,
                now,
                None if t.run_after is None else d.time(t.run_after),
                *stamp(owner, epoch),
                not owner,
                t.code_version,
                t.key,
                t.key,
                t.key_running,
                None if t.expires is None else d.time(t.expires),
                t.rate_limit,
            )
            for t, owner in zip(tasks, owners, strict=True)
        ]
        if len(rows) == 1:  # the rowcount says whether it was new
            inserted = self._run_scalar(cursor, self._insert_sql(1, returning=False), rows[0])
            fresh: Sequence[NewTask] = tasks if inserted == 1 else ()
        elif len(rows) <= PG_DIRECT_ROWS and (direct := self._direct_of(cursor)) is not None:
            returned = direct.returning(
                self._insert_sql(len(rows), returning=True),
                [value for row in rows for value in row],
            )
            fresh = (
                list(tasks)  # each one inserted: no id to read back
                if len(returned) == len(tasks)
                else _once(tasks, [t.id for t in tasks], {uuid.UUID(i.decode()) for i in returned})
            )
        elif not d.sqlite:
            # One array per column: psycopg parses a statement of thousands of
            # placeholders anew in Python on each call, but not ten of them.
            columns = list(zip(*[[r[i] for i in PG_ARRAY_COLUMNS] for r in rows], strict=True))
            cursor.execute(PG_INSERT_MANY, (now, epoch, *map(list, columns)))
            ids = {key for (key,) in cursor.fetchall()}
            fresh = _once(tasks, [t.id for t in tasks], ids)
        else:
            new: set[Any] = set()
            for start in range(0, len(rows), INSERT_CHUNK):
                chunk = rows[start : start + INSERT_CHUNK]
                cursor.execute(
                    self._insert_sql(len(chunk), returning=True),
                    [value for row in chunk for value in row],
                )
                new.update(key for (key,) in cursor.fetchall())
            fresh = _once(tasks, [row[0] for row in rows], new)
        return fresh

    def _insert_sql(self, rows: int, returning: bool) -> str:
        """The insert of `rows` tasks, built once per shape."""
        key = (rows, returning)
        sql = self._inserts.get(key)
        if sql is None:
            sql = self._inserts[key] = self.sql.insert(rows, returning)
        return sql

    def write_outcomes(self, cursor: Any, outcomes: list[Outcome]) -> None:
        """Write the rows of `outcomes` on `cursor` (outcomes.write_rows);
        hold the steps they released and the outcomes refused for `committed`."""
        steps, refused = write_rows(cursor, self.sql, self.node, self.epoch, outcomes)
        if refused:
            self._released.__dict__.setdefault("refused", []).extend(refused)
        if steps:
            self._released.__dict__.setdefault("steps", []).extend(steps)

    def _tell_refused(self, refused: list[Outcome]) -> None:
        """Log and count the outcomes a commit refused (outcomes.tell_refused);
        drop what this broker still holds of their tasks (a retry waiting for
        its time)."""
        told = tell_refused(refused)
        self.refused += len(told)
        self.on_lost(list({o.task_id for o in told}))

    def _take_released(self) -> list[Ready]:
        """The steps released by the outcomes written on this thread since
        the last call, forgotten here."""
        steps: list[Ready] = self._released.__dict__.pop("steps", [])
        self._released.__dict__.pop("refused", None)
        return steps


#: The order in which a batch writes its kinds of ops.
_ORDER = {Insert: 0, Mark: 1, Record: 2, Call: 3}
#: The savepoint each op of `Writes.write_apart` is written in.
SAVEPOINT = "leek_op"


def _alone(cursor: Any, write: Callable[..., Any], *args: Any) -> tuple[Any, BaseException | None]:
    """write(*args) in a savepoint: (its value, None), or (None, its error)
    rolled back alone. A transient error is raised: the transaction is lost."""
    cursor.execute(f"SAVEPOINT {SAVEPOINT}")
    try:
        value = write(*args)
    except Exception as exc:
        if transient(exc):
            raise
        cursor.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
        cursor.execute(f"RELEASE SAVEPOINT {SAVEPOINT}")
        return None, exc
    cursor.execute(f"RELEASE SAVEPOINT {SAVEPOINT}")
    return value, None


def _rollback(cursor: Any) -> None:
    try:
        cursor.execute("ROLLBACK")
    except Exception:  # noqa: S110 - the first error is the one raised
        logger.debug("rollback failed", exc_info=True)


def _per_op(ops: list[Op], inserted: list[Ready]) -> list[Any]:
    """One result per op: for an insert, the Ready of its tasks that were new."""
    if len(ops) == 1:
        return [inserted]
    fresh = {r.id: r for r in inserted}
    return [
        [r for t in op.tasks if (r := fresh.pop(t.id, None)) is not None]
        if isinstance(op, Insert)
        else None
        for op in ops
    ]


def _once(tasks: Sequence[NewTask], keys: list[Any], inserted: set[Any]) -> list[NewTask]:
    """The tasks whose key is among those inserted, each key once: a batch
    that names one id twice inserts it once, and it must run once."""
    if len(inserted) == len(tasks):  # as many keys inserted as tasks: each task, once
        return list(tasks)
    fresh = []
    for task, key in zip(tasks, keys, strict=True):
        if key in inserted:
            inserted.discard(key)
            fresh.append(task)
    return fresh
