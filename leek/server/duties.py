"""The broker's periodic duties, on one thread of their own.

Each duty is a callable and an interval in seconds; the thread wakes every
TICK seconds and runs the duties whose interval has passed since their last
run, one after another. A duty first runs at the first tick, unless it is
registered with a wait before its first run (a duty the broker has just run
itself, as its start's sweep), and an interval of 0 runs it at every tick. A duty
that raises is logged and runs again at its next turn. The broker's duties
(broker.py) are the workers' watchdog, SQLite's checkpoint, the writers'
nudge, the heartbeat, the periodic tasks, the sweep and the trim of freed
memory (memory.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..threads import Named

logger = logging.getLogger(__name__)

#: Seconds between two ticks of the duties thread.
TICK = 0.1


class Duties:
    """The broker's periodic work, on a thread of its own."""

    def __init__(self, interval: float = TICK) -> None:
        self.interval = interval
        self._jobs: list[tuple[float, Callable[[], object], list[float]]] = []
        self._stop = threading.Event()
        self._thread = Named(target=self._loop, name="leek-duties", daemon=True)

    def every(self, seconds: float, job: Callable[[], object], first: float = 0.0) -> None:
        """Run `job` every `seconds`, first at the tick `first` seconds from now."""
        # Its last run counted from now, not from 0: the clock counts from the
        # host's boot, and a duty would run at the first tick on a host up
        # longer than its interval and not on another.
        self._jobs.append((seconds, job, [time.monotonic() - seconds + first]))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            for seconds, job, last in self._jobs:
                if now - last[0] < seconds:
                    continue
                last[0] = now
                try:
                    job()
                except Exception:
                    logger.exception(
                        "broker duty failed duty=%s",
                        getattr(job, "__name__", job),
                        extra={"action": "duty_failed"},
                    )
