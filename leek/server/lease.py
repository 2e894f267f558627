"""The lease: a broker starts tasks only while its heartbeat is fresh.

Another broker adopts this one's tasks once its heartbeat is HEARTBEAT_TIMEOUT
old by the database's clock. The heartbeat a broker commits was written after
it was sent, so while less than the lease (HEARTBEAT_TIMEOUT less a margin)
has passed on this broker's monotonic clock since it sent the last heartbeat
that committed, no other broker has counted it dead. Past that (a database
that stopped answering, a paused machine or process), its workers take no
task and `ping` reports it unhealthy. The next heartbeat that commits renews
the lease; before the workers take a task again, the tasks held in memory
that the database no longer shows as this broker's (another adopted them
meanwhile) are dropped, so that none runs twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: Share of HEARTBEAT_TIMEOUT kept as the margin, at least one heartbeat interval.
MARGIN_SHARE = 0.25


class Lease:
    """Whether this broker may start tasks, on its own monotonic clock."""

    def __init__(self, timeout: float, interval: float) -> None:
        margin = max(interval, timeout * MARGIN_SHARE)
        self.length = max(timeout - margin, interval)  # seconds a committed heartbeat holds
        self._lock = threading.Lock()
        self._sent = 0.0  # time.monotonic() when the last committed heartbeat was sent
        self._until = 0.0  # the lease ends then; 0 until a first heartbeat commits
        self._told = False  # the loss is logged
        #: Times the lease was regained after it ran out: a worker that took a
        #: task before one starts it only once the database says it is still
        #: this broker's (workers.Pool).
        self.regains = 0

    def held(self) -> bool:
        """True while tasks may start."""
        return time.monotonic() < self._until

    @property
    def message(self) -> str:
        """Why no task starts, or "" while the lease is held."""
        if self.held() or not self._sent:
            return ""
        return f"lease lost: no heartbeat committed for {time.monotonic() - self._sent:.0f} s"

    def tell(self) -> None:
        """Log the loss of the lease, once per loss."""
        message = self.message
        if message and not self._told:
            self._told = True
            logger.error(
                "%s; no task starts until one commits and the tasks held are checked",
                message,
                extra={"action": "lease_lost"},
            )

    def committed(self, sent: float, reclaim: Callable[[], int]) -> None:
        """A heartbeat sent at `sent` (time.monotonic()) has committed. When
        the lease had run out, `reclaim` first drops the tasks held that are
        no longer this broker's and returns how many it dropped."""
        with self._lock:
            lost = self._sent and not self.held()
            if lost:
                # Told here when no heartbeat began while it was lost: the
                # process stopped (SIGSTOP, a frozen VM) after this one began.
                self.tell()
                dropped = reclaim()
                logger.warning(
                    "lease regained dropped=%s: tasks resume",
                    dropped,
                    extra={"action": "lease_regained"},
                )
                self.regains += 1
            self._sent = max(self._sent, sent)
            self._until = self._sent + self.length
            self._told = False
