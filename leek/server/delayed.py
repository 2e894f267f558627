"""Delayed tasks: held in memory until their time, then released to the workers.

They wait in a heap ordered by their time; one thread sleeps until the
earliest is due (or a new, earlier one arrives), so nothing polls the
database. A retry's backoff and a task pushed with a delay both wait here.

An entry of the heap is one int that packs what orders it: the task's time
in microseconds, then a sequence number, then its id's 128 bits. A task of
the default queue and priority (most of them) needs nothing more; any other
notes its priority and queue beside. Payloads are kept for the
MEMORY_DELAYED soonest-due tasks only; any other is released without its
payload, which the worker that takes it loads from the database, as past
MEMORY_PAYLOADS in the ready queue (dispatch.py). A cancelled task's payload
goes at once; its entry stays in the heap, dead, until its time or until
dead entries make up half of the heap, when the heap is rebuilt without them.
"""

from __future__ import annotations

import heapq
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

from ..threads import Named
from .dispatch import DEFAULT_QUEUE
from .rows import Job, Ready

DEFAULT_PRIORITY = 0
ID_BITS = 128
ID_MASK = (1 << ID_BITS) - 1
SEQ_BITS = 64
ORDER_SHIFT = ID_BITS + SEQ_BITS


def _entry(when: float, seq: int, task_id: int) -> int:
    """The heap entry of a task due at `when`, the `seq`-th added."""
    return (max(0, round(when * 1_000_000)) << ORDER_SHIFT) | (seq << ID_BITS) | task_id


def _id(entry: int) -> int:
    return entry & ID_MASK


def _when(entry: int) -> float:
    return (entry >> ORDER_SHIFT) / 1_000_000


class Delayed:
    """Tasks whose run_after is in the future, released to `release` when due."""

    def __init__(self, release: Callable[[list[Ready]], None], memory: int) -> None:
        self.release = release
        self._memory = memory  # most payloads kept
        self._heap: list[int] = []
        self._live: dict[int, int] = {}  # each waiting task's id: its entry in the heap
        self._dead = 0  # entries of the heap no longer live: cancelled or replaced
        # The priority and queue of the waiting tasks not of the default ones,
        # each pair held once.
        self._queue_of: dict[int, tuple[int, str]] = {}
        self._pairs: dict[tuple[int, str], tuple[int, str]] = {}
        self._jobs: dict[int, Job] = {}  # the payloads kept, by task id
        # The kept payloads' entries, negated: the latest due first, the one
        # to give its payload up for a sooner task. Dead ones are skipped.
        self._latest: list[int] = []
        self._seq = 0
        self._wake = threading.Condition()
        self._stopped = False
        self.waiting: Counter[str] = Counter()
        self._thread = Named(target=self._loop, name="leek-delayed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()

    def add(self, items: list[Ready]) -> None:
        with self._wake:
            for item in items:
                task_id = item.id.int
                if task_id in self._live:
                    self._drop(task_id)  # added again: its new time replaces the old
                self._seq += 1
                entry = _entry(item.run_after or 0.0, self._seq, task_id)
                self._live[task_id] = entry
                heapq.heappush(self._heap, entry)
                pair = (item.priority, item.queue)
                if pair != (DEFAULT_PRIORITY, DEFAULT_QUEUE):
                    self._queue_of[task_id] = self._pairs.setdefault(pair, pair)
                self.waiting[item.queue] += 1
                if item.job is not None:
                    self._keep(task_id, entry, item.job)
            self._wake.notify()

    def cancel(self, task_id: uuid.UUID) -> bool:
        """Drop a held task and its payload; False when it is not held here."""
        with self._wake:
            if task_id.int not in self._live:
                return False
            self._drop(task_id.int)
            return True

    def drop_lost(self, owned: Callable[[list[uuid.UUID]], set[uuid.UUID]]) -> int:
        """Drop the held tasks that `owned` (of their ids) leaves out: those
        the database no longer shows as this broker's. How many."""
        with self._wake:
            held = [uuid.UUID(int=task_id) for task_id in self._live]
        mine = owned(held)
        return sum(self.cancel(task_id) for task_id in held if task_id not in mine)

    def counts(self) -> dict[str, int]:
        with self._wake:
            return {queue: n for queue, n in self.waiting.items() if n > 0}

    def held(self) -> int:
        """Payloads held in memory."""
        with self._wake:
            return len(self._jobs)

    def __len__(self) -> int:
        with self._wake:
            return len(self._live)

    def _forget(self, task_id: int) -> tuple[int, str, Job | None]:
        """Take a live task out of the waiting ones: its priority, queue and kept payload."""
        del self._live[task_id]
        priority, queue = self._queue_of.pop(task_id, (DEFAULT_PRIORITY, DEFAULT_QUEUE))
        self.waiting[queue] -= 1
        return priority, queue, self._jobs.pop(task_id, None)

    def _drop(self, task_id: int) -> None:
        """Forget a live task before its time: its entry turns dead."""
        self._forget(task_id)
        self._dead += 1
        if self._dead > len(self._heap) // 2:
            self._heap = [e for e in self._heap if self._live.get(_id(e)) == e]
            heapq.heapify(self._heap)
            self._dead = 0
        self._tidy()

    def _keep(self, task_id: int, entry: int, job: Job) -> None:
        """Keep the payload of this new entry if it is among the soonest due."""
        if self._memory <= 0:
            return
        if len(self._jobs) >= self._memory:
            latest = self._latest_kept()
            if latest is None or latest < entry:
                return  # due after every kept one
            heapq.heappop(self._latest)
            del self._jobs[_id(latest)]
        self._jobs[task_id] = job
        heapq.heappush(self._latest, -entry)

    def _latest_kept(self) -> int | None:
        """The entry of the kept payload due last, dead ones skipped."""
        while self._latest:
            entry = -self._latest[0]
            task_id = _id(entry)
            if task_id in self._jobs and self._live.get(task_id) == entry:
                return entry
            heapq.heappop(self._latest)
        return None

    def _tidy(self) -> None:
        """Rebuild the order of kept payloads once dead ones fill most of it."""
        if len(self._latest) > 2 * len(self._jobs) + 64:
            self._latest = [-self._live[task_id] for task_id in self._jobs]
            heapq.heapify(self._latest)

    def _loop(self) -> None:
        while True:
            due: list[Ready] = []
            with self._wake:
                if self._stopped:
                    return
                now = round(time.time() * 1_000_000) << ORDER_SHIFT
                while self._heap and self._heap[0] < now:
                    entry = heapq.heappop(self._heap)
                    task_id = _id(entry)
                    if self._live.get(task_id) != entry:
                        self._dead -= 1
                        continue
                    priority, queue, job = self._forget(task_id)
                    task = uuid.UUID(int=task_id)
                    due.append(Ready(task, priority, queue, _when(entry), job))
                if due:
                    self._tidy()
                else:
                    wait = _when(self._heap[0]) - time.time() if self._heap else None
                    self._wake.wait(wait)
                    continue
            self.release(due)
