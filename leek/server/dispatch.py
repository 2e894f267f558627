"""The in-memory ready queue: task ids by priority, then first in, first out.

It holds ids, priorities and queue names; payloads only for the newest tasks
(up to MEMORY_PAYLOADS), so a million waiting tasks stay small: an entry of a
lane is the id's 16 bytes alone for a task of the default queue (most of
them), or (id, queue) for the others. Workers load
the other payloads from the database in pages as they take tasks.

The dispatcher also decides whether a task can still be cancelled, as it is
the one that hands tasks out: under its lock a task is either taken (a worker
has it, from `take` until `done`, which the pool calls once the attempt's
outcome is committed) or held by a cancel in flight (`hold`), never both. A
worker that meets a held task sets it aside; the cancel's `settle` then drops
it for good, or puts it back at the front of its lane.
"""

from __future__ import annotations

import bisect
import threading
import uuid
from collections import Counter, deque
from collections.abc import Callable
from itertools import islice

from .rows import Job, Ready

#: Tasks after the one taken whose payloads a worker loads with its own, when
#: they are not in memory or being loaded by another worker (see `take`).
AHEAD = 99
#: Tasks after the one taken looked at for those.
AHEAD_SCAN = 2 * (AHEAD + 1)
#: Tasks at the front of a lane whose payloads a worker may keep loaded: the
#: tasks a take looks at, and as many again.
KEEP_WINDOW = 2 * AHEAD_SCAN
DEFAULT_QUEUE = "default"
#: Tasks of each priority looked at for the oldest waiting task of each queue.
HEAD_SCAN = 1000
#: Seconds a take waits before it looks at a closed gate again.
GATE_POLL = 0.1

Entry = bytes | tuple[bytes, str]


def _key(entry: Entry) -> bytes:
    return entry if isinstance(entry, bytes) else entry[0]


