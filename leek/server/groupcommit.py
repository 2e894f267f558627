"""Group commit: many threads' writes in one transaction, with no hand-off on the hot path.

An op someone waits for (a client's insert) carries a `done` callback, run by
whichever thread commits it: for an insert, the callback sends the client its
reply. The thread that queues such an op writes every queued op itself in one
transaction when no other thread is writing, so one client pushing alone pays
one commit and no thread switch. When another thread is writing, the op rides
in that thread's next batch and the queuing thread goes back to its client
socket: nobody sleeps on the op and nobody has to be woken for it. A push
of many tasks is the exception (`lead`'s `heavy`): its write takes long
enough that the writer thread takes it, and the queuing thread goes back to
its sockets, for a hand-off that costs a hundredth of the write. A call
waited for with a timeout (a heartbeat, a claim, a cancel: `wait_for`) goes to
the writer thread, so its caller waits no longer than it chose. Ops nobody
waits for (running marks, outcomes) go to the writer thread, which lets them
linger a moment so they share the commit of the next insert, and which retries
them with a backoff while the database is away.

The life of an op:

    =========  ===============================  ==================================
    state      where it is                      how it leaves
    =========  ===============================  ==================================
    queued     ``_pending``, in order           the next batch takes every op
    written    a batch, under ``_lock``         commit, or an error (below)
    committed  done(result, None) is called     (end)
    retried    back at the head of ``_pending``  a transient error, for an op
                                                 nobody waits for (OUTCOME_TRIES)
    apart      the batch again, each op in a    an op's own error: the others
               savepoint of its own             commit without it
    refused    done(None, error) is called;     its own error again, or a
               nobody waits: logged, dropped    transient one when someone waits
    =========  ===============================  ==================================

A transient error (dberrors.py) is the database's: the broker reports itself
unhealthy until a write succeeds again. An op's own error leaves it healthy.

Invariant: every op in ``_pending`` is written by a later batch, because each
thread that queues an op then either writes the queue itself (it took
``_lock``), or finds ``_lock`` held by a writer that checks ``_pending`` again
after it lets go, or wakes the writer thread. ``done`` callbacks run after
``_lock`` is released, so a reply never holds up the next batch.

Synchronisation: ``_lock`` is held while a batch is written; ``_wake`` is the
writer thread's sleep (flags ``_idle``, ``_stopping`` and ``_retry`` are read
and set under it); ``_room`` is where workers wait while BACKLOG_LIMIT ops are
unwritten (flag ``_crowded`` under it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from ..threads import Named
from .dberrors import DATABASE_ERRORS as DATABASE_ERRORS
from .dberrors import locked, transient
from .metrics import OFF, Metrics
from .ops import Call, Done, Op, Waiter
from .writing import WritingConnection

logger = logging.getLogger(__name__)

#: Seconds the writer thread waits for an insert to share the commit of ops
#: nobody waits for: twice the recent commit time, within these bounds.
LINGER_MIN = 0.002
LINGER_MAX = 0.05
#: Such ops queued past which the writer thread writes them at once.
GATHER = 32
#: Ops waiting to be written past which workers wait before their next task.
BACKLOG_LIMIT = 10_000
#: Batches a client's thread writes, its own and what queued meanwhile, before
#: it leaves the rest to the writer thread and goes back to its own client.
LEAD_ROUNDS = 3
#: Seconds the writer thread waits before it tries a failed batch again: the
#: first wait, doubled after each failure up to the last.
RETRY_DELAY_FIRST = 0.05
RETRY_DELAY_MAX = 5.0
#: Batches an op nobody waits for (an outcome, a running mark) is tried in
#: while the database is away, before it is dropped.
OUTCOME_TRIES = 1000
#: Failed tries after which a stopping writer gives up on what it could not write.
TRIES_AT_STOP = 5
#: Seconds between the writer thread's tries of a batch a lock held elsewhere
#: holds back (writing.LOCK_WAIT).
LOCKED_RETRY = 0.005


class Batches(Protocol):
    """What a GroupCommit writes with: the store's statements."""

    def open(self, cursor: Any, db: Any) -> Any:
        """Set up a new writing connection; the cursor that binds parameters."""

    def write(self, cursor: Any, bound: Any, ops: list[Op]) -> list[Any]:
        """Write `ops` in one transaction; one result per op."""

    def write_apart(
        self, cursor: Any, bound: Any, ops: list[Op]
    ) -> list[tuple[Any, BaseException | None]]:
        """Write `ops` in one transaction, each in a savepoint of its own;
        (result, None) per op written, (None, error) per op refused for a
        permanent error. A transient error is raised."""

    def committed(self, ops: list[Op], results: list[Any]) -> None:
        """Called after each commit, on the thread that wrote it."""

    def failed(self, ops: list[Op]) -> None:
        """Called, on the thread that wrote them, when the database failed the
        write of `ops` for a reason not theirs: it may have committed them."""


