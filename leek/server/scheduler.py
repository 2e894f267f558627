"""Delayed tasks, and the broker's periodic duties: sweeps, heartbeat, watchdog.

Delayed tasks wait in a heap in memory ordered by their time; one thread sleeps
until the earliest is due (or a new, earlier one arrives), so nothing polls the
database. The duties run on a second thread every half second:

* the workers' watchdog (time limits, dead threads);
* every SWEEP_INTERVAL, adopt spooled tasks (written by clients while no broker
  answered) and the unfinished tasks of brokers that stopped or went silent;
* every HEARTBEAT_INTERVAL, the broker's BrokerNode row.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from .store import Dialect, Ready, Store

logger = logging.getLogger(__name__)


class Delayed:
    """Tasks whose run_after is in the future, released to `release` when due."""

    def __init__(self, release: Callable[[list[Ready]], None]) -> None:
        self.release = release
        self._heap: list[tuple[float, int, Ready]] = []
        self._held: dict[uuid.UUID, Ready] = {}
        self._seq = 0
        self._wake = threading.Condition()
        self._stopped = False
        self.waiting: Counter[str] = Counter()
        self._thread = threading.Thread(target=self._loop, name="leek-delayed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()

    def add(self, items: list[Ready]) -> None:
        with self._wake:
            for item in items:
                self._seq += 1
                heapq.heappush(self._heap, (item.run_after or 0.0, self._seq, item))
                self._held[item.id] = item
                self.waiting[item.queue] += 1
            self._wake.notify()

    def cancel(self, task_id: uuid.UUID) -> bool:
        """Drop a held task; False when it is not held here."""
        with self._wake:
            item = self._held.pop(task_id, None)
            if item is None:
                return False
            self.waiting[item.queue] -= 1
            return True

    def counts(self) -> dict[str, int]:
        with self._wake:
            return {queue: n for queue, n in self.waiting.items() if n > 0}

    def _loop(self) -> None:
        while True:
            due: list[Ready] = []
            with self._wake:
                if self._stopped:
                    return
                now = time.time()
                while self._heap and self._heap[0][0] <= now:
                    _, _, item = heapq.heappop(self._heap)
                    if self._held.pop(item.id, None) is item:
                        self.waiting[item.queue] -= 1
                        due.append(item)
                if not due:
                    wait = self._heap[0][0] - now if self._heap else None
                    self._wake.wait(wait)
                    continue
            self.release(due)


RETURNING = "RETURNING id, priority, queue, run_after, status, name, attempts, started_at"


def claim_spooled(d: Dialect) -> str:
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
        "UPDATE leek_task SET broker = %s, spooled = %s "  # noqa: S608 - constants only
        f"WHERE {spooled} AND status || '' = 'queued' {RETURNING}"
    )


#: Seconds after which the tasks of a broker already adopted from are looked
#: for again though its row has not changed (a broker that was paused past
#: HEARTBEAT_TIMEOUT may have committed a task on waking, before it died for good).
LOOK_AGAIN_AFTER = 300.0


class Adopter:
    """Claims spooled tasks and the unfinished tasks of stopped or silent brokers.

    Each row is claimed with a conditional update, so when several brokers sweep
    at once every task goes to exactly one of them. A gone broker's tasks are
    found only by walking the unfinished tasks (nothing indexes `broker`), so
    that walk runs once per gone broker: again when its row changes (it came
    back and went again) or LOOK_AGAIN_AFTER later, not at every sweep while
    its row stays in the table.
    """

    def __init__(self, store: Store, dead_after: float) -> None:
        self.store = store
        self.dead_after = dead_after
        self._taken: dict[str, Any] = {}  # gone broker -> its heartbeat when adopted from
        self._looked_at = time.monotonic()

    def __call__(self) -> list[Ready]:
        again = time.monotonic() - self._looked_at >= LOOK_AGAIN_AFTER
        found: list[Ready]
        # Once committed, the tasks found, and those of every broker in _taken, are ours.
        found, self._taken = self.store.call(lambda c, d: self._claim(c, d, again)).wait(60)
        if again:
            self._looked_at = time.monotonic()
        return found

    def _claim(self, cursor: Any, d: Dialect, again: bool) -> tuple[list[Ready], dict[str, Any]]:
        node = self.store.node
        silent = d.time(time.time() - self.dead_after)
        cursor.execute(
            d.sql(
                "SELECT name, heartbeat_at FROM leek_brokernode WHERE name <> %s "
                "AND (stopped OR heartbeat_at < %s)"
            ),
            (node, silent),
        )
        gone = dict(cursor.fetchall())
        cursor.execute(claim_spooled(d), (node, False))
        rows = cursor.fetchall()
        walk = [name for name, beat in gone.items() if again or self._taken.get(name) != beat]
        if walk:
            marks = ", ".join([d.ph] * len(walk))
            cursor.execute(
                d.sql(
                    "UPDATE leek_task SET broker = %s "  # noqa: S608 - placeholders only
                    f"WHERE broker IN ({marks}) AND status IN ('queued', 'running') {RETURNING}"
                ),
                (node, *walk),
            )
            rows += cursor.fetchall()
        running = [r for r in rows if r[4] == "running"]
        if running:
            cursor.executemany(
                d.sql("UPDATE leek_task SET status = 'queued' WHERE id = %s"),
                [(r[0],) for r in running],
            )
            _interrupted(
                cursor,
                d,
                [(r[0], r[5], r[6], r[7]) for r in running],
                "interrupted: its broker stopped",
            )
        return [Ready(d.read_uuid(r[0]), r[1], r[2], d.read_time(r[3])) for r in rows], gone


def interrupt_running(store: Store, reason: str) -> int:
    """Requeue the tasks this broker's last life left running, each with a
    FailedTask row saying why; the attempt counts."""

    def requeue(cursor: Any, d: Dialect) -> int:
        cursor.execute(
            d.sql(
                "UPDATE leek_task SET status = 'queued' WHERE broker = %s AND status = 'running' "
                "RETURNING id, name, attempts, started_at"
            ),
            (store.node,),
        )
        rows = cursor.fetchall()
        _interrupted(cursor, d, rows, reason)
        return len(rows)

    return int(store.call(requeue).wait(60))


def _interrupted(cursor: Any, d: Dialect, rows: list[Any], reason: str) -> None:
    """A FailedTask row for each (id, name, attempts, started_at) cut short."""
    now = d.time(time.time())
    cursor.executemany(
        d.sql(
            "INSERT INTO leek_failedtask (task_id, name, attempt, started_at, failed_at, "
            "exc_type, exc_message, traceback, final, requeued_at, stdout, stderr) "
            "VALUES (%s, %s, %s, %s, %s, 'leek.exceptions.Interrupted', %s, '', %s, NULL, '', '')"
        ),
        [(r[0], r[1], max(int(r[2]), 1), r[3], now, reason, False) for r in rows],
    )


class Duties:
    """The broker's periodic work, on a thread of its own."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self._jobs: list[tuple[float, Callable[[], object], list[float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="leek-duties", daemon=True)

    def every(self, seconds: float, job: Callable[[], object]) -> None:
        self._jobs.append((seconds, job, [0.0]))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            for seconds, job, last in self._jobs:
                if now - last[0] < seconds:
                    continue
                last[0] = now
                try:
                    job()
                except Exception:
                    logger.exception(
                        "broker duty failed duty=%s",
                        getattr(job, "__name__", job),
                        extra={"action": "duty_failed"},
                    )
