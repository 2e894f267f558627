"""Who gets a connection, who makes room, and how long a stranger may wait.

Until a connection has sent one valid frame (signed with the shared secret)
it is a stranger, and strangers are held cheaply and briefly:

* `Gate` counts the connections. It holds at most MAX_CONNECTIONS (fewer when
  the process's descriptor limit leaves less room: RESERVE descriptors always
  stay free, so the database can reconnect and workers can start), and at most
  MAX_UNAUTHENTICATED strangers. A new connection past either limit closes the
  oldest stranger to make room, as sshd's MaxStartups does, so a flood of
  silent or slow connections never locks out a client: a client's connection
  is the newest when it sends its first frame. Authenticated connections keep
  their place. A new connection is refused, closed at once, only when every
  connection held is authenticated, or while CLOSING of those made to leave
  still wait to be closed (so descriptors stay within the limit under a flood).
  A stranger has FIRST_FRAME_TIMEOUT seconds from its accept to send a valid
  frame (its TLS handshake included), then it is closed.
* `Lobby` holds the connections that have sent nothing yet, in one selector on
  one thread: a connection gets a thread of its own only once bytes arrive.

Refusals, evictions and a failing accept are logged at most once per
LOG_INTERVAL, with their counts; `Gate.figures` gives every count to the
broker's stats.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import selectors
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..threads import Named

security = logging.getLogger("leek.security")
logger = logging.getLogger(__name__)

#: Descriptors kept free for the database, worker processes and log files.
RESERVE = 64
#: Connections made to leave whose descriptors may still wait to be closed
#: before a newcomer is refused: under a flood, closing lags behind accepting.
CLOSING = 16
#: Seconds between two log lines of one kind of refusal.
LOG_INTERVAL = 10.0
#: Seconds between two counts of the process's open descriptors.
MEASURE_INTERVAL = 1.0


@dataclass(eq=False)
class Conn:
    """One accepted connection."""

    sock: socket.socket
    address: Any
    accepted: float = field(default_factory=time.monotonic)
    dropped: bool = False

    def drop(self) -> None:
        """Shut the connection; whoever holds it closes it (its thread, or the lobby)."""
        self.dropped = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class Every:
    """True at most once per `interval` seconds: for log lines under a flood."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self._last = -interval
        self._lock = threading.Lock()

    def due(self) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.interval:
                return False
            self._last = now
            return True


class Gate:
    """The connections held, strangers oldest first, and the limits on them."""

    def __init__(
        self, max_connections: int, max_unauthenticated: int, first_frame_timeout: float
    ) -> None:
        self.max_connections = max_connections
        self.max_unauthenticated = max_unauthenticated
        self.first_frame_timeout = first_frame_timeout
        self._lock = threading.Lock()
        self._strangers: OrderedDict[socket.socket, Conn] = OrderedDict()
        self._trusted: dict[socket.socket, Conn] = {}
        self._all: dict[socket.socket, Conn] = {}  # the above, and dropped ones not yet closed
        self._room = max_connections  # what the descriptor limit allows
        self._measured = -MEASURE_INTERVAL
        self.refused = self.evicted = self.expired = 0
        self._refused_log, self._evicted_log = Every(), Every()

    def admit(self, sock: socket.socket, address: Any) -> bool:
        """Hold a new connection, closing the oldest stranger when it needs the
        room. False (refused) when every connection held is authenticated, or
        while CLOSING connections made to leave wait to be closed."""
        evicted: Conn | None = None
        with self._lock:
            limit = min(self.max_connections, self._room)
            held = len(self._strangers) + len(self._trusted)
            closing = len(self._all) - held
            crowded = held >= limit or len(self._strangers) >= self.max_unauthenticated
            refused = crowded and (not self._strangers or closing >= CLOSING)
            if refused:
                self.refused += 1
            else:
                if crowded:
                    _, evicted = self._strangers.popitem(last=False)
                    self.evicted += 1
                conn = Conn(sock, address)
                self._strangers[sock] = conn
                self._all[sock] = conn
        if refused:
            if self._refused_log.due():
                security.warning(
                    "connection refused client=%s open=%s limit=%s closing=%s refused=%s",
                    address[0],
                    held,
                    limit,
                    closing,
                    self.refused,
                    extra={"action": "connection_refused"},
                )
            return False
        if evicted is not None:
            evicted.drop()
            if self._evicted_log.due():
                security.warning(
                    "unauthenticated connection closed to make room client=%s open=%s "
                    "limit=%s unauthenticated_limit=%s evicted=%s",
                    evicted.address[0],
                    held,
                    limit,
                    self.max_unauthenticated,
                    self.evicted,
                    extra={"action": "connection_evicted"},
                )
        return True

    def held(self, sock: socket.socket) -> Conn | None:
        """The connection of `sock`, or None once it has left."""
        with self._lock:
            return self._all.get(sock)

    def trust(self, conn: Conn) -> None:
        """`conn` sent a valid frame: it keeps its place from now on."""
        with self._lock:
            if self._strangers.pop(conn.sock, None) is not None:
                self._trusted[conn.sock] = conn

    def leave(self, conn: Conn) -> None:
        """`conn` is closed."""
        with self._lock:
            self._strangers.pop(conn.sock, None)
            self._trusted.pop(conn.sock, None)
            if self._all.get(conn.sock) is conn:
                del self._all[conn.sock]

    def expire(self) -> float | None:
        """Close the strangers past their first-frame deadline; seconds until
        the next deadline, None when no stranger is held."""
        now = time.monotonic()
        late: list[Conn] = []
        wait = None
        with self._lock:
            while self._strangers:
                conn = next(iter(self._strangers.values()))
                deadline = conn.accepted + self.first_frame_timeout
                if deadline > now:
                    wait = deadline - now
                    break
                self._strangers.popitem(last=False)
                late.append(conn)
            self.expired += len(late)
        for conn in late:
            conn.drop()
        return wait

    def drop_all(self) -> None:
        """Shut every connection held, so their threads end."""
        with self._lock:
            conns = list(self._all.values())
            self._strangers.clear()
            self._trusted.clear()
        for conn in conns:
            conn.drop()

    def measure(self) -> None:
        """Count the process's descriptors (at most once per MEASURE_INTERVAL)
        and set the room their limit leaves for connections."""
        now = time.monotonic()
        if now - self._measured < MEASURE_INTERVAL:
            return
        self._measured = now
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        in_use = open_descriptors()
        if soft == resource.RLIM_INFINITY or in_use is None:
            self._room = self.max_connections
            return
        with self._lock:
            held = len(self._all)
        self._room = max(0, soft - (in_use - held) - RESERVE)

    def figures(self) -> dict[str, int]:
        """The counts, for the broker's stats."""
        with self._lock:
            return {
                "open": len(self._strangers) + len(self._trusted),
                "authenticated": len(self._trusted),
                "unauthenticated": len(self._strangers),
                "limit": min(self.max_connections, self._room),
                "refused": self.refused,
                "evicted": self.evicted,
                "expired": self.expired,
            }


