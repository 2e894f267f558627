"""When a thread polls its socket before it sleeps on it: the spin.

A read may spin first (the SPIN setting): poll the socket without blocking
for up to that many seconds before it sleeps in the kernel. Waking a sleeping
thread costs tens of microseconds (a round trip on 127.0.0.1 between two
sleeping Python processes took 84 µs on a 2-core virtual machine, and 7 µs
between two spinning ones), more than a ping's or a SQLite push's own work. A
connection spins only while its recent waits were shorter than the spin (a
client pushing in a loop; not one that pushes now and then, nor one waiting on
a PostgreSQL commit), and only while no other connection of the process
received a frame in the last SHARED_WINDOW seconds, one thread at a time: a
thread that polls holds the interpreter lock, which the others need for the
frames they have. Between two polls it yields its core to any process waiting
for it, which on busy cores may be its peer.

The connections' reads (sockets.py), the broker's event loop (server/loop.py)
and its waits for PostgreSQL's answer to an insert (server/store/wire.py) spin
alike; `Spins` counts the waits for a frame and `AnswerSpins` those for the
database, for the broker's figures. A wait for the database, and on
PostgreSQL the loop's wait for the next request after a push, spin only while
none of the broker's tasks runs (`RUNS`).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

#: The weight of the last wait for a frame in the moving average that decides
#: whether the next wait spins.
WAIT_WEIGHT = 0.25
#: Seconds since another connection of the process last received a frame
#: within which none spins: a thread that polls keeps the interpreter from
#: the others, which have work (their frames to handle) while it waits.
SHARED_WINDOW = 0.002
#: Held by the thread that spins: one thread of a process at a time, so that
#: threads spinning side by side never take the interpreter from each other.
_SPINNER = threading.Lock()
T = TypeVar("T")


def _unlock_spinner() -> None:
    """In a forked child: a spin lock that no thread of the parent can hold,
    and no task of the parent's running."""
    global _SPINNER
    _SPINNER = threading.Lock()
    RUNS.forget()


os.register_at_fork(after_in_child=_unlock_spinner)


class Spins:
    """The waits of every connection of this process that polled (`polled`),
    and of those, the ones that received without sleeping (`received`)."""

    polled = 0
    received = 0


class AnswerSpins(Spins):
    """The same, of a broker's waits for its database's answer (wire.py)."""

    polled = 0
    received = 0


class Latest:
    """When the connections of this process last received a frame: the
    latest one, and the latest of any other connection than that one's.
    Updated without a lock: a lost update only delays or allows one spin."""

    owner: object = None
    at = 0.0
    other_at = 0.0

    @classmethod
    def received(cls, owner: object, now: float) -> None:
        if cls.owner is not owner:
            cls.other_at, cls.owner = cls.at, owner
        cls.at = now

    @classmethod
    def alone(cls, owner: object, now: float) -> bool:
        """Whether no other connection than `owner`'s received a frame lately."""
        other = cls.at if cls.owner is not owner else cls.other_at
        return now - other > SHARED_WINDOW


class Runs:
    """The tasks this process runs now, and when one last started or ended.
    A broker's wait for its database's answer polls only while none runs and
    none started or ended within SHARED_WINDOW (`still`): a task needs the
    cores, and on the threads pool the interpreter lock, that a poll would
    hold. A worker enters `RUNS` around each task it runs."""

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        """No task running (in a forked child: the parent's are not its own)."""
        self.count = 0
        self.at = 0.0
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        with self._lock:
            self.count += 1
            self.at = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.count -= 1
            self.at = time.monotonic()

    def still(self) -> bool:
        """Whether no task runs, nor started or ended lately."""
        return not self.count and time.monotonic() - self.at > SHARED_WINDOW


#: The task runs of this process.
RUNS = Runs()


def until(attempt: Callable[[], T | None], seconds: float, tally: type[Spins] = Spins) -> T | None:
    """The first answer of `attempt` other than None, asked again and again
    for up to `seconds`; None when none came. Counted in `tally`."""
    deadline = time.perf_counter() + seconds
    tally.polled += 1
    while True:
        found = attempt()
        if found is not None:
            tally.received += 1
            return found
        if time.perf_counter() >= deadline:
            return None
        # A process the kernel would run on this core goes first: on busy
        # cores the one this thread spins on may be its peer's.
        os.sched_yield()


def poll(
    owner: object, recv_into: Callable[..., int], view: memoryview, seconds: float
) -> int | None:
    """What arrives within `seconds` on `owner`'s socket, received into `view`
    without blocking (`recv_into` is the socket's); -1 when nothing did, None
    when this thread may not spin now: another connection of the process
    received a frame lately, or another thread spins."""
    if not Latest.alone(owner, time.monotonic()):
        return None

    def received() -> int | None:
        try:
            got: int = recv_into(view, 0, socket.MSG_DONTWAIT)
            return got
        except BlockingIOError:
            return None

    spun = alone(received, seconds)
    if spun is None:
        return None
    got = spun[0]
    return -1 if got is None else got


def alone(
    attempt: Callable[[], T | None], seconds: float, tally: type[Spins] = Spins
) -> tuple[T | None] | None:
    """`until`, by one thread of the process at a time: (its answer,), or None
    at once, with no poll, while another thread spins."""
    if not _SPINNER.acquire(blocking=False):
        return None
    try:
        return (until(attempt, seconds, tally),)
    finally:
        _SPINNER.release()
