"""The controls every broker sharing the database obeys: paused queues and expiry.

Two broker duties. `Controls.poll` reads the paused queues (QueueState,
written by `leek pause` and the admin) every PAUSE_POLL seconds and hands them
to the lanes, whose dispatchers then start none of their tasks and keep them
waiting, in order, until the queue is resumed. `Controls.expire` marks the
waiting tasks past their expiry expired every EXPIRY_SWEEP seconds, whichever
broker owns them, so that they do not wait for a worker to find them; the
worker that takes one past its expiry marks it too, and never runs it. The
sweep leaves a task EXPIRY_GRACE seconds past its expiry before it marks it,
the time a running mark takes to reach the database, so that it does not
mark a task that a worker started just before its expiry.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from .delayed import Delayed
from .groupcommit import DATABASE_ERRORS
from .lanes import Lanes
from .store import Store

logger = logging.getLogger(__name__)

#: Seconds between two reads of the paused queues.
PAUSE_POLL = 0.5
#: Seconds between two sweeps of the expired tasks.
EXPIRY_SWEEP = 1.0
#: Seconds past its expiry before the sweep marks a waiting task expired.
EXPIRY_GRACE = 1.0
#: Seconds the sweep waits for its write to commit.
EXPIRY_WAIT = 10.0


class Controls:
    """The paused queues as this broker last read them, and the expiry sweep."""

    def __init__(self, store: Store, lanes: Lanes, delayed: Delayed) -> None:
        self.store = store
        self.lanes = lanes
        self.delayed = delayed
        self.paused: frozenset[str] = frozenset()
        self.expired = 0  # tasks this broker's sweeps marked expired

    def every(self, schedule: Callable[[float, Callable[[], object]], None]) -> None:
        """Register both duties with `schedule` (Duties.every)."""
        schedule(PAUSE_POLL, self.poll)
        schedule(EXPIRY_SWEEP, self.expire)

    def poll(self) -> None:
        """Read the paused queues and apply them; the last ones read stay in
        force while the database cannot be read."""
        try:
            paused = self.store.controls.paused()
        except DATABASE_ERRORS:
            return  # the heartbeat reports the database
        if paused != self.paused:
            logger.info(
                "paused queues changed paused=%s resumed=%s",
                ",".join(sorted(paused - self.paused)),
                ",".join(sorted(self.paused - paused)),
                extra={"action": "queues_paused"},
            )
            self.paused = paused
            self.lanes.pause(paused)

    def expire(self) -> None:
        """Mark the waiting tasks past their expiry (and its grace) expired,
        and drop this broker's from memory."""
        if not self.store.controls.any_expired(time.time() - EXPIRY_GRACE):
            return
        marked = self.store.controls.expire_due(time.time() - EXPIRY_GRACE).wait(EXPIRY_WAIT)
        node = self.store.node
        for task_id, queue, broker in marked:
            if broker == node:
                self.forget(task_id, queue)
        if marked:
            self.expired += len(marked)
            logger.info(
                "tasks expired before they started count=%s",
                len(marked),
                extra={"action": "tasks_expired"},
            )

    def forget(self, task_id: uuid.UUID, queue: str) -> None:
        if not self.delayed.cancel(task_id):
            self.lanes.cancel(task_id, queue)
