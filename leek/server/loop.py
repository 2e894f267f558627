"""One thread that reads every plain client connection: the broker's event loop.

Each round, the loop waits on one selector for the connections with bytes to
read, reads each of them once, serves every whole frame they hold (peer.py),
and then writes the pushes of the round in one commit (`Endpoint.gathered`):
four clients pushing at once are four inserts in one transaction, read and
answered by one thread. With a thread per connection, each would take the
interpreter lock from the others on every system call, and a wakeup and a
hand-off of the lock cost more than most of the calls themselves.

A connection is read only while it owes nothing: while a reply is owed to it
(its push waits for the commit, or a verb is answered aside) or frames queued
for it wait to be sent (it does not read its replies), the loop takes it off
the selector (`park`), and whoever settles it (`resume`), on any thread,
brings it back. A connection's first frame must come within
FIRST_FRAME_TIMEOUT of its accept (the gate, admission.py), each frame within
FRAME_TIMEOUT of its first byte, and the next frame within IDLE_TIMEOUT; the
loop checks these every SCAN_INTERVAL and closes whoever is late.

With SPIN, the loop polls the selector before it sleeps, while the recent
waits for a frame were shorter than the spin (spin.py tells why); on
PostgreSQL (`spin_after_writes` off), after a round that wrote only while
none of the broker's tasks runs (`RUNS`), as its wait for the database's
answer polls: a task needs the cores, and on the threads pool the
interpreter lock, that a poll would hold.

TLS connections keep a thread each (tcp.py's Handler): OpenSSL's records are
read whole by blocking calls there.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..exceptions import ProtocolError
from ..protocol.sockets import FrameSocket
from ..protocol.spin import RUNS, WAIT_WEIGHT, until
from ..threads import Named
from .admission import Conn, Gate, Waking
from .peer import Peer

if TYPE_CHECKING:
    from .tcp import Endpoint, Gathered

logger = logging.getLogger(__name__)

#: Seconds between two checks of the connections' deadlines.
SCAN_INTERVAL = 0.1
#: Threads that answer the verbs which may read the database (stats, cancel,
#: sweep), so that one of them never holds up the loop.
ASIDE_THREADS = 4


class Reader:
    """A connection the loop reads: its peer, and when it last made progress."""

    __slots__ = ("conn", "frames", "peer", "parked", "since", "started", "owed_since")
    peer: Peer

    def __init__(self, conn: Conn, frames: FrameSocket) -> None:
        self.conn = conn
        self.frames = frames
        self.parked = False  # off the selector until it is settled
        self.since = time.monotonic()  # idle since (its last frame, or its accept)
        self.started = 0.0  # when the first byte of the frame being received came
        self.owed_since = 0.0  # when it was parked owing frames, or 0


class Aside:
    """Threads, started at once, that answer the verbs the loop hands them."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._calls: queue.SimpleQueue[tuple[Callable[..., object], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )

    def start(self) -> None:
        for number in range(self.size):
            name = f"leek-verb-{number}"
            Named(target=self._run, name=name, daemon=True).start()

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        self._calls.put((fn, args))

    def _run(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            fn, args = call
            try:
                fn(*args)
            except Exception:  # the peer answers its own errors: this is a defect
                logger.exception("answering aside failed", extra={"action": "request_failed"})

    def stop(self) -> None:
        for _ in range(self.size):
            self._calls.put(None)


class Loop:
    """The event loop of the plain connections, and the threads aside."""

    def __init__(self, endpoint: Endpoint, gate: Gate) -> None:
        self.endpoint = endpoint
        self.gate = gate
        limits = endpoint.limits
        self.limits = limits
        self.spin = limits.spin
        self.spin_after_writes = limits.spin_after_writes
        self._wait = 0.0  # seconds the loop waited for a frame, a moving average
        self._waking = Waking()
        self._selector = self._waking.selector
        self._readers: set[Reader] = set()
        self._silent: set[Conn] = set()  # connections that have sent nothing yet
        self._arrivals: deque[Conn] = deque()
        self._again: deque[Reader] = deque()  # settled, to serve again (any thread appends)
        self._lock = threading.Lock()  # a reader's parking and its settling, apart
        self._aside = Aside(ASIDE_THREADS)
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._aside.start()
        self._thread = Named(target=self._run, name="leek-loop", daemon=True)
        self._thread.start()

    def add(self, conn: Conn) -> None:
        """Serve a connection just accepted (and admitted by the gate)."""
        self._arrivals.append(conn)
        self._waking.wake()

    # -- the rounds ----------------------------------------------------------

    def _run(self) -> None:
        gathered = self.endpoint.gathered()
        scan = time.monotonic() + SCAN_INTERVAL
        while not self._stopping:
            try:
                scan = self._round(gathered, scan)
            except Exception:  # a defect: logged, and the loop serves on
                logger.exception("event loop round failed", extra={"action": "loop_failed"})
                time.sleep(0.01)  # a round that fails again fails no faster than this

    def _round(self, gathered: Gathered, scan: float) -> float:
        """One round: the new connections, the deadlines when due, then what
        is ready to read; the time of the next check of the deadlines."""
        while self._arrivals:
            self._arrive(self._arrivals.popleft())
        now = time.monotonic()
        if now >= scan:
            self._scan(now)
            scan = now + SCAN_INTERVAL
        events = [] if self._again else self._select(scan - now, gathered.wrote)
        with gathered:  # the round's pushes, in one commit
            while self._again:
                self._serve(self._again.popleft(), again=True)
            for key, _ in events:
                if key.data is None:
                    self._waking.woken()
                else:
                    self._serve(key.data)
        return scan

    def _serve(self, item: Reader | Conn, again: bool = False) -> None:
        """Serve one connection: its first bytes, what it sent, or what it
        holds once settled. A defect met on the way closes that connection,
        loudly, and the loop goes on with the others."""
        try:
            if isinstance(item, Conn):
                self._open(item)
            elif again:
                self._serve_again(item)
            else:
                self._read(item)
        except Exception:
            conn = item if isinstance(item, Conn) else item.conn
            logger.exception(
                "connection failed client=%s",
                conn.address[0],
                extra={"action": "connection_failed"},
            )
            if isinstance(item, Conn):
                self._silent.discard(item)
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._selector.unregister(item.sock)
                self._close_conn(item)
            else:
                self._close(item)

    def _select(self, timeout: float, wrote: bool) -> list[tuple[selectors.SelectorKey, int]]:
        """What is ready to read: polled first, with a spin, else waited for;
        `wrote`: whether the round before wrote."""
        select = self._selector.select
        began = time.perf_counter()
        events = None
        if (
            self.spin
            and self._wait < self.spin
            and (self.spin_after_writes or not wrote or RUNS.still())
        ):
            events = until(lambda: select(0) or None, self.spin)
        if not events:
            events = select(max(timeout, 0.0))
        self._wait += (time.perf_counter() - began - self._wait) * WAIT_WEIGHT
        return events

    def _arrive(self, conn: Conn) -> None:
        """Wait, with no buffer yet, for a new connection's first bytes."""
        if conn.dropped:
            self._close_conn(conn)
            return
        try:
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._selector.register(conn.sock, selectors.EVENT_READ, conn)
        except (OSError, ValueError) as exc:  # reset, or closed under it
            logger.debug("connection failed client=%s error=%s", conn.address[0], exc)
            self._close_conn(conn)
            return
        self._silent.add(conn)

    def _open(self, conn: Conn) -> None:
        """A connection's first bytes came: its frames, its peer, then read them.
        One the gate made leave (evicted, or late) is only closed: under a flood
        of strangers, closing keeps up with accepting."""
        self._silent.discard(conn)
        if conn.dropped:
            self._selector.unregister(conn.sock)
            self._close_conn(conn)
            return
        limits = self.limits
        try:
            frames = FrameSocket(
                conn.sock,
                limits.keys,
                limits.max_frame,
                limits.frame_timeout,
                never_wait=True,
                check=limits.check,
            )
        except OSError as exc:  # reset before it could be set up
            logger.debug("connection failed client=%s error=%s", conn.address[0], exc)
            self._selector.unregister(conn.sock)
            self._close_conn(conn)
            return
        reader = Reader(conn, frames)
        reader.peer = Peer(
            self.endpoint,
            self.gate,
            conn,
            frames,
            lambda: self.resume(reader),
            self._aside.submit,
        )
        frames.on_paid = reader.peer.settled
        self._selector.modify(conn.sock, selectors.EVENT_READ, reader)
        self._readers.add(reader)
        self._read(reader)

    def _read(self, reader: Reader) -> None:
        """Receive what a connection sent, and serve its whole frames."""
        if self._park(reader):
            return
        frames = reader.frames
        partial = frames.partial
        try:
            got = frames.pull()
        except BlockingIOError:
            return
        except OSError:  # reset, or shut by the gate or the broker's stop
            self._close(reader)
            return
        if not got:
            if partial:
                reader.peer.refused(
                    ProtocolError(f"connection closed mid-frame: {frames.pending} bytes received")
                )
            self._close(reader)
            return
        if not partial:
            reader.started = time.monotonic()
        self._frames(reader)

    def _frames(self, reader: Reader) -> None:
        """Serve the whole frames a connection's buffer holds, one at a time."""
        frames, peer = reader.frames, reader.peer
        while not peer.busy and frames.paid:
            try:
                frame = frames.whole()
            except ProtocolError as exc:
                if not peer.refused(exc):
                    self._close(reader)
                    return
                continue
            if frame is None:
                return
            reader.since = reader.started = time.monotonic()
            if not peer.request(frame):
                self._close(reader)
                return

    def _park(self, reader: Reader) -> bool:
        """Take a connection off the selector while a reply is owed to it, or
        frames queued for it wait to be sent; True when it was."""
        if not reader.peer.busy and reader.frames.paid:  # the lock only to park
            return False
        with self._lock:
            owing = not reader.frames.paid
            if not (reader.peer.busy or owing):
                return False
            if not reader.parked:
                self._selector.unregister(reader.conn.sock)
                reader.parked = True
            if owing and not reader.owed_since:
                reader.owed_since = time.monotonic()
            return True

    def resume(self, reader: Reader) -> None:
        """A reply owed to `reader` was sent: serve it again (any thread)."""
        with self._lock:
            if not (reader.parked or reader.frames.partial):
                return
            self._again.append(reader)
        if threading.current_thread() is not self._thread:
            self._waking.wake()

    def _serve_again(self, reader: Reader) -> None:
        if reader not in self._readers:  # closed meanwhile
            return
        with self._lock:
            if reader.peer.busy or not reader.frames.paid:
                return  # still owed: whoever settles it brings it back
            reader.owed_since = 0.0
            if reader.parked:
                try:
                    self._selector.register(reader.conn.sock, selectors.EVENT_READ, reader)
                except (OSError, ValueError):  # closed under it
                    reader.parked = False
                    self._close(reader)
                    return
                reader.parked = False
        self._frames(reader)

    def _scan(self, now: float) -> None:
        """Close the connections past a deadline: a frame not finished within
        FRAME_TIMEOUT of its first byte, no frame within IDLE_TIMEOUT, or
        frames owed to it and not taken within FRAME_TIMEOUT (+1 s)."""
        self.gate.expire()  # strangers past their first frame's deadline: shut, read as closed
        limits = self.limits
        late = []
        for reader in self._readers:
            if reader.peer.busy:
                continue
            if reader.owed_since:
                if now - reader.owed_since > limits.frame_timeout + 1:
                    late.append(reader)
            elif reader.frames.partial:
                if now - reader.started >= limits.frame_timeout:
                    late.append(reader)
            elif now - reader.since >= limits.idle_timeout:
                late.append(reader)
        for reader in late:
            self._close(reader)

    # -- closing -------------------------------------------------------------

    def _close(self, reader: Reader) -> None:
        if reader not in self._readers:
            return
        self._readers.discard(reader)
        with self._lock:
            if not reader.parked:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._selector.unregister(reader.conn.sock)
            reader.parked = True  # never registered again
        self._close_conn(reader.conn)

    def _close_conn(self, conn: Conn) -> None:
        self.gate.leave(conn)
        conn.sock.close()

    def stop(self) -> None:
        """Stop the loop and close every connection it holds (once)."""
        if self._stopping:
            return
        self._stopping = True
        self._waking.wake()
        if self._thread is not None:
            self._thread.join(5)
        for reader in list(self._readers):
            self._close(reader)
        for conn in list(self._silent):
            self._close_conn(conn)
        while self._arrivals:
            self._close_conn(self._arrivals.popleft())
        self._aside.stop()
        self._waking.close()
