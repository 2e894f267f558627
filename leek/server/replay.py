"""The broker's guard against replayed frames.

Every request frame carries its sender's clock and a random nonce under its
signature (protocol/frame.py). `ReplayGuard.check` runs on each frame whose
signature matched, before its body is unpickled, and refuses (StaleFrame) a
frame stamped more than `window` seconds from the broker's clock either way,
or before the broker started (a frame captured before a restart), and
(ReplayedFrame) a frame whose nonce it has seen.

A nonce only needs remembering while its frame's stamp is inside the window;
older ones expire. The nonces are kept in sets per tenth of a second of stamp,
so expiring or evicting is dropping whole sets. Their number is capped at
`capacity`: past it the oldest sets are evicted, and from then on every frame
stamped before the end of the newest evicted set is refused as stale, so a
frame the guard has forgotten can never pass. `floor` only rises: it starts at
the broker's start and follows the sets dropped, by age or by the cap, so a
clock set back cannot open the window again either. A busy broker remembers
fewer seconds than its window, and refuses frames that took longer than that
to arrive; a client whose frame is refused as stale stamps it anew and sends
it again (client/connection.py), so what it costs an honest client is a
round trip.

Refusals are counted for the ``stats`` verb.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable
from typing import NoReturn

from ..exceptions import ReplayedFrame, StaleFrame

#: Buckets of nonces per second of stamp.
BUCKETS_PER_SECOND = 10


class ReplayGuard:
    """The nonces seen within the window, and the stamps refused below `floor`."""

    def __init__(
        self,
        window: float,
        capacity: int,
        started: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window = window
        self.capacity = capacity
        self.clock = clock
        #: Frames stamped before this are refused: the start, then the end of
        #: the newest bucket dropped.
        self.floor = started
        self.started = started
        self.stale = 0  # frames refused for their stamp
        self.replayed = 0  # frames refused for their nonce
        self._buckets: dict[int, set[bytes]] = {}
        self._order: list[int] = []  # the buckets' keys, a heap
        self._size = 0
        self._lock = threading.Lock()

    def check(self, sent: float, nonce: bytes) -> None:
        """Record a frame's nonce; raise StaleFrame or ReplayedFrame when the
        frame is refused."""
        now = self.clock()
        if not (now - self.window <= sent <= now + self.window and sent >= self.floor):
            self._refuse_stale(sent, nonce, now)
        key = math.floor(sent * BUCKETS_PER_SECOND)
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if sent < self.floor:  # the floor rose since the test above
                    self._refuse_stale(sent, nonce, now)
                bucket = self._buckets[key] = set()
                heapq.heappush(self._order, key)
                self._expire(now)
            elif nonce in bucket:
                self.replayed += 1
                raise ReplayedFrame(
                    "frame refused: its nonce was seen before, so it is a replay",
                    nonce=nonce,
                )
            bucket.add(nonce)
            self._size += 1
            if self._size > self.capacity:
                self._evict()

    def _refuse_stale(self, sent: float, nonce: bytes, now: float) -> NoReturn:
        self.stale += 1
        if sent < self.started:
            why = f"stamped {self.started - sent:.3f} s before this broker started"
        elif sent < self.floor and now - self.window <= sent <= now + self.window:
            why = (
                f"stamped {now - sent:.3f} s ago, before the oldest frame this broker "
                "still remembers"
            )
        else:
            why = f"stamped {sent - now:+.3f} s from the broker's clock, outside ±{self.window:g} s"
        raise StaleFrame(f"frame refused: {why}", nonce=nonce)

    def _drop(self) -> None:
        """Drop the oldest bucket; the floor rises to its end."""
        key = heapq.heappop(self._order)
        self._size -= len(self._buckets.pop(key))
        self.floor = max(self.floor, (key + 1) / BUCKETS_PER_SECOND)

    def _expire(self, now: float) -> None:
        """Drop the buckets whose frames the window refuses anyway."""
        oldest = math.floor((now - self.window) * BUCKETS_PER_SECOND)
        while self._order and self._order[0] < oldest:
            self._drop()

    def _evict(self) -> None:
        """Drop the oldest buckets until the nonces are within the cap again."""
        while self._size > self.capacity and self._order:
            self._drop()

    def counts(self) -> dict[str, int]:
        """Frames refused, by reason, and nonces remembered."""
        return {"stale": self.stale, "replayed": self.replayed, "remembered": self._size}
