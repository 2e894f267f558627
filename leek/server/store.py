"""Every database write the broker makes (its reads are in reads.py).

Writes go through the group commit (writer.py): each batch is one transaction,
or one statement when it holds only inserts, whichever threads queued them;
every insert of a batch is a single multi-row statement, and a client's reply
is sent only after the commit that holds its task.

The SQL is prepared by hand on the raw DB-API cursor: the models in
leek/models.py are the schema, and the ORM's per-object cost would dominate the
commit it waits for.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from django.db import connection

from .rows import Dialect, Job, NewTask, Outcome, Ready
from .writer import DATABASE_ERRORS, Done, GroupCommit, Op, Waiter, raw_cursor

__all__ = [
    "DATABASE_ERRORS",
    "Dialect",
    "Done",
    "Job",
    "NewTask",
    "Outcome",
    "Ready",
    "Store",
    "Waiter",
]

logger = logging.getLogger(__name__)

#: The columns of a new task's row, each with what the insert puts there: a
#: placeholder for a value it binds (in `Store.insert_tasks`' order), or the SQL
#: of a value every new row shares, which costs no binding.
TASK_ROW = (
    ("id", "%s"),
    ("name", "%s"),
    ("queue", "%s"),
    ("priority", "%s"),
    ("status", "'queued'"),
    ("payload", "%s"),
    ("args_repr", "%s"),
    ("attempts", "0"),
    ("max_retries", "%s"),
    ("timeout", "%s"),
    ("queued_at", "%s"),
    ("run_after", "%s"),
    ("started_at", "NULL"),
    ("finished_at", "NULL"),
    ("broker", "%s"),
    ("spooled", "FALSE"),
    ("code_version", "%s"),
    ("progress", "NULL"),
    ("progress_note", "''"),
)
INSERT_CHUNK = 500
#: PostgreSQL inserts a batch from one array per bound column (the queue time
#: and the broker are one value for all).
PG_ARRAY_COLUMNS = (0, 1, 2, 3, 4, 5, 6, 7, 9, 11)
PG_INSERT_MANY = (
    "INSERT INTO leek_task (id, name, queue, priority, payload, args_repr, max_retries, "
    "timeout, run_after, code_version, status, attempts, queued_at, started_at, finished_at, "
    "broker, spooled, progress, progress_note) "
    "SELECT u.*, 'queued', 0, %s, NULL, NULL, %s, false, NULL, '' FROM unnest("
    "%s::uuid[], %s::varchar[], %s::varchar[], %s::integer[], %s::bytea[], %s::text[], "
    "%s::integer[], %s::float8[], %s::timestamptz[], %s::varchar[]) AS u "
    "ON CONFLICT (id) DO NOTHING RETURNING id"
)
#: Runs of one statement after which the writing connection prepares it.
PG_PREPARE_THRESHOLD = 5
#: Pages in SQLite's write-ahead log past which the checkpoint is run between
#: two batches, so the log starts over (see Store.checkpoint).
CHECKPOINT_FRAMES = 4000


class Store(GroupCommit):
    """The broker's database writes, group-committed (on PostgreSQL, in two lanes)."""

    def __init__(
        self, node: str, on_ready: Callable[[list[Ready]], None], lane: bool = False
    ) -> None:
        self.node = node
        self.on_ready = on_ready
        self.dialect = Dialect(connection.vendor)
        self._checkpointed = 0
        self._bound: Any = None  # the writing cursor that sends parameters apart (prepare)
        super().__init__("leek-outcomes" if lane else "leek-writer")
        # What nobody waits for (running marks, outcomes, progress) is written
        # on PostgreSQL by a lane of its own, on a second connection: a
        # client's acknowledgement never waits behind a batch of outcomes, and
        # a slow outcome (a locked row) holds no client. SQLite takes one
        # writer at a time, so there one connection writes everything.
        self.results = None if lane or self.dialect.sqlite else Store(node, on_ready, lane=True)
        d = self.dialect
        self._insert_row = d.sql("(" + ", ".join(value for _, value in TASK_ROW) + ")")
        self._inserts: dict[tuple[int, bool], str] = {}
        self._sql_mark = d.sql(
            "UPDATE leek_task SET status = 'running', started_at = %s, attempts = %s "
            "WHERE id = %s AND status = 'queued'"
        )
        self._sql_finish = d.sql(
            "UPDATE leek_task SET status = %s, started_at = %s, finished_at = %s, attempts = %s, "
            "run_after = COALESCE(%s, run_after) WHERE id = %s"
        )
        self._sql_success = d.sql(
            "INSERT INTO leek_successtask (task_id, name, attempt, started_at, finished_at, "
            "duration, result, result_repr, stdout, stderr) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        )
        self._sql_failure = d.sql(
            "INSERT INTO leek_failedtask (task_id, name, attempt, started_at, failed_at, "
            "exc_type, exc_message, traceback, final, requeued_at, stdout, stderr) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, NULL, %s, %s)"
        )

    def prepare(self, cursor: Any) -> None:
        if self.dialect.sqlite:
            # The duties thread checkpoints (see checkpoint), so no commit of
            # a client's task pays for copying the log and its fsync.
            cursor.execute("PRAGMA wal_autocheckpoint=0")
            self._bound = cursor
        else:
            # Django's psycopg cursors quote every parameter into the SQL text
            # in Python; the hot path's statements send them apart instead,
            # and psycopg prepares a statement once it has run five times:
            # unless the database's OPTIONS choose (None: never, for a
            # connection pooler that cannot hold prepared statements).
            import psycopg

            if "prepare_threshold" not in self._db.settings_dict.get("OPTIONS", {}):
                cursor.connection.prepare_threshold = PG_PREPARE_THRESHOLD
            self._bound = psycopg.Cursor(cursor.connection)

    def checkpoint(self) -> None:
        """Copy SQLite's write-ahead log into the database file, off the commit path.

        The broker's writing connection never checkpoints on commit; the
        duties thread calls this every tick when anything was committed since
        the last time. The copy runs beside the commits. But SQLite starts the
        log over only after a checkpoint that no commit raced, so once the log
        passes CHECKPOINT_FRAMES pages, the checkpoint runs again between two
        batches: it has little left to copy, and the next commit starts the
        log from its beginning (tasks that come meanwhile wait and share the
        next commit). The log stays bounded, and most of the copying is off
        the commit path."""
        if not self.dialect.sqlite or self.commits == self._checkpointed:
            return
        self._checkpointed = self.commits
        cursor = raw_cursor()
        try:
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
            ((_, frames, _),) = cursor.fetchall()
            if frames > CHECKPOINT_FRAMES:
                self.between_batches(lambda: cursor.execute("PRAGMA wal_checkpoint(PASSIVE)"))
        finally:
            cursor.close()

    def start(self) -> None:
        super().start()
        if self.results is not None:
            self.results.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self.results is not None:  # the workers have stopped: write their last outcomes
            self.results.stop(timeout)
        super().stop(timeout)

    def room(self, timeout: float = 1.0) -> bool:
        if self.results is not None:  # where the outcomes wait
            return self.results.room(timeout)
        return super().room(timeout)

    def health(self) -> tuple[bool, str]:
        """Whether the last writes of every lane reached the database, and
        the error when one did not."""
        for lane in (self, self.results):
            if lane is not None and not lane.healthy:
                return False, lane.last_error
        return True, ""

    def all_commits(self) -> int:
        return self.commits + (self.results.commits if self.results is not None else 0)

    def _later(self, op: Op, wake: bool = True) -> None:
        if self.results is not None:  # nobody waits for it: the lane of outcomes
            self.results._later(op, wake)
        else:
            super()._later(op, wake)

    def nudge(self) -> None:
        super().nudge()
        if self.results is not None:
            self.results.nudge()

    # -- writes, through the group commit ------------------------------------

    def insert(self, tasks: Sequence[NewTask], done: Done) -> None:
        """Insert `tasks` (once each: a replayed id is ignored); after the
        commit, `done` is called on the committing thread with the tasks
        inserted (as Ready), or with the error."""
        self._lead("insert", tasks, done)

    def mark_running(self, task_id: uuid.UUID, attempt: int, started: float) -> None:
        """Show the task as running; rides in the next batch, nothing waits for it.

        It wakes no thread: waking the writer as the task starts would hold
        the start up (by 40-60 µs of enqueue-to-start here). It is written
        with the next commit, at the latest the one the duties' next `nudge`
        (each 0.1 s) sets off."""
        self._later(Op("mark", (started, attempt, task_id)), wake=False)

    def record(self, outcome: Outcome) -> None:
        """Write an attempt's outcome in the next batch."""
        self._later(Op("outcome", outcome))

    def call(self, fn: Callable[[Any, Dialect], Any]) -> Waiter:
        """Run fn(cursor, dialect) inside the next batch's transaction."""
        return self._wait_for("call", fn)

    def committed(self, ops: list[Op], results: list[Any]) -> None:
        """Send the tasks just inserted to the broker's queues."""
        ready = [
            r
            for op, result in zip(ops, results, strict=True)
            if op.kind == "insert"
            for r in result
        ]
        if ready:
            self.on_ready(ready)

    def _transaction(self, ops: list[Op]) -> list[Any]:
        cursor = self._cursor()
        bound = self._bound  # the same cursor on SQLite
        d = self.dialect
        inserts = [op for op in ops if op.kind == "insert"]
        # Every insert of the batch, from however many clients, is one statement.
        tasks = [t for op in inserts for t in op.data]
        if len(inserts) == len(ops) and (len(tasks) <= INSERT_CHUNK or not d.sqlite):
            # One statement is a transaction of its own (the connection is in
            # autocommit): no BEGIN and COMMIT to send, which on PostgreSQL
            # are two round trips.
            return _per_op(ops, self.insert_tasks(bound, tasks))
        cursor.execute("BEGIN IMMEDIATE" if d.sqlite else "BEGIN")
        try:
            results = _per_op(ops, self.insert_tasks(bound, tasks))
            outcomes = [op.data for op in ops if op.kind == "outcome"]
            finished = {o.task_id for o in outcomes}
            # A task whose outcome is in this batch needs no running mark.
            marks = [op.data for op in ops if op.kind == "mark" and op.data[2] not in finished]
            if marks:
                bound.executemany(self._sql_mark, [(d.time(s), a, d.pk(i)) for s, a, i in marks])
            self._write_outcomes(bound, outcomes)
            for i, op in enumerate(ops):
                if op.kind == "call":
                    results[i] = op.data(cursor, d)
            cursor.execute("COMMIT")
        except BaseException:
            try:
                cursor.execute("ROLLBACK")
            except Exception:  # noqa: S110 - the first error is the one raised
                logger.debug("rollback failed", exc_info=True)
            raise
        return results

    def insert_tasks(self, cursor: Any, tasks: Sequence[NewTask]) -> list[Ready]:
        """Insert the tasks not already there, on `cursor`; the ones inserted, as Ready."""
        if not tasks:  # an empty push: no statement (PostgreSQL's takes no empty arrays)
            return []
        d = self.dialect
        now = d.time(time.time())
        node = self.node
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
                node,
                t.code_version,
            )
            for t in tasks
        ]
        if len(rows) == 1:  # the rowcount says whether it was new
            cursor.execute(self._insert_sql(1, returning=False), rows[0])
            fresh: Sequence[NewTask] = tasks if cursor.rowcount == 1 else ()
        elif not d.sqlite:
            # One array per column: psycopg parses a statement of thousands of
            # placeholders anew in Python on each call, but not ten of them.
            columns = list(zip(*[[r[i] for i in PG_ARRAY_COLUMNS] for r in rows], strict=True))
            cursor.execute(PG_INSERT_MANY, (now, node, *map(list, columns)))
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
        return [
            Ready(
                t.id,
                t.priority,
                t.queue,
                t.run_after,
                Job(t.payload, t.name, 0, t.max_retries, t.timeout),
            )
            for t in fresh
        ]

    def _insert_sql(self, rows: int, returning: bool) -> str:
        """INSERT of `rows` tasks that skips ids already there; built once per shape."""
        key = (rows, returning)
        sql = self._inserts.get(key)
        if sql is None:
            sql = self._inserts[key] = (
                f"INSERT INTO leek_task ({', '.join(c for c, _ in TASK_ROW)}) VALUES "  # noqa: S608
                + ", ".join([self._insert_row] * rows)
                + " ON CONFLICT (id) DO NOTHING"
                + (" RETURNING id" if returning else "")
            )
        return sql

    def _write_outcomes(self, cursor: Any, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        d = self.dialect
        finishes, successes, failures = [], [], []
        for o in outcomes:
            tid = d.pk(o.task_id)
            if o.succeeded:
                status = "succeeded"
            else:
                status = "failed" if o.final else "queued"
            finished = d.time(o.finished)
            started = d.time(o.started)
            finishes.append((status, started, finished, o.attempt, d.time(o.retry_at), tid))
            if o.succeeded:
                successes.append(
                    (
                        tid,
                        o.name,
                        o.attempt,
                        started,
                        finished,
                        o.finished - o.started,
                        o.result,
                        o.result_repr,
                        o.stdout,
                        o.stderr,
                    )
                )
            else:
                failures.append(
                    (
                        tid,
                        o.name,
                        o.attempt,
                        started,
                        finished,
                        o.exc_type,
                        o.exc_message,
                        o.traceback,
                        o.final,
                        o.stdout,
                        o.stderr,
                    )
                )
        cursor.executemany(self._sql_finish, finishes)
        if successes:
            cursor.executemany(self._sql_success, successes)
        if failures:
            cursor.executemany(self._sql_failure, failures)

    def progress(self, task_id: uuid.UUID, percent: float, note: str) -> None:
        """Record a running task's progress in the next batch."""

        def write(cursor: Any, d: Dialect) -> None:
            cursor.execute(
                d.sql("UPDATE leek_task SET progress = %s, progress_note = %s WHERE id = %s"),
                (percent, note, d.pk(task_id)),
            )

        self._later(Op("call", write))


def _per_op(ops: list[Op], inserted: list[Ready]) -> list[Any]:
    """One result per op: for an insert, the Ready of its tasks that were new."""
    if len(ops) == 1:
        return [inserted]
    fresh = {r.id: r for r in inserted}
    return [
        [r for t in op.data if (r := fresh.pop(t.id, None)) is not None]
        if op.kind == "insert"
        else None
        for op in ops
    ]


def _once(tasks: Sequence[NewTask], keys: list[Any], inserted: set[Any]) -> list[NewTask]:
    """The tasks whose key is among those inserted, each key once: a batch
    that names one id twice inserts it once, and it must run once."""
    fresh = []
    for task, key in zip(tasks, keys, strict=True):
        if key in inserted:
            inserted.discard(key)
            fresh.append(task)
    return fresh
