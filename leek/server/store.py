"""Every database read and write the broker makes.

One writer thread owns the writes of the hot path. It takes every operation
waiting at that moment (task inserts, running marks, outcomes, sweeps), writes
them in one transaction, commits, and only then releases the waiters of the
inserts it committed: accepted means committed, and concurrent clients share a
commit. Reads run on the calling thread's own Django connection.

The SQL is prepared by hand on the raw DB-API cursor: the models in
leek/models.py are the schema, and the ORM's per-object cost would dominate the
commit it waits for.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import DatabaseError, InterfaceError, close_old_connections, connection

logger = logging.getLogger(__name__)

#: What a write can raise when the database fails: Django's wrapped errors and,
#: from the raw cursor the hot path uses, the driver's own.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    DatabaseError, InterfaceError, *(
        [connection.Database.Error] if hasattr(connection, "Database") else []),
)  # fmt: skip

TASK_COLUMNS = (
    "id", "name", "queue", "priority", "status", "payload", "args_repr", "attempts",
    "max_retries", "timeout", "queued_at", "run_after", "started_at", "finished_at",
    "broker", "spooled", "code_version", "progress", "progress_note",
)  # fmt: skip
INSERT_CHUNK = 500
#: Seconds the writer waits for an insert to share the commit of outcomes.
LINGER = 0.002


@dataclass(slots=True)
class NewTask:
    """A task as a client sends it, before its insert."""

    id: uuid.UUID
    name: str
    queue: str
    priority: int
    payload: bytes
    args_repr: str
    max_retries: int
    timeout: float | None
    run_after: float | None
    code_version: str


@dataclass(slots=True)
class Job:
    """What a worker needs to run a task."""

    payload: bytes
    name: str
    attempts: int
    max_retries: int
    timeout: float | None


@dataclass(slots=True)
class Ready:
    """A task the broker owns and must run: what the in-memory queues hold."""

    id: uuid.UUID
    priority: int
    queue: str
    run_after: float | None
    job: Job | None = None


@dataclass(slots=True)
class Outcome:
    """The end of one attempt: a success, a failure to retry, or a final failure."""

    task_id: uuid.UUID
    name: str
    attempt: int
    started: float
    finished: float
    succeeded: bool
    result: bytes | None = None
    result_repr: str = ""
    stdout: str = ""
    stderr: str = ""
    exc_type: str = ""
    exc_message: str = ""
    traceback: str = ""
    final: bool = True
    retry_at: float | None = None


class Waiter:
    """Completes when the writer has committed an operation, or failed it."""

    __slots__ = ("_done", "value", "error")

    def __init__(self) -> None:
        self._done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def resolve(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error
        self._done.set()

    def wait(self, timeout: float | None = None) -> Any:
        if not self._done.wait(timeout):
            raise TimeoutError(f"database write not committed within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.value


@dataclass(slots=True)
class _Op:
    kind: str  # "insert", "mark", "outcome", "call"
    data: Any
    waiter: Waiter | None = None
    tries: int = 0


class Dialect:
    """How values and placeholders look on this connection's database."""

    def __init__(self, vendor: str) -> None:
        self.vendor = vendor
        self.sqlite = vendor == "sqlite"
        self.ph = "?" if self.sqlite else "%s"

    def uuid(self, value: uuid.UUID) -> Any:
        return value.hex if self.sqlite else value

    def time(self, ts: float | None) -> Any:
        if ts is None:
            return None
        moment = datetime.fromtimestamp(ts, UTC)
        return moment.replace(tzinfo=None).isoformat(" ") if self.sqlite else moment

    def read_uuid(self, value: Any) -> uuid.UUID:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))

    def read_time(self, value: Any) -> float | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value).replace(tzinfo=UTC)
        elif value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return float(value.timestamp())

    def sql(self, text: str) -> str:
        """`text` written with %s placeholders, in this database's style."""
        return text.replace("%s", self.ph)


def raw_cursor() -> Any:
    """A DB-API cursor on this thread's Django connection."""
    connection.ensure_connection()
    return connection.connection.cursor()  # type: ignore[union-attr]


