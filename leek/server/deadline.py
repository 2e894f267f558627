"""A stop that cannot hang: past its deadline the broker says what held it, and exits.

Each wait of a graceful stop has its own bound (the grace of the running
tasks, the replies owed, the last commits), but code outside them can still
hold a stop for ever: a project's receiver of broker_stopping that waits on
the network, a thread that never ends at the interpreter's exit. So the stop
as a whole has a deadline, SHUTDOWN_TIMEOUT seconds from its start, and each
of its own waits takes what the deadline leaves (`Deadline.left`): a database
that hangs costs the stop its deadline, and it still ends as one. Past the
deadline, the broker logs one ERROR record (action ``stop_overran``) with the
stack of each of its threads, and exits at once with status 1.

A second SIGTERM or SIGINT during a stop (Ctrl-C twice) ends it the same way
at once (action ``stop_cut_short``), with the same status.

Either ends the broker as SIGKILL would, and loses what SIGKILL loses: nothing
acknowledged. Every push answered is committed; a task still running runs
again at the next start, its attempt counted as one a kill cut short
(WorkerLost), and one whose outcome was not yet written runs again too (at
least once). The worker processes go with the broker
(PR_SET_PDEATHSIG, child.py).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback

from ..threads import Named

logger = logging.getLogger(__name__)

#: The status of `leek start` after a stop cut short.
CUT_SHORT = 1
#: Seconds of the deadline no wait of the stop takes: its last steps and exit.
RESERVE = 1.0


class Deadline:
    """The deadline of one stop: `start` it as the stop begins."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._ends: float | None = None  # time.monotonic() at the deadline, once started
        self._thread = Named(target=self._watch, name="leek-deadline", daemon=True)

    def start(self) -> None:
        """Count from now (once; a stop that becomes another keeps its start)."""
        if self._thread.ident is None:
            self._ends = time.monotonic() + self.seconds
            self._thread.start()

    def left(self, most: float) -> float:
        """Seconds a wait of the stop may take: `most`, or what the deadline
        leaves but RESERVE once the stop began. A database that hangs (its
        server stopped, a lock never granted) then costs the stop its
        deadline at most, and the stop still ends as one: logged, its last
        steps taken, status 0."""
        if self._ends is None:
            return most
        return max(0.0, min(most, self._ends - RESERVE - time.monotonic()))

    def _watch(self) -> None:
        time.sleep(self.seconds)
        end(
            "stop_overran",
            f"the stop overran SHUTDOWN_TIMEOUT ({self.seconds:g} s): exiting now",
        )


def end(action: str, why: str) -> None:
    """Log `why` and every thread's stack as one ERROR record; exit at once.

    os._exit: no atexit handler and no thread is waited for, since one of
    them may be what holds the stop."""
    logger.error(
        "%s; the tasks still running run again at the next start. Threads:\n%s",
        why,
        stacks(),
        extra={"action": action},
    )
    os._exit(CUT_SHORT)


def stacks() -> str:
    """The stack of each thread of this process, named, innermost call last."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        stack = "".join(traceback.format_stack(frame))
        parts.append(f"Thread {names.get(ident, '?')} ({ident}):\n{stack}")
    return "\n".join(parts)