class Dispatcher:
    """Ready tasks for the worker threads, highest priority first."""

    def __init__(self, memory_payloads: int) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._lanes: dict[int, deque[Entry]] = {}
        self._order: list[int] = []  # priorities with a lane, ascending
        # Payloads held in memory, each with its task's id as the UUID it came
        # as: a worker taking a held task builds no UUID from the key.
        self._jobs: dict[bytes, tuple[uuid.UUID, Job]] = {}
        self._memory_payloads = memory_payloads
        self._cancelled: set[bytes] = set()  # cancelled: skipped when met
        # Tasks whose payloads a worker is loading (named in a take's `ahead`,
        # until its `keep`): the next take names the page after them instead.
        self._loading: set[bytes] = set()
        self._taken: dict[bytes, int] = {}  # attempts taken whose outcome is not committed
        self._holds: dict[bytes, int] = {}  # cancels whose database write is in flight
        self._aside: dict[bytes, tuple[int, Entry]] = {}  # met while held
        # Tasks whose cancel failed and may have committed: a take reads
        # their status, with their payload, from the database (`settle`).
        self._doubted: set[bytes] = set()
        self.waiting: Counter[str] = Counter()
        self._closed = False
        # Paused queues, and the entries of theirs a take passed over, in the
        # order it met them, with their priorities (see `pause`).
        self._paused: frozenset[str] = frozenset()
        self._parked: dict[str, list[tuple[int, Entry]]] = {}
        #: While this returns False no task is handed out (the broker's lease, lease.py).
        self.gate: Callable[[], bool] | None = None
        #: Called after each take, off the lock: the lane may have room for
        #: tasks waiting in the database (share.py).
        self.taken: Callable[[], None] | None = None

    def __len__(self) -> int:
        return sum(self.waiting.values())

    def push(self, items: list[Ready]) -> None:
        with self._lock:
            for item in items:
                key = item.id.bytes
                lane = self._lanes.get(item.priority)
                if lane is None:
                    lane = self._lanes[item.priority] = deque()
                    bisect.insort(self._order, item.priority)
                lane.append(key if item.queue == DEFAULT_QUEUE else (key, item.queue))
                self.waiting[item.queue] += 1
                if item.job is not None and len(self._jobs) < self._memory_payloads:
                    self._jobs[key] = (item.id, item.job)
            self._ready.notify(len(items))

    def take(self, timeout: float | None = None) -> tuple[Ready, list[uuid.UUID]] | None:
        """The next task, and the ids after it whose payloads are neither in
        memory nor being loaded by another worker (so the caller can load a
        page of them at once, then hand them to `keep`); None when closed or idle."""
        found = self._take(timeout)
        if found is not None and self.taken is not None:
            self.taken()
        return found

    def ready(self) -> int:
        """Tasks waiting here that may start: those of paused queues left out."""
        with self._lock:
            paused = self._paused
            return sum(n for queue, n in self.waiting.items() if queue not in paused)

    def _take(self, timeout: float | None) -> tuple[Ready, list[uuid.UUID]] | None:
        with self._lock:
            while True:
                if self._closed:
                    return None
                if self.gate is not None and not self.gate():
                    self._ready.wait(GATE_POLL if timeout is None else min(timeout, GATE_POLL))
                    return None
                while self._order:
                    priority = self._order[-1]
                    lane = self._lanes[priority]
                    if not lane:
                        del self._lanes[priority]
                        self._order.pop()
                        continue
                    entry = lane.popleft()
                    if isinstance(entry, bytes):
                        key, queue = entry, DEFAULT_QUEUE
                    else:
                        key, queue = entry
                    if key in self._cancelled:
                        self._cancelled.discard(key)
                        continue
                    if key in self._holds:
                        self._aside[key] = (priority, entry)
                        continue
                    if queue in self._paused:
                        self._parked.setdefault(queue, []).append((priority, entry))
                        continue
                    self.waiting[queue] -= 1
                    self._taken[key] = self._taken.get(key, 0) + 1
                    held = self._jobs.pop(key, None)
                    if self._doubted and key in self._doubted:
                        self._doubted.discard(key)
                        held = None
                    if held is not None:
                        return Ready(held[0], priority, queue, None, held[1]), []
                    jobs, loading = self._jobs, self._loading
                    keys = [
                        k
                        for k in map(_key, islice(lane, AHEAD_SCAN))
                        if k not in jobs and k not in loading
                    ][:AHEAD]
                    loading.update(keys)
                    ahead = [uuid.UUID(bytes=k) for k in keys]
                    return Ready(uuid.UUID(bytes=key), priority, queue, None, None), ahead
                if not self._ready.wait(timeout):
                    return None

    def keep(self, jobs: dict[uuid.UUID, Job], ahead: list[uuid.UUID]) -> None:
        """Jobs loaded from the database ahead of their turn, for the `ahead`
        a take named (whose loading is over, whether or not it found them).

        Only for tasks still waiting near the front of their lane: another
        worker may have taken some of them while these loaded, and a job kept
        for a task already taken would stay in memory for good."""
        with self._lock:
            self._loading.difference_update(task_id.bytes for task_id in ahead)
            near = {_key(e) for lane in self._lanes.values() for e in islice(lane, KEEP_WINDOW)}
            for task_id, job in jobs.items():
                key = task_id.bytes
                if key in near and len(self._jobs) < self._memory_payloads:
                    self._jobs[key] = (task_id, job)

    def held(self) -> int:
        """Payloads held in memory."""
        with self._lock:
            return len(self._jobs)

    def heads(self, scan: int = HEAD_SCAN) -> dict[str, bytes]:
        """The id (as bytes) of the oldest task waiting in each queue, looking
        at the first `scan` tasks of each priority only."""
        found: dict[str, bytes] = {}
        with self._lock:
            queues = sum(1 for n in self.waiting.values() if n > 0)
            for lane in self._lanes.values():
                seen: set[str] = set()
                for entry in islice(lane, scan):
                    key, queue = (entry, DEFAULT_QUEUE) if isinstance(entry, bytes) else entry
                    if queue in seen or key in self._cancelled:
                        continue
                    seen.add(queue)
                    if queue not in found or key < found[queue]:
                        found[queue] = key
                    if len(seen) >= queues:
                        break
        return found

    def done(self, task_id: uuid.UUID) -> None:
        """The attempt a worker took of this task has ended and its outcome is
        committed (or it never began): a cancel may hold the task again."""
        key = task_id.bytes
        with self._lock:
            left = self._taken.get(key, 0) - 1
            if left > 0:
                self._taken[key] = left
            else:
                self._taken.pop(key, None)

    def hold(self, task_id: uuid.UUID) -> bool:
        """Keep this task from starting while a cancel writes to the database;
        False, holding nothing, when a worker has taken it. Each hold is
        settled once (`settle`)."""
        key = task_id.bytes
        with self._lock:
            if key in self._taken:
                return False
            self._holds[key] = self._holds.get(key, 0) + 1
            return True

    def settle(
        self, task_id: uuid.UUID, cancelled: str | None, here: bool, doubt: bool = False
    ) -> None:
        """End a hold. `cancelled` is the queue of a task the database now
        shows cancelled, None for one it did not cancel. `here`: the task is in
        this lane or on its way to it, so it is skipped when it comes; else it
        is dropped only if a worker set it aside meanwhile. `doubt`: the
        cancel's write failed, and the database may have cancelled the task
        all the same: its payload held in memory, now or when it comes, is
        not used, so the worker that takes it reads its status first."""
        key = task_id.bytes
        with self._lock:
            if doubt:
                self._doubt(key)
            left = self._holds.get(key, 0) - 1
            if left > 0:
                self._holds[key] = left
            else:
                self._holds.pop(key, None)
            aside = self._aside.get(key) if left <= 0 or cancelled is not None else None
            if aside is not None:
                del self._aside[key]
            if cancelled is not None:
                if aside is not None or here:
                    self.waiting[cancelled] -= 1
                    self._jobs.pop(key, None)
                if aside is None and here:
                    self._cancelled.add(key)
            elif aside is not None:
                self._put_back(*aside)

    def doubt(self, task_id: uuid.UUID) -> None:
        """The database may have cancelled this task, which a worker has
        taken (a cancel of its running attempt failed, its answer lost): the
        next time it comes (its retry), its payload is not used, so the
        worker that takes it reads its status first (see `settle`)."""
        with self._lock:
            self._doubt(task_id.bytes)

    def _doubt(self, key: bytes) -> None:
        """Leave out the task's payload held now, and the one it comes with
        next (under the lock)."""
        self._doubted.add(key)
        self._jobs.pop(key, None)

    def _put_back(self, priority: int, entry: Entry) -> None:
        """An entry set aside, at the front of its lane again (under the lock)."""
        lane = self._lanes.get(priority)
        if lane is None:
            lane = self._lanes[priority] = deque()
            bisect.insort(self._order, priority)
        lane.appendleft(entry)
        self._ready.notify()

    def cancel(self, task_id: uuid.UUID, queue: str) -> None:
        """Skip this task, which the database shows ended (expired) while it waited here."""
        with self._lock:
            self._cancelled.add(task_id.bytes)
            self.waiting[queue] -= 1
            self._jobs.pop(task_id.bytes, None)

    def pause(self, queues: frozenset[str]) -> None:
        """Start no task of `queues` from now on; those of the queues no longer
        paused go back to the front of their lanes, in their order. A paused
        queue's tasks still count as waiting."""
        with self._lock:
            self._paused = queues
            resumed = [q for q in self._parked if q not in queues]
            for queue in resumed:
                for priority, entry in reversed(self._parked.pop(queue)):
                    lane = self._lanes.get(priority)
                    if lane is None:
                        lane = self._lanes[priority] = deque()
                        bisect.insort(self._order, priority)
                    lane.appendleft(entry)
            if resumed:
                self._ready.notify_all()

    def ids(self) -> list[tuple[uuid.UUID, str]]:
        """The id and queue of every task waiting here, paused ones included."""
        with self._lock:
            entries = [e for lane in self._lanes.values() for e in lane]
            entries += [e for parked in self._parked.values() for _, e in parked]
            found = []
            for entry in entries:
                key, queue = (entry, DEFAULT_QUEUE) if isinstance(entry, bytes) else entry
                if key not in self._cancelled:
                    found.append((uuid.UUID(bytes=key), queue))
            return found

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._ready.notify_all()

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {queue: n for queue, n in self.waiting.items() if n > 0}
