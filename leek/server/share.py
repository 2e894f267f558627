"""Work sharing: a broker keeps in memory only what its workers will start soon.

Each lane has a bound (`Lane.bound`: PREFETCH tasks per worker, or the
lane's own "prefetch"). A push whose lane is at its bound is inserted in the
same statement as the others, but owned by no broker (spooled, broker ''),
and its payload is not kept (`admit`, called by the insert), while another
live broker with workers shares the database (counted at each heartbeat): a
broker alone keeps every task it accepts, as a claim of its own tasks back
would only cost it a round trip. So is a push
of a queue this broker does not serve. A task not due yet stays with the
broker that took it, in its delayed heap.

A broker whose lane has room claims the unowned tasks due in its queues,
whichever broker accepted them, highest priority first, then oldest, up to
the room it has (`Store.claim_unowned`; sql.claim_unowned says why two
brokers never claim one task). The claims follow idleness: after a worker
takes a task, a lane down to half its bound claims at once while the table
had work at the last look (or a push since went to it); every TICK of the
duties a lane with room claims while the table had work, and while it was
empty the looks back off, doubling from TICK up to SWEEP_INTERVAL. One claim
is in flight at a time; it rides in a batch of the outcomes lane, so no
client's acknowledgement waits for it.

A task claimed is an ordinary task of its new broker: paused queues are not
claimed, rate limits, cancels, expiry and chains act on it as on any other.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from .duties import TICK
from .lanes import Lane, Lanes
from .rows import NewTask, Ready
from .store import Store
from .store.sql import Ask

logger = logging.getLogger(__name__)

#: What a claim's write gives: the tasks claimed, and how many each ask took.
Claimed = tuple[list[Ready], list[int]]
#: Most tasks a lane without a bound (PREFETCH 0) claims at a time.
UNBOUNDED_CLAIM = 1000


class Share:
    """A broker's part in sharing the work of one database with the others."""

    def __init__(
        self,
        store: Store,
        lanes: Lanes,
        route: Callable[[list[Ready]], None],
        paused: Callable[[], frozenset[str]],
        idle_max: float,
    ) -> None:
        self.store = store
        self.lanes = lanes
        self.route = route
        self.paused = paused  # the queues paused now (Controls)
        self.idle_max = idle_max  # the longest back-off while the table is empty
        self._lock = threading.Lock()
        self._claiming = False  # a claim is in flight
        self._more = True  # the table had work at the last look, or a push went there since
        self._given = 0  # pushes inserted unowned, ever
        self._given_at_claim = 0
        self._delay = TICK
        self._next = 0.0  # monotonic time of the next look while the table is empty
        self._sql: dict[tuple[int, bool], str] = {}
        self.claims = 0
        self.claimed = 0
        #: Other live brokers with workers on the database, as last read:
        #: while there is none, a lane keeps every push (`admit`).
        self.peers = 0
        for lane in lanes.all:
            lane.dispatcher.taken = self.taken

    def figures(self) -> dict[str, int]:
        """Claims made, tasks claimed, pushes inserted unowned, since the
        start; the other live brokers."""
        return {
            "claims": self.claims,
            "claimed": self.claimed,
            "unowned": self._given,
            "peers": self.peers,
        }

    def look(self, dead_after: float) -> None:
        """Count the other live brokers (a duty, at each heartbeat)."""
        self.peers = self.store.nodes.peers(dead_after)

    # -- the push path ---------------------------------------------------------

    def admit(self, tasks: Sequence[NewTask]) -> list[bool] | None:
        """Which of `tasks`, about to be inserted, this broker keeps; None: all.

        A task due now is kept while its lane is below its bound, counting the
        tasks of this batch kept before it, or while no other broker is alive
        to take it; one not due yet is kept (the delayed heap); one of a
        queue not served here is not."""
        alone = self.peers == 0
        now = time.time()
        kept: list[bool] = []
        room: dict[int, int] = {}
        given = 0
        for t in tasks:
            lane = self.lanes.lane(t.queue)
            if lane is None:
                kept.append(False)
                given += 1
            elif alone or lane.bound is None or (t.run_after is not None and t.run_after > now):
                kept.append(True)
            else:
                left = room.get(id(lane))
                if left is None:
                    left = lane.bound - lane.dispatcher.ready()
                keep = left > 0
                room[id(lane)] = left - 1
                kept.append(keep)
                given += not keep
        if not given:
            return None
        self._given += given
        self._more = True
        return kept

    # -- claims ----------------------------------------------------------------

    def taken(self) -> None:
        """A worker took a task: claim at once if a lane is down to half its
        bound and the table had work."""
        if self._more and not self._claiming:
            self._claim(low=True)

    def tick(self) -> None:
        """A duty at every tick: claim for the lanes with room while the table
        had work, or when the back-off since it was empty has passed."""
        if self._claiming or (not self._more and time.monotonic() < self._next):
            return
        self._claim(low=False)

    def poke(self) -> None:
        """Look at the table now (the sweep verb: a client spooled or wrote
        an outbox row), and from the shortest back-off again."""
        self._next = 0.0
        self._delay = TICK
        self._more = True
        self.tick()

    def _claim(self, low: bool) -> None:
        asks = self._asks(low)
        if not asks:
            return
        with self._lock:
            if self._claiming:
                return
            self._claiming = True
            self._given_at_claim = self._given

        def claimed(value: Claimed | None, error: BaseException | None) -> None:
            self._claimed(asks, value, error)

        try:
            self.store.claim_unowned(asks, claimed)
        except BaseException:
            self._claiming = False
            raise

    def _asks(self, low: bool) -> list[Ask]:
        """The claim of each lane with room (`low`: with half its bound free)."""
        paused = self.paused()
        asks = []
        for lane in self.lanes.all:
            gate = lane.dispatcher.gate
            if gate is not None and not gate():
                continue  # it starts no task now (its lease, lease.py): it claims none
            waiting = lane.dispatcher.ready()
            bound = UNBOUNDED_CLAIM if lane.bound is None else lane.bound
            room = bound - waiting
            if lane.pool.size == 0 or room <= 0 or (low and waiting > bound // 2):
                continue
            among, queues = self._queues(lane, paused)
            if among and not queues:
                continue  # every queue of the lane is paused
            key = (len(queues), among)
            sql = self._sql.get(key)
            if sql is None:
                sql = self._sql[key] = self.store.sql.claim_unowned(len(queues), among)
            asks.append(Ask(sql, queues, room))
        return asks

    def _queues(self, lane: Lane, paused: frozenset[str]) -> tuple[bool, tuple[str, ...]]:
        """The queues a lane claims: (True, those) or (False, all but those)."""
        lanes = self.lanes
        if lane is not lanes.default:
            return True, () if lane.name in paused else (lane.name,)
        own = set(lanes.by_queue)
        if lanes.served is None:
            return False, tuple(sorted(own | paused))
        return True, tuple(sorted(lanes.served - own - paused))

    def _claimed(
        self,
        asks: list[Ask],
        value: Claimed | None,
        error: BaseException | None,
    ) -> None:
        """A claim committed (on the writer's thread): route what it took, and
        look again soon while the table may have more: a lane took all it
        asked for, or a push went to the table meanwhile."""
        found, took = value if value is not None else ([], [])
        full = error is None and any(n >= ask.limit for n, ask in zip(took, asks, strict=True))
        more = error is None and (full or self._given != self._given_at_claim)
        if more or found:
            self._delay = TICK
            self._next = 0.0
        else:
            self._next = time.monotonic() + self._delay
            self._delay = min(self._delay * 2, self.idle_max)
        self._more = more
        self.claims += 1
        self.claimed += len(found)
        self._claiming = False
        if found:
            logger.debug("claimed unowned tasks count=%s", len(found), extra={"action": "claimed"})
            self.route(found)
