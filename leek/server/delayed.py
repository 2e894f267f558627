"""Delayed tasks: held in memory until their time, then released to the workers.

They wait in a heap ordered by their time; one thread sleeps until the
earliest is due (or a new, earlier one arrives), so nothing polls the
database. A retry's backoff and a task pushed with a delay both wait here.
"""

from __future__ import annotations

import heapq
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

from .rows import Ready


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
