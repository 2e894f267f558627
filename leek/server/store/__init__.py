"""The broker's database: every read and write it makes, each a named method.

Writes go through a group commit (groupcommit.py): each batch is one
transaction, whichever threads queued its ops, and a client's reply is sent
only after the commit that holds its task. The store holds two of them, as
lanes: ``tasks`` takes what someone waits for (inserts, claims, cancels,
heartbeats) and ``outcomes`` what nobody waits for (running marks, outcomes,
progress). On PostgreSQL the outcomes lane has a connection and a writer
thread of its own, so a client's acknowledgement never waits behind a batch
of outcomes and a slow outcome (a locked row) holds no client. SQLite takes
one writer at a time, so there both lanes are one.

Reads (`jobs`, `owned`, `counts`) run on the calling thread's own Django
connection and see what the lanes committed. The PeriodicTask rows' reads and
writes are `Store.periodic`'s (periodic.py), those of expiry and paused queues
`Store.controls`' (controls.py), and those of the brokers' rows, with the
claims of recovery and adoption, `Store.nodes`' (nodes.py).

The statements are in sql.py, the writing of a batch in batch.py; no other
module of leek writes SQL (migrations aside).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from django.db import connection

from ... import conf
from ..groupcommit import DATABASE_ERRORS, Gathering, GroupCommit
from ..lifecycle import received
from ..ops import Call, Done, Insert, Mark, Record, Waiter
from ..rows import Dialect, Job, NewTask, Outcome, Ready
from ..starts import Starts, path_for

if TYPE_CHECKING:
    from ..links import Link
from . import chains, storable
from .batch import Writes
from .controls import ControlRows
from .cursor import raw_cursor
from .marks import HeldMarks
from .nodes import NodeRows
from .periodic import PeriodicRows
from .sql import Ask, Statements, stamp

__all__ = ["DATABASE_ERRORS", "Store", "Waiter", "raw_cursor"]

logger = logging.getLogger(__name__)

#: Pages in SQLite's write-ahead log past which the checkpoint is run between
#: two batches, so the log starts over (see Store.checkpoint).
CHECKPOINT_FRAMES = 4000
#: Tasks in one push from which its write goes to the writer thread, and the
#: event loop goes back to its connections meanwhile (GroupCommit.lead): about
#: 3 ms of SQLite's time, against a hand-off's 0.05 ms.
HEAVY_PUSH = 256
#: Tasks a broker reads at a time of those it owns, at start.
OWNED_PAGE = 5000
#: Task ids asked about per query when a broker checks the tasks it holds.
MINE_PAGE = 500


class Store:
    """The broker's reads and writes, the writes group-committed in two lanes."""

    def __init__(self, node: str, on_ready: Callable[[list[Ready]], None]) -> None:
        self.node = node
        self.dialect = Dialect(connection.vendor)
        self.sql = Statements(self.dialect)
        self.text_limit = int(conf.get("CAPTURE_LIMIT"))
        #: This broker's epoch, its lease token: every claim it makes is
        #: stamped with it (sql.STAMP). 0 until `begin_epoch`, for a Store
        #: used outside a broker.
        self.epoch = 0
        self.writes = Writes(
            node,
            self.sql,
            on_ready,
            self.text_limit,
            lambda: self.epoch,
            spin=float(conf.get("SPIN")),
        )
        self.tasks = GroupCommit("leek-writer", self.writes)
        self.outcomes = (
            self.tasks if self.dialect.sqlite else GroupCommit("leek-outcomes", self.writes)
        )
        self.periodic = PeriodicRows(self)
        self.controls = ControlRows(self)
        self.nodes = NodeRows(self)
        self.starts = Starts(path_for(node))
        self.marks = HeldMarks()
        self._checkpointed = 0

    @property
    def lanes(self) -> list[GroupCommit]:
        return [self.tasks] if self.outcomes is self.tasks else [self.tasks, self.outcomes]

    # -- life ----------------------------------------------------------------

    def start(self) -> None:
        for lane in self.lanes:
            lane.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what waits (the workers have stopped: their last outcomes too),
        the running marks held back included, within `timeout` seconds in all.
        The file of starts stays unless every write was made."""
        self._hand_marks(every=True)
        deadline = time.monotonic() + timeout
        ended = [lane.stop(max(0.0, deadline - time.monotonic())) for lane in reversed(self.lanes)]
        written = all(ended) and not any(lane.backlog for lane in self.lanes)
        self.starts.close(remove=self.healthy and written)

    def health(self) -> tuple[bool, str]:
        """Whether the last writes of every lane reached the database, and
        the error when one did not."""
        for lane in self.lanes:
            if not lane.healthy:
                return False, lane.last_error
        return True, ""

    @property
    def healthy(self) -> bool:
        return self.health()[0]

    @property
    def commits(self) -> int:
        """Commits of the tasks lane."""
        return self.tasks.commits

    def all_commits(self) -> int:
        return sum(lane.commits for lane in self.lanes)

    def room(self, timeout: float = 1.0) -> bool:
        """Wait while too many outcomes wait to be written (GroupCommit.room)."""
        return self.outcomes.room(timeout)

    def nudge(self) -> None:
        """Have the writers write what was queued without waking them, and
        the running marks now due (marks.py); a duty, at every tick."""
        self._hand_marks()
        for lane in self.lanes:
            lane.nudge()

    def _hand_marks(self, every: bool = False) -> None:
        """Queue the held running marks that are due (`every`: all) on the outcomes lane."""
        for mark in self.marks.take(every):
            self.outcomes.later(mark, wake=False)

    def between_batches(self, fn: Callable[[], Any]) -> Any:
        return self.tasks.between_batches(fn)

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

    # -- the hot path ----------------------------------------------------------

    def gathered(self) -> Gathering:
        """Within it, the inserts this thread makes are written together at
        its end (GroupCommit.gathered)."""
        return self.tasks.gathered()

    def insert(self, tasks: Sequence[NewTask], done: Done) -> None:
        """Insert `tasks` (once each: a replayed id is ignored); after the
        commit, `done` is called on the committing thread with the tasks
        inserted (as Ready), or with the error. Their texts are stored as
        storable.py has them."""
        limit = self.text_limit
        stored = [storable.task(t, limit) for t in tasks]
        if any(t.key is not None for t in tasks):
            done = _holders_to(tasks, stored, done)
        self.tasks.lead(Insert(stored, done), heavy=len(stored) >= HEAVY_PUSH)

    def insert_steps(self, tasks: Sequence[NewTask], links: Sequence[Link], done: Done) -> None:
        """Insert a chain's, group's or chord's tasks with their links, in one
        transaction (chains.py); after the commit, `done` gets the steps to
        run now (as Ready, which it dispatches) or the error."""
        limit = self.text_limit
        stored = [storable.task(t, limit) for t in tasks]
        writes = self.writes

        def write(cursor: Any, d: Dialect) -> list[Ready]:
            return chains.insert_steps(writes, cursor, d, stored, links)

        self.tasks.lead(Call(write, done), heavy=len(stored) >= HEAVY_PUSH)

    def settle_steps(self) -> None:
        """Settle, in the next batch, the waiting steps no outcome will
        release or fail (chains.settle; a duty)."""
        node = self.node

        def write(cursor: Any, d: Dialect) -> None:
            failed = chains.settle(cursor, d, node)
            if failed:
                logger.info(
                    "waiting steps failed or given to the sweep count=%s",
                    failed,
                    extra={"action": "steps_settled"},
                )

        self.outcomes.later(Call(write))

    def begin_epoch(self, timeout: float) -> int:
        """Begin this broker's life: bump its epoch in the database (its row
        exists: a heartbeat committed) and stamp its claims with it from now on."""

        def bump(cursor: Any, d: Dialect) -> int:
            cursor.execute(self.sql.begin_epoch, (self.node,))
            row = cursor.fetchone()
            if row is None:
                raise RuntimeError(f"no row of broker {self.node!r} to count its lives in")
            return int(row[0])

        self.epoch = int(self.call(bump).wait(timeout))
        return self.epoch

    def mark_running(self, task_id: uuid.UUID, attempt: int, started: float, epoch: int) -> None:
        """Show the task as running, if the claim of `epoch` still holds it,
        once it has run a moment (marks.py): a task that ends sooner is
        written once, by its outcome. Nothing waits for it, and it wakes no
        thread: waking the writer as the task starts would hold the start
        up. The file of starts (starts.py) has it at once."""
        self.starts.started(task_id, attempt, started)
        self.marks.hold(Mark(task_id, attempt, started, epoch))

    def record(self, outcome: Outcome, committed: Callable[[], None] | None = None) -> None:
        """Write an attempt's outcome in the next batch, its texts as
        storable.py has them; `committed` is called once it is. One the
        database refuses ends its task failed, saying why (Writes.write_apart).
        An outcome never overwrites a cancel: the attempt is recorded, the
        task stays cancelled."""
        self.starts.ended()
        self.marks.drop(outcome.task_id)
        row = storable.outcome(outcome, self.text_limit)
        self.outcomes.later(Record(row, committed=committed))

    def recheck(self) -> None:
        """Queue, once the tasks lane writes again, a look for the tasks of
        failed inserts and claims that the database did commit; those found
        go to this broker's queues (doubt.py). A duty."""
        doubts = self.writes.doubts
        if doubts.checking or not self.tasks.healthy or not doubts.due():
            return
        doubts.checking = True

        def check(cursor: Any, d: Dialect) -> Any:
            return doubts.check(cursor, d, self.epoch)

        def done(value: Any, error: BaseException | None) -> None:
            doubts.checking = False
            if error is None:
                doubts.settle(value)
                inserted = [r for doubt, found in value if not doubt.claim for r in found]
                if inserted:
                    received(inserted)
                claimed = [r for doubt, found in value if doubt.claim for r in found]
                if inserted or claimed:
                    self.route(inserted + claimed)

        self.tasks.later(Call(check, done))

    def route(self, ready: list[Ready]) -> None:
        """Hand tasks this broker took to its queues (as after an insert):
        for a write whose waiter stopped waiting before it committed."""
        self.writes.on_ready(ready)

    def progress(self, task_id: uuid.UUID, percent: float, note: str) -> None:
        """Record a running task's progress in the next batch, while this
        broker's claim holds it."""
        sql = self.sql.progress
        owner = stamp(self.node, self.epoch)

        def write(cursor: Any, d: Dialect) -> None:
            cursor.execute(sql, (percent, note, d.pk(task_id), *owner))

        self.outcomes.later(Call(write))

    def call(self, fn: Callable[[Any, Dialect], Any]) -> Waiter:
        """Run fn(cursor, dialect) inside the next batch's transaction."""
        return self.tasks.wait_for(Call(fn))

    def jobs(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, tuple[str, Job]]:
        """Status and job of each task in `ids` that still exists."""
        d = self.dialect
        keys = [d.pk(i) for i in ids]
        if not keys:
            return {}
        cursor = raw_cursor()
        try:
            cursor.execute(self.sql.jobs(len(keys)), keys)
            return {
                d.read_uuid(i): (s, Job(bytes(p), n, a, m, t, d.read_time(e), r))
                for i, s, p, n, a, m, t, e, r in cursor.fetchall()
            }
        finally:
            cursor.close()

    # -- verbs ---------------------------------------------------------------

    def release(self, ids: list[uuid.UUID]) -> None:
        """Give these queued tasks up, in the next batch: spooled and owned by
        no broker, for a broker that serves their queue to adopt."""
        d = self.dialect
        keys = [d.pk(i) for i in ids]
        sql = self.sql.release(len(keys))
        owner = stamp(self.node, self.epoch)

        def write(cursor: Any, d: Dialect) -> None:
            cursor.execute(sql, (*owner, *keys))

        self.outcomes.later(Call(write))

    def claim_unowned(self, asks: Sequence[Ask], done: Done) -> None:
        """Claim unowned tasks due now, in the next batch of the outcomes
        lane: for each ask, up to its limit of its queues' tasks, highest
        priority first, then oldest (sql.claim_unowned). `done` gets (the
        tasks claimed, as Ready, in that order; how many each ask took), or
        the error, on the writer's thread: the caller (a worker, the duties)
        never waits on the database for it."""
        owner = stamp(self.node, self.epoch)
        doubts = self.writes.doubts

        def claim(cursor: Any, d: Dialect) -> tuple[list[Ready], list[int]]:
            now = d.time(time.time())
            number = doubts.claim()
            found: list[Ready] = []
            took: list[int] = []
            for ask in asks:
                cursor.execute(ask.sql, (*owner, number, False, now, *ask.queues, ask.limit))
                rows = cursor.fetchall()
                took.append(len(rows))
                found += [Ready(d.read_uuid(r[0]), r[1], r[2], d.read_time(r[3])) for r in rows]
            found.sort(key=lambda r: (-r.priority, r.id.bytes))  # ids are time-ordered
            return found, took

        self.outcomes.later(Call(claim, done))

    def cancel(self, task_id: uuid.UUID, dead_after: float, running: bool = False) -> Waiter:
        """Cancel a queued task that no other live broker owns: this broker's,
        nobody's, or one whose broker has not beaten within `dead_after`
        seconds. `running`: cancel instead a task this broker owns, queued or
        running. The Waiter's value is (queue, owning broker) of the task
        cancelled, or None when nothing was."""
        sql, node = self.sql, self.node

        def mark(cursor: Any, d: Dialect) -> tuple[str, str] | None:
            now = time.time()
            if running:
                cursor.execute(sql.cancel_running, (d.time(now), d.pk(task_id), node))
            else:
                cursor.execute(sql.cancel, (d.time(now), d.pk(task_id), node, dead_after))
            row = cursor.fetchone()
            return None if row is None else (str(row[0]), str(row[1]))

        return self.call(mark)

    def counts(self) -> dict[str, dict[str, int]]:
        """Tasks per status and queue, as the database has them."""
        from django.db.models import Count

        from ...models import Task

        counts: dict[str, dict[str, int]] = {}
        rows = Task.objects.order_by().values("status", "queue").annotate(n=Count("id"))
        for row in rows:
            counts.setdefault(row["status"], {})[row["queue"]] = row["n"]
        return counts

    # -- brokers -------------------------------------------------------------

    def still_mine(self, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """The tasks of `ids` the database shows unfinished and held by this
        broker's claim (its name and epoch)."""
        from ...models import Status, Task

        mine: set[uuid.UUID] = set()
        for at in range(0, len(ids), MINE_PAGE):
            rows = Task.objects.filter(
                pk__in=ids[at : at + MINE_PAGE],
                broker=self.node,
                epoch=self.epoch,
                status__in=[Status.QUEUED, Status.RUNNING],
            ).values_list("id", flat=True)
            mine.update(rows)
        return mine

    def owned(self, page: int = OWNED_PAGE) -> Iterator[list[Ready]]:
        """Every unfinished task this broker owns, oldest first, in pages.

        One query: its snapshot is taken when the generator is first advanced,
        so tasks inserted or adopted after that are not in it (they reach the
        queues on their own), and the broker can serve while the pages load.
        On PostgreSQL the rows stay on the server (a cursor WITH HOLD) until
        their page is fetched, rather than all arriving in the broker at once."""
        d = self.dialect
        if d.sqlite:
            cursor = raw_cursor()
        else:
            import psycopg

            connection.ensure_connection()
            cursor = psycopg.ServerCursor(connection.connection, "leek_owned", withhold=True)
        try:
            cursor.execute(self.sql.owned, (self.node,))
            yield []  # the snapshot is taken: the caller may start serving
            while rows := cursor.fetchmany(page):
                yield [Ready(d.read_uuid(r[0]), r[1], r[2], d.read_time(r[3])) for r in rows]
        finally:
            cursor.close()


def _holders_to(tasks: Sequence[NewTask], stored: Sequence[NewTask], done: Done) -> Done:
    """`done`, once the holders the insert found for `stored` are copied to
    `tasks`, the caller's (storable.task may have copied a task)."""

    def finished(value: Any, error: BaseException | None) -> None:
        for mine, written in zip(tasks, stored, strict=True):
            mine.holder = written.holder
        done(value, error)

    return finished
