"""Every SQL statement the broker runs, in the style of its database.

The statements are written once here with ``%s`` placeholders and turned into
the driver's style by `Statements` (SQLite's ``?``). Statements whose shape
depends on a count (an IN list, a multi-row insert) are functions of it. Every
write to a task's status sits here, so a condition that every status write
must carry is added in one file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..rows import Dialect

#: The stamp of a claim: the broker that owns a task from then on and the
#: lease token it owns it under, its epoch (bumped in the database at each of
#: its starts, `Statements.begin_epoch`). Every statement that claims a task,
#: the broker's own insert included, writes these columns and nothing else
#: names them: bound as `stamp(node, epoch)`, in this order.
STAMP_COLUMNS = ("broker", "epoch")
#: The SET clause of a claim (two placeholders: `stamp`).
STAMP = ", ".join(f"{column} = %s" for column in STAMP_COLUMNS)
#: The SET clause of a claim of tasks already in the table (three
#: placeholders: `stamp`, then the claim's number, Writes.claim_number): the
#: number lets a broker find the tasks of a claim whose commit's answer it
#: lost (doubt.py).
CLAIM = f"{STAMP}, claim = %s"
#: The condition of every write a broker makes to a task it holds (its running
#: mark, outcome, requeue, release, progress): the task is still stamped as
#: the claim it holds has it, so a write of a broker whose claim another took
#: over changes nothing (two placeholders: `stamp`).
OWNED = " AND ".join(f"{column} = %s" for column in STAMP_COLUMNS)


def stamp(node: str, epoch: int) -> tuple[str, int]:
    """The bound values of STAMP and OWNED."""
    return (node, epoch)


def by_list(d: Dialect, cursor: Any, statement: str, params: Sequence[Any]) -> None:
    """Run `statement`, which finds tasks by a list of them (ids in an IN list
    or an array, keys), on a writing connection's cursor: on PostgreSQL it is
    planned for this run and never prepared. psycopg prepares a statement
    after five runs, and PostgreSQL may then keep one generic plan for the
    connection's life: made while the task table was small, where reading the
    whole table costs less than looking up each task, it reads the whole table
    on every run once the table has grown. A statement of one task by its
    primary key keeps its prepared plan: one lookup by the key costs less than
    reading the ten pages the planner assumes of a table never analysed (and
    autovacuum's next analysis plans it again as the table grows)."""
    if d.sqlite:
        cursor.execute(statement, params)
        return
    import psycopg

    if isinstance(cursor, psycopg.Cursor):
        cursor.execute(statement, params, prepare=False)
    else:  # Django's cursor, which binds on the client and prepares nothing
        cursor.execute(statement, params)


#: The columns of a new task's row, each with what the insert puts there: a
#: placeholder for a value it binds (in `batch.task_rows`' order), or the SQL
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
    *((column, "%s") for column in STAMP_COLUMNS),
    ("spooled", "%s"),
    ("code_version", "%s"),
    ("progress", "NULL"),
    ("progress_note", "''"),
    ("key", "%s"),
    ("lock_key", "%s"),
    ("key_running", "%s"),
    ("expires_at", "%s"),
    ("rate_limit", "%s"),
)
#: PostgreSQL inserts a batch from one array per bound column (the queue time
#: and the epoch are one value for all): the indexes of those columns in a row,
#: in the order of PG_INSERT_MANY (the owner and spooled last).
PG_ARRAY_COLUMNS = (0, 1, 2, 3, 4, 5, 6, 7, 9, 13, 14, 15, 16, 17, 18, 10, 12)
#: No conflict target: a task is skipped whether its id is there already (a
#: replay) or another task holds its key (the unique lock_key). The arrays go
#: in binary (%b): psycopg writes an array's text form element by element in
#: Python, quoting and escaping each, several times slower.
PG_INSERT_MANY = (
    "INSERT INTO leek_task (id, name, queue, priority, payload, args_repr, max_retries, "
    "timeout, run_after, code_version, key, lock_key, key_running, expires_at, rate_limit, "
    "broker, spooled, status, attempts, queued_at, started_at, finished_at, epoch, progress, "
    "progress_note) "
    "SELECT u.*, 'queued', 0, %s, NULL, NULL, %s, NULL, '' FROM unnest("
    "%b::uuid[], %b::varchar[], %b::varchar[], %b::integer[], %b::bytea[], %b::text[], "
    "%b::integer[], %b::float8[], %b::timestamptz[], %b::varchar[], %b::varchar[], "
    "%b::varchar[], %b::boolean[], %b::timestamptz[], %b::varchar[], %b::varchar[], "
    "%b::boolean[]) AS u "
    "ON CONFLICT DO NOTHING RETURNING id"
)
#: The successes of a batch in one statement (PostgreSQL), from one array per
#: column, in binary as PG_INSERT_MANY's: each task's finish (as
#: Statements.finish writes a success) under the claim its attempt started
#: under (OWNED, with each row's own epoch), and its SuccessTask row where the
#: finish wrote; a chain's step is left to outcomes.write_rows. Each task is
#: found by its id: the status test is written so that no index serves it
#: (IS TRUE), as the statistics may say few tasks are queued when a backlog
#: has just come, and the planner would then read every queued task for each
#: batch. The ids are also looked up by the primary key's index as a list
#: (`t.id = ANY`), so that the plan, which has no nested loop
#: (`outcomes.hashed`), never reads the whole table. Bound: the arrays in
#: `outcomes.success_columns`' order, the ids again, then the broker twice. Run
#: through `by_list`: planned for each batch, never from a plan kept since the
#: table was small.
PG_SUCCESS_MANY = (
    "WITH f AS (UPDATE leek_task t SET status = 'succeeded', started_at = u.started_at, "
    "finished_at = u.finished_at, attempts = u.attempt, lock_key = NULL FROM unnest("
    "%b::uuid[], %b::varchar[], %b::integer[], %b::timestamptz[], %b::timestamptz[], "
    "%b::float8[], %b::bytea[], %b::text[], %b::text[], %b::text[], %b::bigint[]) "
    "AS u (id, name, attempt, started_at, finished_at, duration, result, result_repr, "
    "stdout, stderr, epoch) "
    "WHERE t.id = u.id AND t.id = ANY(%b::uuid[]) "
    "AND (t.status IN ('queued', 'running', 'expired')) IS TRUE "
    "AND t.broker = %s AND t.epoch = u.epoch AND t.next_step IS NULL "
    "RETURNING t.id, u.name, u.attempt, u.started_at, u.finished_at, u.duration, u.result, "
    "u.result_repr, u.stdout, u.stderr) "
    "INSERT INTO leek_successtask (task_id, name, attempt, started_at, finished_at, "
    "duration, result, result_repr, stdout, stderr, broker) "
    "SELECT f.*, %s FROM f RETURNING task_id"
)
#: A task's lock_key once it starts: kept only for a key_running task.
KEEP_RUNNING_KEY = "CASE WHEN key_running THEN lock_key ELSE NULL END"
#: The queues paused, for every broker sharing the database.
PAUSED = "SELECT queue FROM leek_queuestate WHERE paused"
#: The columns of a broker's row that each heartbeat writes.
NODE_COLUMNS = (
    "hostname",
    "host",
    "port",
    "pid",
    "version",
    "code_version",
    "workers",
    "workers_alive",
    "workers_busy",
    "handled",
    "healthy",
    "stopped",
    "note",
    "queues",
)


