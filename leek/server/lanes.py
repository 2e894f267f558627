"""Queues as lanes: each queue a broker serves has its workers and pool.

``LEEK["QUEUES"]`` gives a queue a lane of its own, e.g. ``{"pdfs": {"workers":
2, "pool": "processes"}}``: its own in-memory line (a Dispatcher) and its own
workers (a Pool), so a queue of slow tasks never holds up another. Every other
queue shares the default lane, of WORKERS workers in POOL.

`leek start --queues default,pdfs` serves those queues only: the default lane
then takes the listed queues that QUEUES does not name, and nothing else. A
task of a queue the broker does not serve is still accepted and committed
(accepted means committed, whatever the queue), then released: its row is
marked spooled and owned by no broker, and a broker that serves its queue
adopts it at its next sweep.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .dispatch import Dispatcher
from .lease import Lease
from .limits import RateLimits
from .rows import Ready
from .store import Store
from .workers import Pool, Running

#: The name of the default lane in the stats and the broker's row.
DEFAULT_LANE = "*"


@dataclass(slots=True)
class Lane:
    """One line of ready tasks and the workers that take from it."""

    name: str
    dispatcher: Dispatcher
    pool: Pool
    #: Most tasks waiting in memory (server/share.py); None: no bound.
    bound: int | None = None


class Lanes:
    """The lanes of one broker, and which lane each queue goes to."""

    def __init__(
        self,
        store: Store,
        retry_later: Callable[[list[Ready]], None],
        settings: Mapping[str, Any],
        workers: int,
        pool: str,
        served: Iterable[str] | None = None,
        limits: RateLimits | None = None,
    ) -> None:
        self.store = store
        self.served = None if served is None else frozenset(served)
        memory = int(settings["MEMORY_PAYLOADS"])
        prefetch = int(settings["PREFETCH"])
        own: dict[str, Any] = dict(settings["QUEUES"] or {})
        self.by_queue: dict[str, Lane] = {}
        for queue, config in own.items():
            if self.served is not None and queue not in self.served:
                continue
            config = config or {}
            size = int(config.get("workers", workers))
            kind = str(config.get("pool", pool))
            dispatcher = Dispatcher(memory)
            lane_pool = Pool(store, dispatcher, size, retry_later, kind, queue, limits)
            bound = int(config.get("prefetch", prefetch * size)) if prefetch else None
            self.by_queue[queue] = Lane(queue, dispatcher, lane_pool, bound)
        self.default: Lane | None = None
        if self.served is None or self.served - set(own):
            dispatcher = Dispatcher(memory)
            self.default = Lane(
                DEFAULT_LANE,
                dispatcher,
                Pool(store, dispatcher, workers, retry_later, pool, limits=limits),
                prefetch * workers if prefetch else None,
            )
        self.all = list(self.by_queue.values()) + ([self.default] if self.default else [])

    def lane(self, queue: str) -> Lane | None:
        """The lane of `queue`, or None when this broker does not serve it."""
        lane = self.by_queue.get(queue)
        if lane is not None:
            return lane
        if self.served is not None and queue not in self.served:
            return None
        return self.default

    def serves(self, queue: str) -> bool:
        return self.lane(queue) is not None

    def push(self, items: list[Ready]) -> None:
        """Queue ready tasks, all of queues served here, on their lanes."""
        lanes: dict[int, tuple[Lane, list[Ready]]] = {}
        for item in items:
            lane = self.lane(item.queue)
            if lane is not None:
                lanes.setdefault(id(lane), (lane, []))[1].append(item)
        for lane, batch in lanes.values():
            lane.dispatcher.push(batch)

    def gate(self, lease: Lease) -> None:
        """Hand out no task while `lease` is not held (Dispatcher.gate), and
        start none taken before it ran out that is no longer this broker's
        (Pool.lease)."""
        for lane in self.all:
            lane.dispatcher.gate = lease.held
            lane.pool.lease = lease

    def drop_lost(self, owned: Callable[[list[Any]], set[Any]]) -> int:
        """Drop the waiting tasks that `owned` (of their ids) leaves out: those
        the database no longer shows as this broker's. How many."""
        held = [(lane, i, q) for lane in self.all for i, q in lane.dispatcher.ids()]
        mine = owned([i for _, i, _ in held])
        lost = [(lane, i, q) for lane, i, q in held if i not in mine]
        for lane, task_id, queue in lost:
            lane.dispatcher.cancel(task_id, queue)
        return len(lost)

    def cancel(self, task_id: Any, queue: str) -> None:
        lane = self.lane(queue)
        if lane is not None:
            lane.dispatcher.cancel(task_id, queue)

    def pause(self, queues: frozenset[str]) -> None:
        """Start no task of `queues`; resume the others (Dispatcher.pause)."""
        for lane in self.all:
            lane.dispatcher.pause(queues)

    # -- life ----------------------------------------------------------------

    def start(self) -> None:
        for lane in self.all:
            lane.pool.start()

    def watch(self) -> None:
        for lane in self.all:
            lane.pool.watch()

    def stop(self, grace: float) -> list[Running]:
        """Stop every lane within one grace period; what still ran."""
        for lane in self.all:
            lane.dispatcher.close()
        deadline = time.monotonic() + grace
        left: list[Running] = []
        for lane in self.all:
            left += lane.pool.stop(max(0.0, deadline - time.monotonic()))
        return left

    # -- what the broker reports -----------------------------------------------

    @property
    def size(self) -> int:
        return sum(lane.pool.size for lane in self.all)

    def alive(self) -> int:
        return sum(lane.pool.alive() for lane in self.all)

    def stuck(self) -> int:
        return sum(len(lane.pool.stuck) for lane in self.all)

    def busy(self) -> list[Running]:
        return [run for lane in self.all for run in lane.pool.busy()]

    def broken(self) -> str:
        """Why a lane's worker processes cannot start, or ""."""
        return next((lane.pool.broken for lane in self.all if lane.pool.broken), "")

    def handled(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for lane in self.all:
            total.update(lane.pool.handled_by_queue())
        return total

    def counts(self) -> Counter[str]:
        """Tasks waiting in memory, per queue."""
        total: Counter[str] = Counter()
        for lane in self.all:
            total.update(lane.dispatcher.counts())
        return total

    def held(self) -> int:
        return sum(lane.dispatcher.held() for lane in self.all)

    def summary(self) -> str:
        """The lanes in one word each, for the log: name:workers:pool."""
        return ",".join(f"{lane.name}:{lane.pool.size}:{lane.pool.kind}" for lane in self.all)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Each served queue's lane: its pool and workers, as the broker's row
        and stats show them. "*" stands for every queue without a lane of its
        own, when the broker serves every queue; otherwise the default lane is
        listed under each queue it serves."""
        found: dict[str, dict[str, Any]] = {}
        for lane in self.all:
            pool = lane.pool
            about = {
                "pool": pool.kind,
                "workers": pool.size,
                "alive": pool.alive(),
                "busy": len(pool.busy()),
                "stuck": len(pool.stuck),
            }
            if lane is self.default and self.served is not None:
                for queue in sorted(self.served - set(self.by_queue)):
                    found[queue] = about
            else:
                found[lane.name] = about
        return found