class GroupCommit:
    """One writing connection, the queue of ops in front of it and its writer thread."""

    def __init__(self, name: str, batches: Batches) -> None:
        self.batches = batches
        self.name = name
        self.metrics: Metrics = OFF
        self.healthy = True
        self.last_error = ""
        self.commits = 0
        self.commit_time = 0.0  # seconds, a moving average
        self._pending: deque[Op] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Condition()
        self._room = threading.Condition()
        self._crowded = False
        self._idle = False
        self._stopping = False
        self._retry = False
        self._finished: list[tuple[Done, Any, BaseException | None]] = []  # under _lock
        self._gatherer: int | None = None  # the thread whose leads wait (`gathered`)
        self._gathering = Gathering(self)
        self._locked_since: float | None = None  # while the write lock is another's
        self._heavy = False  # a heavy op was led: the writer thread writes the queue
        self._writing = WritingConnection(batches.open)
        self._thread = Named(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Write what is waiting, then end the writer thread, within `timeout`
        seconds; whether it ended. One still waiting on the database (its
        server stopped, a lock never granted) is left to the process's exit,
        said in a warning: what it held is not acknowledged, and the tasks it
        would have finished run again at the next start."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            return True
        logger.warning(
            "the database did not take the last writes within the stop writer=%s queued=%s: "
            "the tasks they finish run again at the next start",
            self._thread.name,
            len(self._pending),
            extra={"action": "writes_left_at_stop"},
        )
        return False

    @property
    def backlog(self) -> int:
        """Ops queued and not yet taken by a batch."""
        return len(self._pending)

    # -- queueing ------------------------------------------------------------

    def lead(self, op: Op, heavy: bool = False) -> None:
        """Queue an op someone waits for, and write the queue now if nobody is
        (at the end of the gathering, on the thread that gathers). A `heavy`
        op (a push of many tasks, which takes milliseconds to seconds to
        write) goes to the writer thread with the ops queued around it, so the
        thread that queued it goes back to its connections at once: the event
        loop keeps reading pushes and answering pings meanwhile."""
        self._pending.append(op)
        if heavy:
            self._heavy = True
        if self._gatherer != threading.get_ident():
            self._write_now()

    def _write_now(self) -> None:
        """Write the queue on this thread, unless a heavy op is queued or the
        writer thread is waiting out a lock: then the writer thread takes what
        is queued (with what it holds)."""
        if self._heavy or self._locked_since is not None:
            self._heavy = False
            self.nudge()
        else:
            self._flush_all(blocking=False)

    def gathered(self) -> Gathering:
        """Within it, what the thread in it `lead`s waits, and is written at its
        end in one batch with whatever else is queued: the event loop's round
        of pushes from many connections (loop.py). One thread at a time."""
        return self._gathering

    def wait_for(self, op: Call) -> Waiter:
        """Queue a call for the writer thread, which writes it at once; the
        Waiter completes when it is committed. The caller never writes it
        itself: a thread that led the write into a database holding its lock
        would wait out the database's own timeout, not its own (a heartbeat,
        a periodic claim, a cancel waits at most WRITE_WAIT)."""
        waiter = Waiter()
        op.done = waiter.resolve
        self.later(op)
        return waiter

    def later(self, op: Op, wake: bool = True) -> None:
        """Queue an op nobody waits for; `wake` False leaves it for the next
        commit or the next `nudge`, without waking the writer thread now."""
        self._pending.append(op)
        if wake:
            self.nudge()

    def nudge(self) -> None:
        """Wake the writer thread for ops queued without waking it."""
        if self._pending and self._idle:
            with self._wake:
                self._wake.notify()

    def between_batches(self, fn: Callable[[], Any]) -> Any:
        """Run fn() while no batch is being written; ops queued meanwhile
        wait and go in the next batch, written by the writer thread."""
        with self._lock:
            result = fn()
        if self._pending:
            with self._wake:
                self._wake.notify()
        return result

    def room(self, timeout: float = 1.0) -> bool:
        """Wait until fewer than BACKLOG_LIMIT ops wait to be written; False at
        the timeout. Workers call it before their next task, so they run no
        faster than their outcomes can be written and the queue of unwritten
        outcomes stays bounded in memory (while the database is away too)."""
        if len(self._pending) < BACKLOG_LIMIT:
            return True
        deadline = time.monotonic() + timeout
        with self._room:
            while True:
                # Set before each check, so that a writer which shortens the
                # queue after it sees the flag, and wakes this worker.
                self._crowded = True
                if len(self._pending) < BACKLOG_LIMIT // 2:
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping:
                    return False
                self._room.wait(left)

    # -- writing -------------------------------------------------------------

    def _flush_all(self, blocking: bool) -> bool:
        """Write queued ops; True when some failed and wait to be tried again.

        Not blocking (a client's thread): if nobody else is writing, write up
        to LEAD_ROUNDS batches while ops someone waits for keep coming, then
        leave the rest to the writer thread, so this thread goes back to its
        own client soon. Blocking (the writer thread): write until nothing is
        left."""
        failed = False
        rounds = 0
        while self._pending:
            if not self._lock.acquire(blocking=blocking):
                return failed
            try:
                failed = self._flush()
            finally:
                finished, self._finished = self._finished, []
                self._lock.release()
            for done, value, error in finished:  # replies go out with the lock free
                _finish(done, value, error)
            if self._crowded and len(self._pending) < BACKLOG_LIMIT // 2:
                with self._room:
                    self._crowded = False
                    self._room.notify_all()
            if self._locked_since is not None:  # held back: its ops wait at the head of the queue
                if not blocking:
                    with self._wake:
                        self._wake.notify()
                    return False
                time.sleep(LOCKED_RETRY)
                continue
            if failed:
                with self._wake:
                    self._retry = True
                    self._wake.notify()
                return True
            rounds += 1
            # What came meanwhile, if it waits for no client (running marks
            # and outcomes), is left to the writer thread or the next commit:
            # this thread goes back to its client, and the task it just
            # queued starts without a commit competing for the CPU. The
            # writer thread lets them gather first (`_linger`) unless GATHER
            # are queued, where writing them at once would commit the two or
            # three that came during its last commit, commit after commit.
            if (not blocking or len(self._pending) < GATHER) and not self._awaited():
                return False
            if not blocking and rounds >= LEAD_ROUNDS:
                if self._pending:  # queued while we wrote, by threads that could not lead
                    with self._wake:
                        self._wake.notify()
                return False
        return failed

    def _flush(self) -> bool:
        """Write everything queued as one batch (under _lock); True when some must be retried."""
        pending = self._pending
        batch: list[Op] = []
        while pending:
            batch.append(pending.popleft())
        if not batch:
            return False
        retry = self._write(batch)
        if retry:
            pending.extendleft(reversed(retry))
        return bool(retry)

    def _loop(self) -> None:
        delay = RETRY_DELAY_FIRST
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
                delay = min(delay * 2, RETRY_DELAY_MAX)
            elif not stopping and not self._awaited():
                # Let the next insert carry these; while inserts keep coming,
                # every one of their commits does, and this thread writes nothing.
                # (Where no insert comes, as on PostgreSQL's lane of outcomes,
                # more gather meanwhile, and one commit writes them all.)
                if self._linger():
                    continue
            if self._flush_all(blocking=True):
                if stopping and self._pending and self._pending[0].tries > TRIES_AT_STOP:
                    logger.error(
                        "writer stopping with unwritten outcomes count=%s",
                        len(self._pending),
                        extra={"action": "writer_gave_up"},
                    )
                    break
                with self._wake:
                    self._retry = True
            else:
                delay = RETRY_DELAY_FIRST
        self._close()

    def _awaited(self) -> bool:
        """Whether someone waits for an op queued (it has a `done`). On a
        copy, made whole while other threads queue: iterating the deque
        itself raises when one appends meanwhile."""
        return any(op.done for op in list(self._pending))

    def _linger(self) -> bool:
        """Let ops nobody waits for gather before the writer thread writes
        them, for twice the recent commit time, unless GATHER are queued
        already; True when a commit on another thread carried them meanwhile."""
        if len(self._pending) >= GATHER:
            return False
        before = self.commits
        time.sleep(min(max(2 * self.commit_time, LINGER_MIN), LINGER_MAX))
        return self.commits != before

    def _close(self) -> None:
        """Close the writing connection; the next batch opens it again."""
        self._writing.close()

    def _write(self, ops: list[Op]) -> list[Op]:
        """Write `ops` in one transaction; return the ops to try again."""
        started = time.perf_counter()
        try:
            cursor, bound = self._writing.cursors()
            results = self.batches.write(cursor, bound, ops)
        except Exception as exc:
            retry = self._database_failed(ops, exc)
            return self._write_apart(ops, started) if retry is None else retry
        self._committed(ops, results, started)
        return []

    def _database_failed(self, ops: list[Op], exc: BaseException) -> list[Op] | None:
        """The ops to try again when the database failed them (a lock held
        elsewhere, or a transient error); None when the error is an op's own."""
        if self._writing.lock_timeout and locked(exc):
            return self._held_back(ops, exc)
        if transient(exc):
            return self._after_failure(ops, exc)
        return None

    def _held_back(self, ops: list[Op], exc: BaseException) -> list[Op]:
        """A lock another connection holds kept the ops out: they go back to
        the head of the queue, for the writer thread to try again, until the
        database's timeout has passed since a lock first held them back (on
        SQLite); then they fail as any write the database failed does."""
        now = time.monotonic()
        if self._locked_since is None:
            self._locked_since = now
        elif now - self._locked_since >= self._writing.lock_timeout:
            self._locked_since = None
            return self._after_failure(ops, exc)
        return ops

    def _write_apart(self, ops: list[Op], started: float) -> list[Op]:
        """Write a batch that held an op with an error of its own again, each
        op apart; the ops to try again."""
        try:
            cursor, bound = self._writing.cursors()
            written = self.batches.write_apart(cursor, bound, ops)
        except Exception as exc:
            retry = self._database_failed(ops, exc)
            if retry is not None:
                return retry
            if len(ops) > 1:  # refused at the commit: each op in a transaction of its own
                return [op for alone in ops for op in self._write_apart([alone], started)]
            self._refused(ops[0], exc)
            return []
        kept: list[Op] = []
        results: list[Any] = []
        for op, (result, error) in zip(ops, written, strict=True):
            if error is None:
                kept.append(op)
                results.append(result)
            else:
                self._refused(op, error)
        self._committed(kept, results, started)
        return []

    def _committed(self, ops: list[Op], results: list[Any], started: float) -> None:
        self.healthy, self.last_error = True, ""
        self._locked_since = None
        self.commits += 1
        seconds = time.perf_counter() - started
        self.commit_time = 0.8 * self.commit_time + 0.2 * seconds
        self.metrics.committed(self.name, len(ops), seconds)
        try:
            self.batches.committed(ops, results)
        except Exception:  # committed all the same: the clients get their replies
            logger.exception("handling a commit failed", extra={"action": "committed_failed"})
        self._finished.extend(
            (op.done, result, None) for op, result in zip(ops, results, strict=True) if op.done
        )

    def _refused(self, op: Op, exc: BaseException) -> None:
        """An op that fails for a reason of its own: writing it again would fail
        again, so whoever waits gets the error and an op nobody waits for is
        dropped, loudly."""
        logger.error(
            "write refused kind=%s error=%s: %s",
            op.kind,
            type(exc).__name__,
            exc,
            exc_info=exc,
            extra={"action": "write_refused"},
        )
        if op.done is not None:
            self._finished.append((op.done, None, exc))

    def _after_failure(self, ops: list[Op], exc: BaseException) -> list[Op]:
        """The database failed: report it, fail what a client waits for, keep
        the others to write later."""
        message = f"{type(exc).__name__}: {exc}".strip()
        if self.healthy or message != self.last_error:
            logger.error(
                "database write failed writer=%s error=%s",
                self.name,
                message,
                extra={"action": "db_write_failed"},
            )
        self.healthy, self.last_error = False, message
        try:
            self.batches.failed(ops)
        except Exception:
            logger.exception("handling a failed write failed", extra={"action": "failed_failed"})
        try:
            self._close()
        except Exception:
            logger.debug("closing the broken connection failed", exc_info=True)
        retry: list[Op] = []
        for op in ops:
            op.tries += 1
            if op.done is not None:
                self._finished.append((op.done, None, exc))
            elif op.tries < OUTCOME_TRIES:
                retry.append(op)
            else:
                logger.error(
                    "write dropped after %s tries kind=%s error=%s",
                    op.tries,
                    op.kind,
                    message,
                    extra={"action": "write_dropped"},
                )
        return retry


class Gathering:
    """GroupCommit.gathered: entered and left once per round of the event
    loop, so it is a plain object, made once. `wrote`: whether the last round
    left anything to write."""

    __slots__ = ("_commit", "wrote")

    def __init__(self, commit: GroupCommit) -> None:
        self._commit = commit
        self.wrote = False

    def __enter__(self) -> None:
        self._commit._gatherer = threading.get_ident()

    def __exit__(self, *exc: object) -> None:
        commit = self._commit
        commit._gatherer = None
        self.wrote = bool(commit._pending)
        if self.wrote:
            commit._write_now()


def _finish(done: Done, value: Any, error: BaseException | None) -> None:
    """Run a done callback; one that fails must not stop the batch's others."""
    try:
        done(value, error)
    except Exception:
        logger.exception("a committed write's callback failed", extra={"action": "done_failed"})
