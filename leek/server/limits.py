"""Rate limits at a task's start: a token from the database, or a wait in line.

A task with a rate limit of its own (``rate_limit="10/m"``, stored with the
task) or of its queue (``LEEK["QUEUES"]``) needs a token from each of its
buckets before it starts (store/limits.py); an unlimited task never gets
here. A worker that takes a limited task asks the database for the tokens
(one committed write it waits for). When they are there, the task runs. When
they are not, the task waits in its line, here, in memory: it stays queued in
the database, and its attempts stay as they were.

Each line (the tasks of one set of buckets) sends one task, its head, back
to the workers when the database said the next token is due, through the
broker's route (the delayed heap until then). That task asks again; the
others wait behind it without asking, so a line costs the database one
question per token, however long it is. When the head gets its tokens, the
next in line goes out for the token after. A head that never comes back
(cancelled, deleted) is replaced once it is PROBE_GRACE seconds overdue, by
`watch`, a broker duty.

A task whose stored limit does not read (written into the database by hand)
runs without it, and the log says so.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import conf, ratelimit
from .rows import Job, Ready
from .store import Store
from .store.limits import Bucket, Buckets

logger = logging.getLogger(__name__)

#: Seconds past its due time after which a line's head that has not come back
#: is given up for the next task in line.
PROBE_GRACE = 30.0

LineKey = tuple[str, ...]


@dataclass(slots=True)
class Line:
    """The tasks of one set of buckets waiting for their tokens, and the one
    sent to ask for them (`probe`, due at `due`)."""

    tasks: deque[Ready] = field(default_factory=deque)
    probe: uuid.UUID | None = None
    due: float = 0.0


class RateLimits:
    """The broker's lines of limited tasks, and the buckets they take from."""

    def __init__(
        self,
        store: Store,
        release: Callable[[list[Ready]], None],
        queues: Mapping[str, ratelimit.Rate],
    ) -> None:
        self.buckets = Buckets(store)
        self.write_wait = float(conf.get("WRITE_WAIT"))
        self.release = release  # the broker's route: a task due later waits in the delayed heap
        self.queues = dict(queues)  # the limit of each queue that has one
        self._rates: dict[str, ratelimit.Rate | None] = {}
        self._lines: dict[LineKey, Line] = {}
        self._lock = threading.Lock()
        self.waiting: Counter[str] = Counter()  # tasks in lines, per queue
        self.taken = 0  # starts that got their tokens
        self.waited = 0  # starts that found a bucket empty and went to wait

    # -- at a task's start ---------------------------------------------------

    def limits(self, job: Job, queue: str) -> list[Bucket]:
        """The buckets a start of this task takes from; [] for an unlimited task."""
        found = []
        if job.rate_limit:
            rate = self._rate(job)
            if rate is not None:
                found.append(Bucket(f"task:{job.name}", rate.per_second, rate.burst))
        rate = self.queues.get(queue)
        if rate is not None:
            found.append(Bucket(f"queue:{queue}", rate.per_second, rate.burst))
        return found

    def defer(self, ready: Ready, job: Job) -> bool:
        """Whether the task must wait for its tokens: True when it went to
        wait in its line, False when it may start (it took its tokens, or it
        has no limit). Raises the database's error when the take failed."""
        buckets = self.limits(job, ready.queue)
        if not buckets:
            return False
        key = tuple(b.key for b in buckets)
        with self._lock:
            line = self._lines.get(key)
            if line is not None:
                if line.probe != ready.id:
                    line.tasks.append(_bare(ready))
                    self.waiting[ready.queue] += 1
                    return True
                line.probe = None
        try:
            taken = self.buckets.take(buckets, self.write_wait)
        except BaseException:
            # The worker tries the task again shortly: it is still its line's head.
            with self._lock:
                line = self._lines.get(key)
                if line is not None and line.probe is None:
                    line.probe, line.due = ready.id, time.time()
            raise
        now = time.time()
        out: Ready | None = None
        with self._lock:
            line = self._lines.get(key)
            if taken.ok:
                self.taken += 1
                if line is not None and line.probe is None:
                    out = self._next(key, line, now + taken.wait)
            else:
                self.waited += 1
                if line is None:
                    line = self._lines[key] = Line()
                if line.probe is None:
                    line.probe, line.due = ready.id, now + taken.wait
                    out = Ready(ready.id, ready.priority, ready.queue, line.due)
                else:
                    line.tasks.appendleft(_bare(ready))
                    self.waiting[ready.queue] += 1
        if out is not None:
            self.release([out])
        return not taken.ok

    def _next(self, key: LineKey, line: Line, due: float) -> Ready | None:
        """Send the head of `line` out at `due` (holding the lock); drop the
        line once it is empty."""
        if not line.tasks:
            del self._lines[key]
            return None
        head = line.tasks.popleft()
        self.waiting[head.queue] -= 1
        line.probe, line.due = head.id, due
        return Ready(head.id, head.priority, head.queue, due)

    # -- the broker's verbs and duties -------------------------------------------

    def cancel(self, task_id: uuid.UUID) -> bool:
        """Drop a cancelled task that waits in a line; False when none holds it.

        A line's head that is cancelled is replaced by the next in line,
        due when it was (the broker drops the head where it waits)."""
        out: list[Ready] = []
        found = False
        with self._lock:
            for key, line in list(self._lines.items()):
                if line.probe == task_id:
                    ready = self._next(key, line, line.due)
                    out += [ready] if ready is not None else []
                    continue
                for item in line.tasks:
                    if item.id == task_id:
                        line.tasks.remove(item)
                        self.waiting[item.queue] -= 1
                        found = True
                        break
        if out:
            self.release(out)
        return found

    def drop_lost(self, owned: Callable[[list[uuid.UUID]], set[uuid.UUID]]) -> int:
        """Drop the tasks waiting in lines that `owned` (of their ids) leaves
        out: those the database no longer shows as this broker's. A line
        whose head is lost sends the next in line out in its place, due when
        the head was. How many were dropped from the lines."""
        with self._lock:
            held = [t.id for line in self._lines.values() for t in line.tasks]
            held += [line.probe for line in self._lines.values() if line.probe is not None]
        mine = owned(held)
        lost = set(held) - mine  # a task that came meanwhile was not asked about
        dropped = 0
        out: list[Ready] = []
        with self._lock:
            for key, line in list(self._lines.items()):
                for item in [t for t in line.tasks if t.id in lost]:
                    line.tasks.remove(item)
                    self.waiting[item.queue] -= 1
                    dropped += 1
                if line.probe in lost:
                    ready = self._next(key, line, line.due)
                    out += [ready] if ready is not None else []
        if out:
            self.release(out)
        return dropped

    def watch(self) -> None:
        """Replace the heads of lines that are PROBE_GRACE seconds overdue (a broker duty)."""
        now = time.time()
        out: list[Ready] = []
        with self._lock:
            for key, line in list(self._lines.items()):
                if line.due + PROBE_GRACE < now:
                    ready = self._next(key, line, now)
                    out += [ready] if ready is not None else []
        if out:
            self.release(out)

    def counts(self) -> Counter[str]:
        """Tasks waiting in lines, per queue."""
        with self._lock:
            return Counter({queue: n for queue, n in self.waiting.items() if n > 0})

    def describe(self) -> dict[str, Any]:
        """The buckets as the database has them now, and this broker's lines."""
        with self._lock:
            lines = {
                "+".join(k): len(line.tasks) + (line.probe is not None)
                for k, line in self._lines.items()
            }
        return {
            "buckets": {
                level.key: {
                    "rate": ratelimit.text(level.rate),
                    "burst": level.burst,
                    "tokens": round(level.tokens, 3),
                }
                for level in self.buckets.levels()
            },
            "queues": {queue: str(rate) for queue, rate in self.queues.items()},
            "waiting": lines,
            "taken": self.taken,
            "waited": self.waited,
        }

    def _rate(self, job: Job) -> ratelimit.Rate | None:
        text = job.rate_limit
        if text not in self._rates:
            try:
                self._rates[text] = ratelimit.parse(text)
            except ValueError as exc:
                logger.error(
                    "rate limit unreadable, tasks run without it name=%s error=%s",
                    job.name,
                    exc,
                    extra={"action": "rate_limit_unreadable"},
                )
                self._rates[text] = None
        return self._rates[text]


def _bare(ready: Ready) -> Ready:
    """The task as its line holds it: without its payload, which is loaded
    again when it comes out (and shows whether it was cancelled meanwhile)."""
    return Ready(ready.id, ready.priority, ready.queue, None)
