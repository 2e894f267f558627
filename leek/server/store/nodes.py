"""The brokers' rows, and the claims a broker makes through them (`Store.nodes`).

A broker's heartbeat writes its row; the others read the rows to tell which
brokers are alive, which queues nobody serves and whose tasks to adopt. At
start, a broker counts what its last life left running (`interrupt_running`);
every sweep, it claims spooled tasks and those of gone brokers (`adopt`). What
a claim finds running has lost its attempt (cut.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..rows import Dialect, Ready
from . import cut
from .sql import NODE_COLUMNS, stamp

if TYPE_CHECKING:
    import uuid
    from collections.abc import Sequence

    from ..ops import Waiter
    from . import Store


class NodeRows:
    """The brokers' rows written through the store's lanes, and read."""

    def __init__(self, store: Store) -> None:
        self.store = store
        #: This node's row as the first heartbeat of this life found it (hostname,
        #: pid, host, port, stopped), () when there was none; None until then.
        self.last_life: tuple[Any, ...] | None = None

    def heartbeat(
        self,
        values: dict[str, Any],
        started: float,
        check: Callable[[tuple[Any, ...] | None], None] | None = None,
    ) -> Waiter:
        """Write this broker's row: NODE_COLUMNS from `values`, and the
        database's clock as its heartbeat.

        `check` first gets the row as it is (hostname, pid, host, port,
        stopped), read in the same transaction, or None when there is none."""
        sql = self.store.sql
        node = self.store.node

        def write(cursor: Any, d: Dialect) -> None:
            if check is not None or self.last_life is None:
                cursor.execute(sql.node_row, (node,))
                row = cursor.fetchone()
                if self.last_life is None:
                    self.last_life = tuple(row or ())
                if check is not None:
                    check(row)
            row = [values[name] for name in NODE_COLUMNS]
            row[NODE_COLUMNS.index("queues")] = json.dumps(values["queues"])
            cursor.execute(sql.beat, (*row, node))
            if cursor.rowcount == 0:
                cursor.execute(sql.first_beat, (*row, d.time(started), node))

        return self.store.call(write)

    def unserved(self, queued: dict[str, int], dead_after: float) -> list[str]:
        """The queues of `queued` (tasks waiting per queue) that no broker
        alive within `dead_after` seconds serves."""
        from ...liveness import alive
        from ...models import BrokerNode

        live = list(BrokerNode.objects.filter(alive(dead_after)))
        return sorted(q for q, n in queued.items() if n and not any(b.serves(q) for b in live))

    def peers(self, dead_after: float) -> int:
        """The other brokers alive within `dead_after` seconds that have workers."""
        from ...liveness import alive
        from ...models import BrokerNode

        live = BrokerNode.objects.filter(alive(dead_after), workers__gt=0)
        return live.exclude(name=self.store.node).count()

    def beats(self) -> list[tuple[str, float, bool]]:
        """Every broker's name, the time of its last heartbeat (seconds since
        the epoch, on this broker's clock: now less its age by the database's)
        and whether it stopped, as their rows have them."""
        from django.db.models.functions import Now

        from ...models import BrokerNode

        rows = BrokerNode.objects.annotate(db_now=Now()).values_list(
            "name", "heartbeat_at", "stopped", "db_now"
        )
        here = time.time()
        return [
            (name, here - (now - beat).total_seconds(), stopped)
            for name, beat, stopped, now in rows
        ]

    def node_row(self, name: str) -> dict[str, Any] | None:
        """A broker's row as last written, with the database's clock as
        "db_now", or None."""
        from django.db.models.functions import Now

        from ...models import BrokerNode

        row = (
            BrokerNode.objects.filter(name=name)
            .annotate(db_now=Now())
            .values("hostname", "host", "port", "pid", "heartbeat_at", "stopped", "db_now")
            .first()
        )
        return None if row is None else dict(row)

    def interrupt_running(self, started: Sequence[tuple[uuid.UUID, int, float]] = ()) -> Waiter:
        """Count the attempts this broker's last life left running: those the
        database shows running, and the `started` ones (task id, attempt
        number, start) its workers had begun (Starts.previous). Each gets a
        FailedTask row (cut.py); a task runs again unless that attempt was its
        last, and then it fails for good. Every unfinished task under this
        broker's name is then claimed under its new epoch. The value is a cut.Cut."""
        sql = self.store.sql
        node = self.store.node
        claim = stamp(node, self.store.epoch)
        graceful = bool(self.last_life and self.last_life[4])  # its last life stopped

        def requeue(cursor: Any, d: Dialect) -> cut.Cut:
            if started:
                begun = [(n, d.time(at), d.pk(i), node, n) for i, n, at in started]
                cursor.executemany(sql.started_before, begun)
            cursor.execute(sql.interrupt_last, (d.time(time.time()), node))
            last = cursor.fetchall()
            cursor.execute(sql.interrupt, (node,))
            again = cursor.fetchall()
            cursor.execute(sql.recover, (*claim, node))
            found = [
                cut.CutShort(r[0], r[1], r[2], r[3], node, graceful, final)
                for batch, final in ((last, True), (again, False))
                for r in batch
            ]
            return cut.record(cursor, sql.failure, d, found, adopted=False)

        return self.store.call(requeue)

    def adopt(
        self,
        dead_after: float,
        walk: Callable[[dict[str, Any]], list[str]],
        queues: frozenset[str] | None = None,
    ) -> Waiter:
        """Claim spooled tasks and the unfinished tasks of gone brokers.

        Gone: another broker stopped, or silent for `dead_after` seconds by
        the database's clock.
        `walk` gets them ({name: heartbeat_at as stored}) and names those whose
        tasks to claim. Each row is claimed with a conditional update, so
        brokers sweeping at once each take a task at most once. A task found
        running has lost its attempt (cut.py): it is requeued, or fails for
        good when that attempt was its last. The value is (the tasks claimed
        as Ready, to run; the gone brokers; the cut.Cut of those found
        running). With `queues`, only tasks of those queues are claimed."""
        sql = self.store.sql
        node = self.store.node
        of = None if queues is None else sorted(queues)
        count = None if of is None else len(of)
        mine = stamp(node, self.store.epoch)

        def claim(cursor: Any, d: Dialect) -> tuple[list[Ready], dict[str, Any], cut.Cut]:
            cursor.execute(sql.gone, (node, dead_after))
            found = cursor.fetchall()
            gone = {name: beat for name, beat, _ in found}
            stopped = {name for name, _, was in found if was}
            now = d.time(time.time())
            claim = (*mine, self.store.writes.doubts.claim())  # sql.CLAIM
            cursor.execute(sql.claim_spooled_of(count), (*claim, False, now, *(of or ())))
            rows = cursor.fetchall()
            names = walk(gone)
            ran_on: dict[Any, str] = {}  # the broker each running task was cut short on
            if names:
                cursor.execute(sql.running_of(len(names)), names)
                ran_on = dict(cursor.fetchall())
                cursor.execute(
                    sql.adopt(len(names), count), (*claim, *names, *(of or ()), dead_after)
                )
                rows += cursor.fetchall()
            running = []
            for r in rows:
                if r[4] == "running":
                    ran = ran_on.get(r[0], "")
                    last = int(r[6]) > int(r[8])  # its attempts > its max_retries
                    running.append(cut.CutShort(r[0], r[5], r[6], r[7], ran, ran in stopped, last))
            over = {c.key for c in running if c.final}
            if over:
                now = d.time(time.time())
                cursor.executemany(sql.fail_cut, [(now, key, *mine) for key in over])
            if len(over) < len(running):
                cursor.executemany(sql.requeue, [(c.key, *mine) for c in running if not c.final])
            ready = [
                Ready(d.read_uuid(r[0]), r[1], r[2], d.read_time(r[3]))
                for r in rows
                if r[0] not in over
            ]
            return ready, gone, cut.record(cursor, sql.failure, d, running, adopted=True)

        return self.store.call(claim)
