"""Recovery: the tasks a broker must run though no client pushed them to it.

At start, a broker requeues what its own last life left running
(`Store.interrupt_running`) and loads every unfinished task it owns
(`Store.owned`). Then, every SWEEP_INTERVAL, the `Adopter` claims the tasks
nobody else will run: spooled rows, written by clients while no broker
answered, and the unfinished tasks of brokers that stopped or went silent past
HEARTBEAT_TIMEOUT.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .. import conf
from .ops import Waiter
from .rows import Ready
from .store import Store

logger = logging.getLogger(__name__)

#: Seconds after which the tasks of a broker already adopted from are looked
#: for again though its row has not changed (a broker that was paused past
#: HEARTBEAT_TIMEOUT may have committed a task on waking, before it died for good).
LOOK_AGAIN_AFTER = 300.0


class Adopter:
    """Claims spooled tasks and the unfinished tasks of stopped or silent brokers.

    A gone broker's tasks are found only by walking the unfinished tasks
    (nothing indexes `broker`), so that walk runs once per gone broker: again
    when its row changes (it came back and went again) or LOOK_AGAIN_AFTER
    later, not at every sweep while its row stays in the table.

    A claim still not committed after WRITE_WAIT seconds is left to commit:
    the tasks it claims go to the broker's queues when it does, and no other
    claim is made meanwhile.
    """

    def __init__(
        self, store: Store, dead_after: float, queues: frozenset[str] | None = None
    ) -> None:
        self.store = store
        self.dead_after = dead_after
        self.queues = queues  # claim only tasks of these queues (None: every queue)
        self._taken: dict[str, Any] = {}  # gone broker -> its heartbeat when adopted from
        self._looked_at = time.monotonic()
        self._claim: Waiter | None = None  # the last claim made

    def __call__(self) -> list[Ready]:
        """The tasks claimed now; none while the last claim has not committed."""
        if self._claim is not None and not self._claim.resolved:
            return []
        again = time.monotonic() - self._looked_at >= LOOK_AGAIN_AFTER

        def walk(gone: dict[str, Any]) -> list[str]:
            return [name for name, beat in gone.items() if again or self._taken.get(name) != beat]

        silent_since = time.time() - self.dead_after
        claim = self.store.adopt(silent_since, walk, "interrupted: its broker stopped", self.queues)
        self._claim = claim
        wait = float(conf.get("WRITE_WAIT"))
        found: list[Ready]
        try:
            # Once committed, the tasks found, and those of every broker in _taken, are ours.
            found, self._taken = claim.wait(wait, late=self._late)
        except TimeoutError:
            logger.warning(
                "sweep not committed within %ss; its tasks run when it commits",
                wait,
                extra={"action": "sweep_late"},
            )
            return []
        if again:
            self._looked_at = time.monotonic()
        return found

    def _late(self, value: Any, error: BaseException | None) -> None:
        """A claim committed after its sweep stopped waiting: run what it took."""
        if error is not None:
            return  # nothing was claimed; the writer logged why
        found, self._taken = value
        logger.info(
            "adopted tasks count=%s after the sweep's wait",
            len(found),
            extra={"action": "tasks_adopted"},
        )
        if found:
            self.store.route(found)