def db_now(d: Dialect) -> str:
    """The database's clock now, in the form its DateTimeField columns hold:
    on SQLite the text Django writes (microseconds, UTC, no offset), so that
    it compares and sorts with the times stored by either."""
    if d.sqlite:
        return "(strftime('%Y-%m-%d %H:%M:%f', 'now') || '000')"
    return "statement_timestamp()"


def db_since(d: Dialect) -> str:
    """The database's clock a bound number of seconds ago (one placeholder)."""
    if d.sqlite:
        return "(strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || %s || ' seconds') || '000')"
    return "(statement_timestamp() - %s * interval '1 second')"


#: What a claim returns of each task it takes.
CLAIMED = (
    "RETURNING id, priority, queue, run_after, status, name, attempts, started_at, max_retries"
)
PERIODIC_COLUMNS = (
    "id",
    "name",
    "task",
    "args",
    "kwargs",
    "cron",
    "every",
    "queue",
    "priority",
    "enabled",
    "catch_up",
    "last_run_at",
    "next_run_at",
)


@dataclass(frozen=True, slots=True)
class Ask:
    """One lane's claim of unowned tasks: its statement, the queues it binds
    and the most tasks it takes (Statements.claim_unowned)."""

    sql: str
    queues: tuple[str, ...]
    limit: int


