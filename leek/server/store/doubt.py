"""Writes in doubt: pushes and claims the database may have committed though the write failed.

A connection that breaks while a push's insert commits (the network, a
failover, an administrator ending the session) leaves the broker unable to
tell whether the rows are there. It answers the client with the error; the
client sends the push again, to this broker or another, or writes it to the
database itself (client/delivery.py), and either way a row already there is
ignored as a replay. Were the first insert committed, its tasks would then
wait under this broker's name, in no broker's memory, until its next start.

So the broker keeps the ids of an insert that failed so, with the time it
stamped on their rows (`queued_at`), and once the database answers again
(`Store.recheck`, a duty) reads which of them it did commit: rows under its
name and epoch, queued, not spooled, stamped with that very time. No other
write makes such a row: another broker's insert or the client's own stamp
their own time, and a claim of a spooled or adopted row keeps the row's. A
task found so is queued in memory here, once: nothing else routes it, as the
replays were ignored and no claim takes a row this broker holds. (A task
the insert left unowned, for any broker to claim, share.py, is in no doubt:
a claim of this broker's may take it, and a look would then queue it twice.) A server
may finish a commit after the client saw the connection break, so the ids
not found are looked for again, after FIRST_WAIT seconds, then twice as long
each time, until DOUBT_WINDOW seconds have passed since the insert failed
(and at least once after the database answered again).

A claim of tasks already in the table (server/share.py's of unowned tasks,
the sweep's of spooled tasks and of gone brokers' tasks) is in the same
doubt when its write fails so: its rows would wait under this broker's
name, taken from the others, in no broker's memory. Each claim stamps its
rows with a number of its own (`Doubts.claim`, the column `claim`), counted
from the broker's start and unique under its epoch, and the look reads the
rows still queued under that claim: the rows a claim took are known only
by the answer that was lost. The look reads only a partial index of the
queued rows claims took (leek_task_claimed, which no push writes), as it
holds the tasks lane's transaction. A look that finds any found them all (the
claim committed), and the claim is settled; a task found so is queued here
once: no other claim takes a row this broker holds, and no other broker's
claim stamps its number.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..rows import Dialect, NewTask, Ready
from .sql import Statements

logger = logging.getLogger(__name__)

#: Seconds after an insert failed during which its tasks are looked for.
DOUBT_WINDOW = 60.0
#: Seconds between the first look for a failed insert's tasks and the next.
FIRST_WAIT = 1.0
#: Ids asked about per query.
DOUBT_PAGE = 500


@dataclass
class Doubt:
    """The tasks of one failed insert, and the time stamped on their rows;
    or one failed claim, by its number."""

    queued_at: Any  # as bound (Dialect.time); None for a claim
    ids: set[uuid.UUID]  # an insert's tasks not found yet; a claim's, once found
    claim: int = 0  # the claim's number (0: an insert)
    until: float = field(default_factory=lambda: time.monotonic() + DOUBT_WINDOW)
    due: float = 0.0  # the next look (time.monotonic())
    wait: float = field(default_factory=lambda: FIRST_WAIT)  # before the look after it
    looks: int = 0  # looks committed


class Doubts:
    """The inserts and claims in doubt, and those under way on each writing thread."""

    def __init__(self, sql: Statements, node: str) -> None:
        self.sql = sql
        self.node = node
        self._lock = threading.Lock()
        self._doubts: list[Doubt] = []
        # Of the write under way: (queued_at, tasks) of its inserts, its claims' numbers.
        self._tried = threading.local()
        self._numbers = itertools.count(1)
        self.checking = False  # a check is queued and not ended

    def begin(self) -> None:
        """A write begins on this thread: nothing of it tried yet."""
        self._tried.inserts = []
        self._tried.claims = []

    def claim(self) -> int:
        """The number of a claim this thread's write makes, to stamp its rows
        with (sql.CLAIM): the claim is in doubt should the write fail."""
        number = next(self._numbers)
        claims = getattr(self._tried, "claims", None)
        if claims is None:
            claims = self._tried.claims = []
        claims.append(number)
        return number

    def tried(self, queued_at: Any, tasks: Sequence[NewTask]) -> None:
        """This thread's write binds `tasks` stamped `queued_at`."""
        inserts = getattr(self._tried, "inserts", None)
        if inserts is None:
            inserts = self._tried.inserts = []
        inserts.append((queued_at, tasks))

    def failed(self) -> None:
        """This thread's write failed for a reason not its own: its inserts
        and claims are in doubt."""
        inserts = getattr(self._tried, "inserts", None) or []
        claims = getattr(self._tried, "claims", None) or []
        self.begin()
        added = [Doubt(at, {t.id for t in tasks}) for at, tasks in inserts if tasks]
        added += [Doubt(None, set(), number) for number in claims]
        if added:
            with self._lock:
                self._doubts += added

    def due(self) -> bool:
        """Whether a look is due."""
        now = time.monotonic()
        return any(doubt.due <= now for doubt in self._doubts)

    def check(self, cursor: Any, d: Dialect, epoch: int) -> list[tuple[Doubt, list[Ready]]]:
        """Each doubt whose look is due, with the tasks of it this broker did
        commit (read inside a batch's transaction, and handed to `settle`
        once it is committed)."""
        now = time.monotonic()
        with self._lock:
            doubts = [(doubt, sorted(doubt.ids)) for doubt in self._doubts if doubt.due <= now]
        looks = []
        for doubt, ids in doubts:
            if doubt.claim:
                cursor.execute(self.sql.claimed_by, [self.node, epoch, doubt.claim])
                rows = cursor.fetchall()
            else:
                rows = self._inserted(cursor, d, epoch, doubt.queued_at, ids)
            looks.append(
                (doubt, [Ready(d.read_uuid(i), p, q, d.read_time(r)) for i, p, q, r in rows])
            )
        return looks

    def _inserted(
        self, cursor: Any, d: Dialect, epoch: int, queued_at: Any, ids: list[uuid.UUID]
    ) -> list[Any]:
        """The rows of `ids` this broker's insert stamped with `queued_at`, still queued."""
        rows = []
        for at in range(0, len(ids), DOUBT_PAGE):
            page = ids[at : at + DOUBT_PAGE]
            cursor.execute(
                self.sql.committed_of(len(page)), [self.node, epoch, queued_at, *map(d.pk, page)]
            )
            rows += cursor.fetchall()
        return rows

    def settle(self, looks: list[tuple[Doubt, list[Ready]]]) -> None:
        """After a committed `check`: forget an insert's tasks it found, a
        claim found (it committed: that look read every row it took), and
        the doubts past their window that it looked at; the next look at the others."""
        now = time.monotonic()
        with self._lock:
            for doubt, found in looks:
                ids = {ready.id for ready in found}
                if doubt.claim:
                    doubt.ids |= ids
                else:
                    doubt.ids -= ids
                doubt.looks += 1
                doubt.due, doubt.wait = now + doubt.wait, doubt.wait * 2
            self._doubts = [
                d
                for d in self._doubts
                if (not d.ids if d.claim else d.ids) and not (d.looks and d.until <= now)
            ]
        for kind in ("insert", "claim"):
            count = sum(
                len(found) for doubt, found in looks if bool(doubt.claim) == (kind == "claim")
            )
            if count:
                logger.warning(
                    "tasks found committed whose %s had failed count=%s: they run",
                    kind,
                    count,
                    extra={"action": f"{kind}s_found"},
                )
