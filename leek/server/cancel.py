"""Cancelling a task: the broker that holds a task in memory decides whether it starts.

A cancel that answers True means the task never runs, so the cancel and the
start of a task must not both happen. Each lane's dispatcher is where a task
starts (`Dispatcher.take`), so the cancel asks it first, under its lock: a
task a worker has taken is not cancelled (False at once); any other is held,
so no worker starts it while the database write runs. The write cancels the
row only while it is queued and no other live broker may hold it in memory
(sql.py); the hold is then settled, the task dropped from this broker's
memory (a rate limit's line, the delayed heap, or its lane) or left to run. No database read is
added before a start.

A write that outlasts WRITE_WAIT answers False and keeps its hold until it
ends: a False that cancels later is allowed, a True that runs is not.

``running=True`` also stops a task this broker runs now (stops.py): its
attempt is flagged, the database shows it cancelled, then its thread's task
is told or its worker process is killed.
"""

from __future__ import annotations

import logging
import uuid

from .delayed import Delayed
from .lanes import Lane, Lanes
from .limits import RateLimits
from .metrics import OFF, Metrics
from .store import Store
from .workers import Running

logger = logging.getLogger(__name__)

#: What a cancel's write found: (queue, owning broker) of the task it
#: cancelled, or None.
Found = tuple[str, str] | None


class Cancels:
    """The broker's ``cancel`` verb."""

    def __init__(
        self,
        store: Store,
        delayed: Delayed,
        rates: RateLimits,
        lanes: Lanes,
        dead_after: float,
        wait: float,
        metrics: Metrics = OFF,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.delayed = delayed
        self.rates = rates
        self.lanes = lanes
        self.dead_after = dead_after  # HEARTBEAT_TIMEOUT: a broker silent this long is gone
        self.wait = wait  # WRITE_WAIT

    def __call__(self, task_id: uuid.UUID, running: bool = False) -> bool:
        """Cancel the task; True when it never runs (or, `running`, when the
        attempt it runs here was stopped too)."""
        held: list[Lane] = []
        for lane in self.lanes.all:
            if lane.dispatcher.hold(task_id):
                held.append(lane)
                continue
            for other in held:  # a worker of `lane` has it
                other.dispatcher.settle(task_id, None, here=False)
            return self._stop_running(lane, task_id) if running else False

        def settle(found: Found, error: BaseException | None = None) -> None:
            self._settle(task_id, held, None if error is not None else found, error is not None)

        waiter = self.store.cancel(task_id, self.dead_after)
        try:
            found = waiter.wait(self.wait, late=settle)
        except TimeoutError:
            logger.warning(
                "cancel not committed within the wait, it holds the task until it is task=%s",
                task_id,
                extra={"action": "cancel_late"},
            )
            return False
        except BaseException as exc:
            settle(None, exc)
            raise
        settle(found)
        return found is not None

    def _settle(
        self, task_id: uuid.UUID, held: list[Lane], found: Found, doubt: bool = False
    ) -> None:
        """End the holds of a cancel whose write found `found`. `doubt`: the
        write failed, and may have committed all the same (its answer lost
        with the connection): the task's status is read again before it
        starts (Dispatcher.settle)."""
        lane: Lane | None = None
        here = False
        if found is not None:
            queue, owner = found
            lane = self.lanes.lane(queue)
            # In a rate limit's line or the delayed heap it never reaches a
            # lane; else, if this broker owns it, it is in its lane or on its
            # way there.
            here = (
                not self.rates.cancel(task_id)
                and not self.delayed.cancel(task_id)
                and owner == self.store.node
            )
            self.metrics.cancelled(queue)
            logger.info(
                "task cancelled task=%s queue=%s owner=%s",
                task_id,
                queue,
                owner or "-",
                extra={"action": "task_cancelled"},
            )
        for each in held:
            if each is lane and found is not None:
                each.dispatcher.settle(task_id, found[0], here=here)
            else:
                each.dispatcher.settle(task_id, None, here=False, doubt=doubt)

    def _stop_running(self, lane: Lane, task_id: uuid.UUID) -> bool:
        """Cancel a task a worker of `lane` has taken, and stop its attempt."""
        run = lane.pool.flag(task_id)
        if run is None:
            return False  # between its attempts, or not started yet: nothing to stop

        def late(found: Found, error: BaseException | None) -> None:
            self._stop(lane, run, None if error is not None else found)

        waiter = self.store.cancel(task_id, self.dead_after, running=True)
        try:
            found = waiter.wait(self.wait, late=late)
        except TimeoutError:
            return False
        except BaseException:
            # The write may have committed all the same (its answer lost): the
            # attempt goes on, but a retry of it reads the task's status first.
            lane.pool.unflag(run)
            lane.dispatcher.doubt(task_id)
            raise
        return self._stop(lane, run, found)

    def _stop(self, lane: Lane, run: Running, found: Found) -> bool:
        """Stop a flagged attempt once the database shows its task cancelled;
        unflag it when the write cancelled nothing."""
        if found is None:
            lane.pool.unflag(run)
            return False
        lane.pool.interrupt(run)
        logger.info(
            "running task cancelled task=%s", run.task_id, extra={"action": "task_cancelled"}
        )
        return True
