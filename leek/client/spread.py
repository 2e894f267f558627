"""Which broker a push goes to: spread over the healthy brokers, a failed one left to rest.

With SPREAD on (the default) and several brokers, a thread's push connection
goes to the brokers of `conf.brokers()` in turn, and the thread keeps it while it works: the
choice is made when the thread connects, never per push. The turn is one
counter for the process, started at random: the threads of a process divide
evenly over the brokers, and processes that start together do not all begin
with the same broker.

A broker that fails a push (refused, reset, timed out, could not commit, a
reply that cannot be verified) rests: every thread of the process skips it
for BROKER_BACKOFF seconds, doubled at each failure that follows a rest, up
to BROKER_BACKOFF_MAX, and the push goes on to the next broker at once. A
failure seen while the broker rests starts no new rest, so threads that meet
one outage together count it once. A broker that answers a new connection is
healthy again. When every broker rests, a push still tries the one whose rest
ends first before the database, so the first broker back after an outage of
them all is used again at once.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

from .. import conf

logger = logging.getLogger(__name__)

Address = tuple[str, int]

#: Doublings past which a rest grows no longer (BROKER_BACKOFF_MAX caps it first).
MAX_DOUBLINGS = 32


@dataclass(frozen=True)
class Rest:
    """A broker's rest: its failures in a row, when the rest began and ends
    (time.monotonic())."""

    failures: int
    began: float
    until: float


_lock = threading.Lock()
_rests: dict[Address, Rest] = {}
_turn = itertools.count(random.randrange(1 << 16))  # noqa: S311 (a start, not a secret)


def _start_anew() -> None:
    """In a forked child: a turn of its own, so that the workers a pre-fork
    server forks together do not all begin with the same broker, and a lock
    no thread of the parent can hold."""
    global _lock, _turn
    _lock = threading.Lock()
    _turn = itertools.count(random.randrange(1 << 16))  # noqa: S311 (a start, not a secret)


os.register_at_fork(after_in_child=_start_anew)


def order(addresses: list[Address]) -> list[Address]:
    """The brokers a new push connection tries, in order: the healthy ones,
    from the next in turn, then the resting one whose rest ends first."""
    now = time.monotonic()
    with _lock:
        resting = {a: _rests[a].until for a in addresses if a in _rests}
    healthy = [a for a in addresses if resting.get(a, 0.0) <= now]
    if healthy:
        start = next(_turn) % len(healthy)
        healthy = healthy[start:] + healthy[:start]
    last = sorted((until, a) for a, until in resting.items() if until > now)[:1]
    return healthy + [a for _, a in last]


def resting(address: Address) -> bool:
    """Whether pushes skip `address` now."""
    rest = _rests.get(address)
    return rest is not None and rest.until > time.monotonic()


def failed(address: Address, error: BaseException) -> None:
    """Note that `address` failed a push: it rests, unless it rests already."""
    now = time.monotonic()
    with _lock:
        rest = _rests.get(address)
        if rest is not None and rest.until > now:
            return
        failures = rest.failures + 1 if rest is not None else 1
        doublings = min(failures - 1, MAX_DOUBLINGS)
        seconds = min(
            float(conf.get("BROKER_BACKOFF")) * 2**doublings, float(conf.get("BROKER_BACKOFF_MAX"))
        )
        _rests[address] = Rest(failures, now, now + seconds)
    logger.warning(
        "broker failed a push, pushes skip it for a while address=%s:%s failures=%s "
        "seconds=%s error=%s",
        address[0],
        address[1],
        failures,
        seconds,
        error,
        extra={"action": "broker_rests"},
    )


def answered(address: Address, since: float) -> None:
    """Note that `address` answered a connection made at `since`
    (time.monotonic()): its rest ends, unless a failure seen since began it."""
    if address not in _rests:
        return
    with _lock:
        rest = _rests.get(address)
        if rest is not None and rest.began <= since:
            del _rests[address]


def forget() -> None:
    """End every rest."""
    with _lock:
        _rests.clear()


@receiver(setting_changed)
def _reset(**kwargs: Any) -> None:
    if kwargs.get("setting") == "LEEK":
        forget()
