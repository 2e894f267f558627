"""Running marks held back a moment: a task that ends within it is written once.

A task's running mark (Store.mark_running) shows it running and counts its
attempt in the database. Most tasks end soon after they start, and then their
outcome writes all that the mark would have: the status, the attempt, the
start. So a mark waits here until its task has run for `MARK_AFTER` seconds;
the broker's duties, at each tick (Store.nudge), hand the marks due to the
outcomes lane, and an outcome takes its task's mark away (Store.record). A
task that ends within the moment costs one statement where it cost two.

What the moment delays:
- a task shows ``running`` (status, started_at, attempts) at most
  `MARK_AFTER` plus one tick after its start;
- a task's key locks until its mark is written (README, Unique tasks);
- an adopter that finds a task of a dead broker still ``queued`` runs it again
  uncounted, as for any mark that did not reach the database.

A broker's own restart counts its last life's attempts from the file of starts
(starts.py), which a worker writes as the task starts, not from the marks. A
broker that stops hands every mark it holds to the lanes first (`take` with
`every`), so the tasks its stop cuts short are found running.
"""

from __future__ import annotations

import threading
import time
import uuid

from ..ops import Mark

#: Seconds a task runs before its running mark goes to the database.
MARK_AFTER = 0.1


class HeldMarks:
    """The running marks not yet handed to the lanes, by task id."""

    def __init__(self) -> None:
        self._marks: dict[uuid.UUID, Mark] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._marks)

    def hold(self, mark: Mark) -> None:
        with self._lock:
            self._marks[mark.task_id] = mark

    def drop(self, task_id: uuid.UUID) -> None:
        """Forget the mark of a task that ended, if one is held."""
        with self._lock:
            self._marks.pop(task_id, None)

    def take(self, every: bool = False) -> list[Mark]:
        """The marks whose tasks have run MARK_AFTER seconds (`every`: all), no
        longer held; in the order the tasks started. A start later than now
        (the clock was set back since) is due too."""
        now = time.time()
        cutoff = now - MARK_AFTER
        with self._lock:
            due = [m for m in self._marks.values() if every or not cutoff < m.started <= now + 1]
            for mark in due:
                del self._marks[mark.task_id]
        return due