#: PostgreSQL's estimate of a table's rows, by the table's name (admin/paging.py).
TABLE_ESTIMATE = "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass"
#: What precedes a query to have PostgreSQL's planner estimate its rows (admin/paging.py).
EXPLAIN = "EXPLAIN (FORMAT JSON) "


class Statements:
    """The fixed statements, in one database's placeholder style."""

    def __init__(self, d: Dialect) -> None:
        self.dialect = d
        q = d.sql
        self.insert_row = q("(" + ", ".join(value for _, value in TASK_ROW) + ")")
        # A task's key stops locking when it starts, unless it is key_running.
        self.mark = q(
            "UPDATE leek_task SET status = 'running', started_at = %s, attempts = %s, "
            f"lock_key = {KEEP_RUNNING_KEY} WHERE id = %s AND status = 'queued' AND {OWNED}"
        )
        # Its key stops locking when it ends, unless it waits for a retry and is
        # key_running (bound: whether it waits for a retry). An ended task
        # (cancelled, succeeded, failed) keeps its end: an outcome never flips it.
        # Nor is an attempt's outcome written twice (bound last: its number): a
        # task queued again for its retry has its attempts at that number
        # already, while before the outcome it has one less, or runs.
        finish = (
            "UPDATE leek_task SET status = %s, started_at = %s, finished_at = %s, attempts = %s, "
            "run_after = COALESCE(%s, run_after), "
            "lock_key = CASE WHEN %s AND key_running THEN lock_key ELSE NULL END "
            f"WHERE id = %s AND status IN ('queued', 'running', 'expired') AND {OWNED} "
            "AND NOT (status = 'queued' AND attempts >= %s)"
        )
        self.finish = q(finish + ("" if d.sqlite else " RETURNING id"))
        success = (
            "INSERT INTO leek_successtask (task_id, name, attempt, started_at, finished_at, "
            "duration, result, result_repr, stdout, stderr, broker) "
        )
        success_row = "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s"
        self.success = q(f"{success}VALUES ({success_row})")
        failure = (
            "INSERT INTO leek_failedtask (task_id, name, attempt, started_at, failed_at, "
            "exc_type, exc_message, traceback, final, requeued_at, stdout, stderr, broker) "
        )
        failure_row = "%s, %s, %s, %s, %s, %s, %s, %s, %s, NULL, %s, %s, %s"
        self.failure = q(f"{failure}VALUES ({failure_row})")
        # An outcome in one statement (PostgreSQL): its finish, and its
        # attempt's row only where the finish wrote (outcomes.at_once). A step
        # of a chain is left to write_rows, which releases the next one.
        at_once = f"WITH f AS ({finish} AND next_step IS NULL RETURNING id) "
        self.success_at_once = f"{at_once}{success}SELECT {success_row} FROM f RETURNING task_id"
        self.failure_at_once = f"{at_once}{failure}SELECT {failure_row} FROM f RETURNING task_id"
        self.progress = q(
            f"UPDATE leek_task SET progress = %s, progress_note = %s WHERE id = %s AND {OWNED}"
        )
        # A queued task is cancelled here only where no other live broker may
        # hold it in memory: its own, nobody's, or one silent since the time bound.
        self.cancel = q(
            "UPDATE leek_task SET status = 'cancelled', finished_at = %s, lock_key = NULL "
            "WHERE id = %s AND status = 'queued' AND (broker = %s OR broker = '' "
            "OR NOT EXISTS (SELECT 1 FROM leek_brokernode n WHERE n.name = leek_task.broker "
            f"AND NOT n.stopped AND n.heartbeat_at >= {db_since(d)})) RETURNING queue, broker"
        )
        # A task this broker runs now, or holds queued.
        self.cancel_running = q(
            "UPDATE leek_task SET status = 'cancelled', finished_at = %s, lock_key = NULL "
            "WHERE id = %s AND status IN ('queued', 'running') AND broker = %s "
            "RETURNING queue, broker"
        )
        # A task that has not started, at or past its expiry (attempts = 0: a
        # task that started once is not cut by it).
        self.expire = q(
            "UPDATE leek_task SET status = 'expired', finished_at = %s, lock_key = NULL "
            "WHERE id = %s AND status = 'queued' AND attempts = 0"
        )
        # Every waiting task past its expiry, read through the partial index of
        # expiring tasks: its condition repeated, and on SQLite, which keeps no
        # statistics and would walk every queued task by the status index, named.
        expiring = (
            "WHERE expires_at IS NOT NULL AND status = 'queued' AND expires_at <= %s "
            "AND attempts = 0"
        )
        tasks = "leek_task INDEXED BY leek_task_expiring" if d.sqlite else "leek_task"
        self.expire_due = q(
            f"UPDATE {tasks} SET status = 'expired', finished_at = %s, lock_key = NULL "
            f"{expiring} RETURNING id, queue, broker"
        )
        self.any_expired = q(f"SELECT 1 FROM {tasks} {expiring} LIMIT 1")
        # A task's row while its outcome is written apart (batch.write_apart),
        # kept from deletion until the commit on PostgreSQL.
        self.task_exists = q(
            "SELECT 1 FROM leek_task WHERE id = %s" + ("" if d.sqlite else " FOR KEY SHARE")
        )
        self.requeue = q(
            "UPDATE leek_task SET status = 'queued' "
            f"WHERE id = %s AND status <> 'cancelled' AND {OWNED}"
        )
        self.fail_cut = q(
            "UPDATE leek_task SET status = 'failed', finished_at = %s, lock_key = NULL "
            f"WHERE id = %s AND status <> 'cancelled' AND {OWNED}"
        )
        # An attempt a worker had started (the file of starts.py) counts though
        # its running mark never reached the database.
        self.started_before = q(
            "UPDATE leek_task SET status = 'running', attempts = %s, started_at = %s, "
            f"lock_key = {KEEP_RUNNING_KEY} "
            "WHERE id = %s AND broker = %s AND status IN ('queued', 'running') AND attempts < %s"
        )
        # The attempt cut short was the task's last: it fails for good.
        self.interrupt_last = q(
            "UPDATE leek_task SET status = 'failed', finished_at = %s, lock_key = NULL "
            "WHERE broker = %s AND status = 'running' AND attempts > max_retries "
            "RETURNING id, name, attempts, started_at"
        )
        self.interrupt = q(
            "UPDATE leek_task SET status = 'queued' WHERE broker = %s AND status = 'running' "
            "RETURNING id, name, attempts, started_at"
        )
        # At its start a broker claims again, under its new epoch, every
        # unfinished task its earlier lives left under its name.
        self.recover = q(
            f"UPDATE leek_task SET {STAMP} WHERE broker = %s AND status IN ('queued', 'running')"
        )
        # A new life's epoch: past every epoch of this name's earlier lives.
        self.begin_epoch = q(
            "UPDATE leek_brokernode SET epoch = epoch + 1 WHERE name = %s RETURNING epoch"
        )
        self.owned = q(
            "SELECT id, priority, queue, run_after FROM leek_task "
            "WHERE broker = %s AND status IN ('queued', 'running') ORDER BY queued_at"
        )
        # The tasks one claim of the broker took (bound: the broker, its
        # epoch, the claim's number), still queued under it (doubt.py).
        self.claimed_by = q(
            "SELECT id, priority, queue, run_after FROM leek_task WHERE broker = %s "
            "AND epoch = %s AND claim = %s AND status = 'queued'"
        )
        self.gone = q(
            "SELECT name, heartbeat_at, stopped FROM leek_brokernode WHERE name <> %s "
            f"AND (stopped OR heartbeat_at < {db_since(d)})"
        )
        self.claim_spooled = claim_spooled(d, NOT_DUE)
        # The lanes are a JSON document: bound as text, read as jsonb on PostgreSQL.
        marks = {k: "%s" if d.sqlite or k != "queues" else "%s::jsonb" for k in NODE_COLUMNS}
        names = ", ".join(f"{k} = {marks[k]}" for k in NODE_COLUMNS)
        self.beat = q(
            f"UPDATE leek_brokernode SET {names}, heartbeat_at = {db_now(d)} WHERE name = %s"
        )
        values = ", ".join([*marks.values(), db_now(d), "%s", "%s"])
        self.first_beat = q(
            f"INSERT INTO leek_brokernode ({', '.join(NODE_COLUMNS)}, "
            f"heartbeat_at, started_at, name) VALUES ({values})"
        )
        self.node_row = q(
            "SELECT hostname, pid, host, port, stopped FROM leek_brokernode WHERE name = %s"
        )
        self.periodic_rows = f"SELECT {', '.join(PERIODIC_COLUMNS)} FROM leek_periodictask"
        self.schedule_insert = q(
            "INSERT INTO leek_periodictask (name, task, args, kwargs, cron, every, queue, "
            "priority, enabled, catch_up, from_settings, last_run_at, next_run_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, NULL, NULL) "
            "ON CONFLICT (name) DO NOTHING"
        )
        self.schedule_update = q(
            "UPDATE leek_periodictask SET next_run_at = CASE WHEN cron <> %s "
            "OR COALESCE(every, -1) <> %s OR enabled <> %s THEN NULL "
            "ELSE next_run_at END, task = %s, args = %s, kwargs = %s, cron = %s, "
            "every = %s, queue = %s, priority = %s, enabled = %s, catch_up = %s, "
            "from_settings = %s WHERE name = %s"
        )
        self.next_run_from_null = q(
            "UPDATE leek_periodictask SET next_run_at = %s WHERE id = %s AND next_run_at IS NULL"
        )
        self.next_run_from = q(
            "UPDATE leek_periodictask SET next_run_at = %s WHERE id = %s AND next_run_at = %s"
        )
        claim = (
            "next_run_at = %s WHERE id = %s AND next_run_at = %s AND enabled AND cron = %s "
            "AND COALESCE(every, -1) = %s"
        )
        self.claim_run = q(f"UPDATE leek_periodictask SET last_run_at = %s, {claim}")
        self.skip_run = q(f"UPDATE leek_periodictask SET {claim}")
        data = "%s" if d.sqlite else "%s::jsonb"
        self.event = q(
            "INSERT INTO leek_event (kind, message, actor, data, created_at) "
            f"VALUES (%s, %s, %s, {data}, %s)"
        )

    def insert(self, rows: int, returning: bool) -> str:
        """INSERT of `rows` tasks that skips ids already there."""
        return (
            f"INSERT INTO leek_task ({', '.join(c for c, _ in TASK_ROW)}) VALUES "
            + ", ".join([self.insert_row] * rows)
            + " ON CONFLICT DO NOTHING"
            + (" RETURNING id" if returning else "")
        )

    def unwritten(self, count: int) -> str:
        """The status and stamp of `count` tasks by id: those of outcomes the
        finish did not write, to tell a cancel from a claim lost."""
        return (
            f"SELECT id, status, {', '.join(STAMP_COLUMNS)} FROM leek_task WHERE id IN ("
            + ", ".join([self.dialect.ph] * count)
            + ")"
        )

    def attempt_rows(self, table: str, count: int) -> str:
        """The task, attempt and end of the rows of `table` (leek_successtask
        or leek_failedtask) of `count` tasks by id: the attempts written
        already (outcomes.refuse)."""
        end = "finished_at" if table == "leek_successtask" else "failed_at"
        return (
            f"SELECT task_id, attempt, {end} FROM {table} WHERE task_id IN ("
            + ", ".join([self.dialect.ph] * count)
            + ")"
        )

    def jobs(self, count: int) -> str:
        """The status and job of `count` tasks by id."""
        return (
            "SELECT id, status, payload, name, attempts, max_retries, timeout, expires_at, "
            "rate_limit FROM leek_task WHERE id IN (" + ", ".join([self.dialect.ph] * count) + ")"
        )

    def adopt(self, brokers: int, queues: int | None) -> str:
        """Claim the unfinished tasks of `brokers` gone brokers (of `queues`
        queues only, unless None), each while its broker is still gone (bound
        first: the claim's CLAIM; last: the seconds of silence that make it so). Read again by the
        update itself: on PostgreSQL a broker's renewed heartbeat committed
        since the sweep read the brokers' rows keeps its tasks."""
        marks = ", ".join(["%s"] * brokers)
        still_gone = (
            "EXISTS (SELECT 1 FROM leek_brokernode n WHERE n.name = leek_task.broker "
            f"AND (n.stopped OR n.heartbeat_at < {db_since(self.dialect)}))"
        )
        return self.dialect.sql(
            f"UPDATE leek_task SET {CLAIM} "
            f"WHERE broker IN ({marks}) AND status IN ('queued', 'running')"
            f"{_of_queues(queues)} AND {still_gone} {CLAIMED}"
        )

    def committed_of(self, count: int) -> str:
        """Of `count` task ids (bound after the broker, its epoch and a
        queued_at), the id, priority, queue and run_after of those the
        broker's own insert stamped with that time, still queued (doubt.py)."""
        marks = ", ".join(["%s"] * count)
        return self.dialect.sql(
            "SELECT id, priority, queue, run_after FROM leek_task WHERE broker = %s "
            "AND epoch = %s AND queued_at = %s AND status = 'queued' AND NOT spooled "
            f"AND id IN ({marks})"
        )

    def running_of(self, brokers: int) -> str:
        """The id and broker of the running tasks of `brokers` brokers."""
        marks = ", ".join(["%s"] * brokers)
        return self.dialect.sql(
            f"SELECT id, broker FROM leek_task WHERE status = 'running' AND broker IN ({marks})"
        )

    def claim_spooled_of(self, queues: int | None) -> str:
        """The sweep's claim of spooled tasks not due yet (of `queues` queues
        only, unless None; bound after the claim's CLAIM and False: the time now)."""
        if queues is None:
            return self.claim_spooled
        return claim_spooled(self.dialect, NOT_DUE + _of_queues(queues))

    def claim_unowned(self, queues: int, among: bool) -> str:
        """The claim of unowned tasks due now for one lane: of `queues` queues
        (`among`), or of every queue but those (not `among`). Bound: the
        claim's CLAIM, False, the time now, the queues, the most rows to claim."""
        if not queues:
            return claim_unowned(self.dialect)
        marks = ", ".join(["%s"] * queues)
        return claim_unowned(self.dialect, f" AND queue {'' if among else 'NOT '}IN ({marks})")

    def release(self, count: int) -> str:
        """Give `count` queued tasks of this broker up to whichever broker serves their queue."""
        return self.dialect.sql(
            f"UPDATE leek_task SET broker = '', spooled = TRUE WHERE {OWNED} "
            "AND status = 'queued' AND id IN (" + ", ".join(["%s"] * count) + ")"
        )

    def unschedule(self, keep: int) -> str:
        """Delete the rows synced from settings but those of `keep` names."""
        where = f" AND name NOT IN ({', '.join([self.dialect.ph] * keep)})" if keep else ""
        return f"DELETE FROM leek_periodictask WHERE from_settings{where}"