class Store:
    """The broker's database: a group-commit writer plus reads on the caller's thread."""

    def __init__(self, node: str, on_ready: Callable[[list[Ready]], None]) -> None:
        self.node = node
        self.on_ready = on_ready
        self.dialect = Dialect(connection.vendor)
        self.healthy = True
        self.last_error = ""
        self.commits = 0
        self._pending: deque[_Op] = deque()
        self._lock = threading.Lock()  # held by the thread writing a batch
        self._wake = threading.Condition()  # the writer thread sleeps on it
        self._idle = False
        self._stopping = False
        self._retry = False
        self._local = threading.local()
        self._thread = threading.Thread(target=self._loop, name="leek-writer", daemon=True)
        d = self.dialect
        self._insert_row = "(" + ", ".join([d.ph] * len(TASK_COLUMNS)) + ")"
        self._sql_mark = d.sql(
            "UPDATE leek_task SET status = 'running', started_at = %s, attempts = %s "
            "WHERE id = %s AND status = 'queued'"
        )
        self._sql_finish = d.sql(
            "UPDATE leek_task SET status = %s, started_at = %s, finished_at = %s, attempts = %s, "
            "run_after = %s WHERE id = %s"
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

    # -- the writer ---------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is waiting, then end the writer thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)

    def insert(self, tasks: Sequence[NewTask]) -> Waiter:
        """Insert `tasks` (once each: a replayed id is ignored); the waiter
        completes after the commit."""
        return self._lead(_Op("insert", tasks, Waiter()))

    def mark_running(self, task_id: uuid.UUID, attempt: int, started: float) -> None:
        """Show the task as running; rides in the next batch, nothing waits for it."""
        self._later(_Op("mark", (started, attempt, task_id)))

    def record(self, outcome: Outcome) -> None:
        """Write an attempt's outcome in the next batch."""
        self._later(_Op("outcome", outcome))

    def call(self, fn: Callable[[Any, Dialect], Any]) -> Waiter:
        """Run fn(cursor, dialect) inside the next batch's transaction."""
        return self._lead(_Op("call", fn, Waiter()))

    # -- group commit -------------------------------------------------------
    #
    # A thread that waits for its write (a client's insert) queues it and, when
    # no other thread is writing, writes every queued op itself: no hand-off to
    # another thread on the hot path. When another thread is writing, that one
    # takes the op: a writer checks the queue again after letting go of the lock,
    # so nothing queued before a failed try is left behind. Ops nobody waits for
    # (running marks, outcomes) go to the writer thread, which lets them linger a
    # moment so they share the commit of the next insert.

    def _lead(self, op: _Op) -> Waiter:
        self._pending.append(op)
        self._flush_all(blocking=False)
        assert op.waiter is not None
        return op.waiter

    def _later(self, op: _Op) -> None:
        self._pending.append(op)
        if self._idle:
            with self._wake:
                self._wake.notify()

    def _flush_all(self, blocking: bool) -> bool:
        """Write queued ops until none are left or another thread writes;
        True when some ops failed and wait to be tried again."""
        failed = False
        while self._pending:
            if not self._lock.acquire(blocking=blocking):
                return failed
            try:
                failed = self._flush() or failed
            finally:
                self._lock.release()
            if failed:
                self._later_retry()
                return True
        return failed

    def _flush(self) -> bool:
        batch: list[_Op] = []
        pending = self._pending
        while pending:
            batch.append(pending.popleft())
        if not batch:
            return False
        retry = self._write(batch)
        if retry:
            pending.extendleft(reversed(retry))
        return bool(retry)

    def _later_retry(self) -> None:
        with self._wake:
            self._retry = True
            self._wake.notify()

    def _loop(self) -> None:
        delay = 0.05
        while True:
            with self._wake:
                self._idle = True
                while not (self._pending or self._stopping):
                    self._wake.wait()
                self._idle = False
                stopping, retrying = self._stopping, self._retry
                self._retry = False
            if stopping and not self._pending:
                break
            if retrying:
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            elif not stopping and not any(op.waiter for op in list(self._pending)):
                time.sleep(LINGER)  # let the next insert carry these
            if self._flush_all(blocking=True):
                if stopping and self._pending and self._pending[0].tries > 5:
                    logger.error("writer stopping with unwritten outcomes count=%s",
                                 len(self._pending), extra={"action": "writer_gave_up"})  # fmt: skip
                    break
                with self._wake:
                    self._retry = True
            else:
                delay = 0.05
        self._close()

    def _cursor(self) -> Any:
        """This thread's raw cursor, opened once and kept."""
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = self._local.cursor = raw_cursor()
        return cursor

    def _close(self) -> None:
        """Close this thread's cursor and connection."""
        cursor = getattr(self._local, "cursor", None)
        if cursor is not None:
            try:
                cursor.close()
            except Exception:
                logger.debug("closing a writer cursor failed", exc_info=True)
            self._local.cursor = None
        connection.close()

    def _write(self, ops: list[_Op]) -> list[_Op]:
        """Write `ops` in one transaction; return the ops to try again."""
        try:
            results = self._transaction(ops)
        except DATABASE_ERRORS as exc:
            self._failed(exc)
            if len(ops) > 1 and self._reachable():
                retry: list[_Op] = []
                for op in ops:  # isolate the op that fails
                    retry.extend(self._write([op]))
                return retry
            return self._after_failure(ops, exc)
        self.healthy, self.last_error = True, ""
        ready: list[Ready] = []
        for op, result in zip(ops, results, strict=True):
            if op.kind == "insert":
                ready.extend(result)
                op.waiter.resolve(None)  # type: ignore[union-attr]
            elif op.waiter is not None:
                op.waiter.resolve(result)
        if ready:
            self.on_ready(ready)
        return []

    def _transaction(self, ops: list[_Op]) -> list[Any]:
        cursor = self._cursor()
        d = self.dialect
        cursor.execute("BEGIN IMMEDIATE" if d.sqlite else "BEGIN")
        try:
            inserts = [op for op in ops if op.kind == "insert"]
            inserted = self._insert_tasks(cursor, [t for op in inserts for t in op.data])
            outcomes = [op.data for op in ops if op.kind == "outcome"]
            finished = {o.task_id for o in outcomes}
            # A task whose outcome is in this batch needs no running mark.
            marks = [op.data for op in ops if op.kind == "mark" and op.data[2] not in finished]
            if marks:
                cursor.executemany(
                    self._sql_mark, [(d.time(s), a, d.uuid(i)) for s, a, i in marks]
                )
            self._write_outcomes(cursor, outcomes)
            results: list[Any] = []
            for op in ops:
                if op.kind == "insert":
                    results.append([inserted[t.id] for t in op.data if t.id in inserted])
                elif op.kind == "call":
                    results.append(op.data(cursor, d))
                else:
                    results.append(None)
            cursor.execute("COMMIT")
        except BaseException:
            try:
                cursor.execute("ROLLBACK")
            except Exception:  # noqa: S110 - the first error is the one raised
                logger.debug("rollback failed", exc_info=True)
            raise
        self.commits += 1
        return results

    def _insert_tasks(self, cursor: Any, tasks: list[NewTask]) -> dict[uuid.UUID, Ready]:
        """Insert the tasks not already there; the ones inserted, as Ready."""
        if not tasks:
            return {}
        d = self.dialect
        now = d.time(time.time())
        inserted: dict[uuid.UUID, Ready] = {}
        by_id = {t.id: t for t in tasks}
        for start in range(0, len(tasks), INSERT_CHUNK):
            chunk = tasks[start : start + INSERT_CHUNK]
            values: list[Any] = []
            for t in chunk:
                values += (
                    d.uuid(t.id), t.name, t.queue, t.priority, "queued", t.payload, t.args_repr,
                    0, t.max_retries, t.timeout, now, d.time(t.run_after), None, None,
                    self.node, False, t.code_version, None, "",
                )  # fmt: skip
            cursor.execute(
                f"INSERT INTO leek_task ({', '.join(TASK_COLUMNS)}) VALUES "  # noqa: S608
                + ", ".join([self._insert_row] * len(chunk))
                + " ON CONFLICT (id) DO NOTHING RETURNING id",
                values,
            )
            for (raw_id,) in cursor.fetchall():
                t = by_id[d.read_uuid(raw_id)]
                job = Job(t.payload, t.name, 0, t.max_retries, t.timeout)
                inserted[t.id] = Ready(t.id, t.priority, t.queue, t.run_after, job)
        return inserted

    def _write_outcomes(self, cursor: Any, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        d = self.dialect
        finishes, successes, failures = [], [], []
        for o in outcomes:
            tid = d.uuid(o.task_id)
            if o.succeeded:
                status = "succeeded"
            else:
                status = "failed" if o.final else "queued"
            finished = d.time(o.finished)
            started = d.time(o.started)
            finishes.append((status, started, finished, o.attempt, d.time(o.retry_at), tid))
            if o.succeeded:
                successes.append(
                    (tid, o.name, o.attempt, started, finished, o.finished - o.started,
                     o.result, o.result_repr, o.stdout, o.stderr)
                )  # fmt: skip
            else:
                failures.append(
                    (tid, o.name, o.attempt, started, finished, o.exc_type,
                     o.exc_message, o.traceback, o.final, o.stdout, o.stderr)
                )  # fmt: skip
        cursor.executemany(self._sql_finish, finishes)
        if successes:
            cursor.executemany(self._sql_success, successes)
        if failures:
            cursor.executemany(self._sql_failure, failures)

    def _failed(self, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}".strip()
        if self.healthy or message != self.last_error:
            logger.error(
                "database write failed error=%s", message, extra={"action": "db_write_failed"}
            )
        self.healthy, self.last_error = False, message
        try:
            self._close()
        except Exception:
            logger.debug("closing the broken connection failed", exc_info=True)

    def _reachable(self) -> bool:
        try:
            cursor = raw_cursor()
            cursor.execute("SELECT 1")
            cursor.close()
        except Exception:
            connection.close()
            return False
        return True

    def _after_failure(self, ops: list[_Op], exc: BaseException) -> list[_Op]:
        """Fail what a client waits for; keep outcomes to write later."""
        retry: list[_Op] = []
        for op in ops:
            op.tries += 1
            if op.kind == "outcome" and op.tries < 1000:
                retry.append(op)
            elif op.waiter is not None:
                op.waiter.resolve(error=exc)
        return retry

    # -- reads on the caller's connection -------------------------------------

    def progress(self, task_id: uuid.UUID, percent: float, note: str) -> None:
        """Record a running task's progress in the next batch."""

        def write(cursor: Any, d: Dialect) -> None:
            cursor.execute(
                d.sql("UPDATE leek_task SET progress = %s, progress_note = %s WHERE id = %s"),
                (percent, note, d.uuid(task_id)),
            )

        self._later(_Op("call", write))

    def jobs(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, tuple[str, Job]]:
        """Status and job of each task in `ids` that still exists."""
        d = self.dialect
        keys = [d.uuid(i) for i in ids]
        if not keys:
            return {}
        cursor = raw_cursor()
        try:
            cursor.execute(
                "SELECT id, status, payload, name, attempts, max_retries, timeout "  # noqa: S608
                "FROM leek_task WHERE id IN (" + ", ".join([d.ph] * len(keys)) + ")",
                keys,
            )
            return {
                d.read_uuid(i): (s, Job(bytes(p), n, a, m, t))
                for i, s, p, n, a, m, t in cursor.fetchall()
            }
        finally:
            cursor.close()

    def owned(self, page: int = 5000) -> Iterable[list[Ready]]:
        """Every unfinished task this broker owns, oldest first, in pages."""
        d = self.dialect
        sql = d.sql(
            "SELECT id, priority, queue, run_after, queued_at FROM leek_task "
            "WHERE broker = %s AND status IN ('queued', 'running') "
            "AND (queued_at > %s OR (queued_at = %s AND id > %s)) "
            "ORDER BY queued_at, id LIMIT %s"
        )
        last_at: Any = d.time(0.0)
        last_id: Any = d.uuid(uuid.UUID(int=0))
        while True:
            cursor = raw_cursor()
            try:
                cursor.execute(sql, (self.node, last_at, last_at, last_id, page))
                rows = cursor.fetchall()
            finally:
                cursor.close()
            if not rows:
                return
            yield [Ready(d.read_uuid(r[0]), r[1], r[2], d.read_time(r[3])) for r in rows]
            last_at, last_id = rows[-1][4], rows[-1][0]
            if len(rows) < page:
                return