def open_descriptors() -> int | None:
    """How many descriptors this process has open; None where that cannot be read."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder)) - 1  # less the one listing it
        except OSError:
            continue
    return None


class Waking:
    """A selector one thread waits on, and a socket pair through which any
    other thread wakes it: the key of the pair's end has no data."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self.selector.register(self._read, selectors.EVENT_READ, None)

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full: it will wake anyway
            self._write.send(b"\0")

    def woken(self) -> None:
        """Take the bytes that woke it."""
        with contextlib.suppress(OSError):
            self._read.recv(4096)

    def close(self) -> None:
        self.selector.close()
        self._read.close()
        self._write.close()


class Lobby:
    """Connections that have sent nothing yet, on one selector and one thread.

    A connection leaves the lobby for `hand_off` (a thread of its own) when
    its first bytes arrive, and is closed here when the gate dropped it
    (evicted, or past its first-frame deadline) before that."""

    def __init__(self, gate: Gate, hand_off: Callable[[Conn], None]) -> None:
        self.gate = gate
        self.hand_off = hand_off
        self._waking = Waking()
        self._selector = self._waking.selector
        self._arrivals: deque[Conn] = deque()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = Named(target=self._run, name="leek-lobby", daemon=True)
        self._thread.start()

    def add(self, conn: Conn) -> None:
        """Wait in the lobby for its first bytes."""
        self._arrivals.append(conn)
        self._waking.wake()

    def _run(self) -> None:
        while not self._stopping:
            while self._arrivals:
                conn = self._arrivals.popleft()
                if conn.dropped:
                    self._close(conn)
                    continue
                try:
                    self._selector.register(conn.sock, selectors.EVENT_READ, conn)
                except (OSError, ValueError) as exc:  # closed under it: cannot wait
                    self._fail(conn, exc)
            wait = self.gate.expire()
            for key, _ in self._selector.select(wait):
                conn = key.data
                if conn is None:
                    self._waking.woken()
                    continue
                self._selector.unregister(conn.sock)
                if conn.dropped:
                    self._close(conn)
                    continue
                try:
                    self.hand_off(conn)
                except RuntimeError as exc:  # no thread can be started
                    self._fail(conn, exc)

    def _fail(self, conn: Conn, exc: BaseException) -> None:
        logger.error(
            "connection dropped in the lobby client=%s error=%s",
            conn.address[0],
            exc,
            extra={"action": "connection_failed"},
        )
        self._close(conn)

    def _close(self, conn: Conn) -> None:
        self.gate.leave(conn)
        conn.sock.close()

    def stop(self) -> None:
        """Stop the thread and close every connection still in the lobby (once:
        a server that fails to bind stops it, then closes)."""
        if self._selector.get_map() is None:  # stopped already
            return
        self._stopping = True
        self._waking.wake()
        if self._thread is not None:
            self._thread.join(5)
        for key in list(self._selector.get_map().values()):
            if key.data is not None:
                self._close(key.data)
        while self._arrivals:
            self._close(self._arrivals.popleft())
        self._waking.close()