def _of_queues(count: int | None) -> str:
    """The condition that a task's queue is one of `count` bound values."""
    return "" if count is None else f" AND queue IN ({', '.join(['%s'] * count)})"


#: The spooled tasks the sweep claims: those not due yet (bound: the time now),
#: for the delayed heap; the due ones are shared (`claim_unowned`).
NOT_DUE = " AND run_after > %s"


def claim_spooled(d: Dialect, condition: str = "") -> str:
    """The sweep's claim of spooled tasks, in `d`'s SQL.

    The claim must read only the partial index of spooled rows (the broker's
    own inserts are never in it), however many tasks wait. SQLite, which keeps
    no statistics, uses a partial index only for a query that repeats its
    condition, and Django writes that condition as "spooled" (5.2) or
    "spooled" = 1 (6.x): the claim repeats both. `status || ''` keeps the
    planner off the status index, which would otherwise walk every queued
    task, at every sweep, inside a write."""
    spooled = "spooled AND spooled = 1" if d.sqlite else "spooled"
    return d.sql(
        f"UPDATE leek_task SET {CLAIM}, spooled = %s "
        f"WHERE {spooled} AND status || '' = 'queued'{condition} {CLAIMED}"
    )


def claim_unowned(d: Dialect, condition: str = "") -> str:
    """A claim of the unowned tasks due now (spooled, owned by no broker),
    highest priority first, then oldest, up to a bound number: every broker
    sharing the database takes its work this way (server/share.py).

    Two brokers never claim one row: PostgreSQL locks the rows the inner
    select picks and skips those another claim has locked; SQLite runs the
    whole statement under its one write lock. It reads the partial index of
    spooled rows, as `claim_spooled` does."""
    spooled = "spooled AND spooled = 1" if d.sqlite else "spooled"
    lock = "" if d.sqlite else " FOR UPDATE SKIP LOCKED"
    return d.sql(
        f"UPDATE leek_task SET {CLAIM}, spooled = %s WHERE id IN (SELECT id FROM leek_task "
        f"WHERE {spooled} AND status || '' = 'queued' AND (run_after IS NULL OR run_after <= %s)"
        f"{condition} ORDER BY priority DESC, queued_at LIMIT %s{lock}) {CLAIMED}"
    )
