"""Recovery: the tasks a broker must run though no client pushed them to it.

At start, a broker counts the attempts its own last life left running
(`interrupt_running`) and loads every unfinished task it owns
(`Store.owned`). Then, every SWEEP_INTERVAL, the `Adopter` claims the tasks
nobody else will run: spooled rows, written by clients while no broker
answered, and the unfinished tasks of brokers that stopped or went silent past
HEARTBEAT_TIMEOUT.

An attempt cut short by its broker's end counts like any other (store/cut.py),
so a task that kills every broker that runs it is stopped after its 1 +
max_retries attempts, not started at every restart: it fails for good, and
the ON_FAILURE hooks and ADMINS hear of it once (notify.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .. import conf
from ..logs import task_extra
from .notify import run_hooks_later
from .ops import Waiter
from .rows import Ready
from .store import Store
from .store.cut import Cut

logger = logging.getLogger(__name__)

#: Seconds after which the tasks of a broker already adopted from are looked
#: for again though its row has not changed (a broker that was paused past
#: HEARTBEAT_TIMEOUT may have committed a task on waking, before it died for good).
LOOK_AGAIN_AFTER = 300.0


def interrupt_running(store: Store, timeout: float) -> int:
    """Count the attempts this broker's last life left running, those its
    workers' file of starts names included (starts.py), and begin that file
    anew; tell of the tasks that failed for good. Returns how many attempts."""
    cut: Cut = store.nodes.interrupt_running(store.starts.previous()).wait(timeout)
    store.starts.begin()
    _tell(cut)
    return cut.count


def _tell(cut: Cut) -> None:
    for outcome in cut.final:
        logger.error(
            "task failed for good: its broker ended during its last attempt task=%s name=%s "
            "attempt=%s error=%s",
            outcome.task_id,
            outcome.name,
            outcome.attempt,
            outcome.exc_type,
            extra=task_extra(
                "task_lost",
                outcome.task_id,
                outcome.name,
                attempt=outcome.attempt,
                exc_type=outcome.exc_type,
                exc_message=outcome.exc_message,
                traceback=outcome.traceback,
            ),
        )
    run_hooks_later(cut.final)


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

        claim = self.store.nodes.adopt(self.dead_after, walk, self.queues)
        self._claim = claim
        wait = float(conf.get("WRITE_WAIT"))
        found: list[Ready]
        try:
            # Once committed, the tasks found, and those of every broker in _taken, are ours.
            found, self._taken, cut = claim.wait(wait, late=self._late)
        except TimeoutError:
            logger.warning(
                "sweep not committed within %ss; its tasks run when it commits",
                wait,
                extra={"action": "sweep_late"},
            )
            return []
        _tell(cut)
        if again:
            self._looked_at = time.monotonic()
        return found

    def _late(self, value: Any, error: BaseException | None) -> None:
        """A claim committed after its sweep stopped waiting: run what it took."""
        if error is not None:
            return  # nothing was claimed; the writer logged why
        found, self._taken, cut = value
        _tell(cut)
        logger.info(
            "adopted tasks count=%s after the sweep's wait",
            len(found),
            extra={"action": "tasks_adopted"},
        )
        if found:
            self.store.route(found)
