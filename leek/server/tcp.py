"""The broker's TCP side: socketserver's server, and a TLS client connection.

`Server` fills the hooks `socketserver.BaseServer` documents (``verify_request``
for the address allowlist and the gate, ``process_request`` to hand each
connection to the event loop or, with TLS, to the lobby, ``get_request`` to
survive running out of descriptors, ``service_actions``, ``handle_error`` so
errors are logged rather than printed); admission.py holds and limits the
connections. Plain connections are read by one thread, the event loop
(loop.py). `Handler` serves one TLS connection on a thread of its own: it
completes the handshake, then reads frames (the protocol package checks size
and signature, and the limits' check refuses replays, before anything is
unpickled). Either way, a `Peer` (peer.py) hands each request to the
`Endpoint` behind the server (the broker) and writes each reply in one call,
naming the nonce of the request it answers. This package knows nothing of the
broker but the `Endpoint` protocol and its `Limits`.
"""

from __future__ import annotations

import errno
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from django.db import connection

from ..exceptions import ProtocolError
from ..protocol.frame import MAGIC, Check, Keys
from ..protocol.sockets import FrameSocket
from ..protocol.spin import Spins
from ..protocol.tls import Channel
from ..threads import name_thread
from .admission import Conn, Every, Gate, Lobby
from .loop import Loop
from .peer import Peer

logger = logging.getLogger(__name__)
security = logging.getLogger("leek.security")
#: Seconds a TLS connection's thread waits for its last enqueue to be committed
#: before it reads on regardless (a write fails well before: see groupcommit.py).
ENQUEUE_TIMEOUT = 60.0
#: The name of the thread that serves one TLS connection (threads.py).
TLS_THREAD = "leek-tls"

#: Seconds the accept loop pauses when accepting fails for want of descriptors.
ACCEPT_BACKOFF = 0.1
#: What accept fails with when the process or the system is out of descriptors or memory.
EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

#: Called once a push is committed: the reply's value, or the error.
Reply = Callable[[Any, BaseException | None], None]


@dataclass(frozen=True, slots=True)
class Limits:
    """What a connection is held to."""

    keys: Keys  # the broker's keys, derived from the shared secret
    max_frame: int  # bytes of a frame's body
    frame_timeout: float  # seconds from a frame's first byte to its last
    idle_timeout: float  # seconds a connection may sit silent between frames
    allowed_clients: frozenset[str]  # client addresses allowed (empty: any)
    check: Check | None = None  # refuses a stale or replayed frame (server/replay.py)
    max_connections: int = 1000  # connections held at once
    max_unauthenticated: int = 128  # of which, at most, not authenticated yet
    first_frame_timeout: float = 5.0  # seconds from accept to the first valid frame
    tls: ssl.SSLContext | None = None  # the broker's TLS, or None for plain TCP
    spin: float = 0.0  # seconds a connection polls for the next request before it sleeps
    spin_after_writes: bool = True  # False: after a round that wrote, only while no task runs


class Gathered(Protocol):
    """A round's pushes, written in one commit as it ends (GroupCommit.gathered)."""

    #: Whether the last round left anything to write.
    wrote: bool

    def __enter__(self) -> None: ...

    def __exit__(self, *exc: object) -> None: ...


class Endpoint(Protocol):
    """What serves the requests of the connections: the broker's verbs (verbs.py)."""

    limits: Limits
    #: The verbs answered once their tasks are committed, through `push`.
    pushes: frozenset[str]
    #: The verbs the event loop answers on its own thread; it answers the
    #: others on a thread aside.
    quick: frozenset[str]
    #: Set once the broker stops: a connection's next request closes it.
    closing: bool

    def gathered(self) -> Gathered:
        """Within it, the pushes of the calling thread share one commit, at its end."""

    def push(self, verb: str, data: Any, reply: Reply) -> None:
        """Queue the tasks of a push; `reply` is called once they are committed."""

    def answer(self, verb: str, data: Any) -> Any:
        """The value of any other verb; raises LeekError, ValueError,
        TypeError or KeyError for a request it refuses."""

    def frame_rejected(self, error: BaseException) -> None:
        """Count a frame refused for its size, its signature, its bytes, or as a replay."""


class Handler(socketserver.BaseRequestHandler):
    """One TLS client connection, on a thread of its own: the handshake, then
    frames in, replies out, until the client leaves (peer.py serves them).

    A push's reply is sent by the thread that commits it (see groupcommit.py),
    so this thread waits for it before it reads the next request."""

    server: Server
    request: socket.socket

    def setup(self) -> None:
        threading.current_thread().name = TLS_THREAD
        name_thread(TLS_THREAD)
        self.conn = self.server.gate.held(self.request)
        self.settled = threading.Event()  # set once a request's owed reply is sent

    def handle(self) -> None:
        conn = self.conn
        if conn is None or conn.dropped:  # closed while it waited in the lobby
            return
        frames = self._open()
        if frames is None:
            return
        endpoint = self.server.endpoint
        peer = Peer(endpoint, self.server.gate, conn, frames, self.settled.set)
        idle = endpoint.limits.idle_timeout
        while True:
            if peer.busy:
                self.settled.wait(ENQUEUE_TIMEOUT)
            if not frames.caught_up():  # sends, but does not read its replies
                return
            try:
                frame = frames.read(idle=idle)
            except ProtocolError as exc:
                if not peer.refused(exc):
                    return
                continue
            except OSError:  # timed out, reset, or shut by the broker's stop
                return
            if frame is None:
                return
            self.settled.clear()
            if not peer.request(frame):
                return

    def _open(self) -> FrameSocket | None:
        """The frames of this connection, once its TLS handshake is done; None
        when it fails."""
        limits = self.server.endpoint.limits
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        context = limits.tls
        if context is None:  # cannot happen: plain connections are the loop's
            return None
        sock.settimeout(limits.first_frame_timeout)  # the gate's deadline bounds it too
        try:
            first = sock.recv(len(MAGIC), socket.MSG_PEEK)
            if not first:  # connected and left, as a port check does
                return None
            if first == MAGIC:
                raise ssl.SSLError("a plain frame: the client lacks LEEK['TLS']")
            channel = Channel(sock, context, server_side=True)
            channel.handshake()
        except OSError as exc:  # ssl.SSLError and timeouts included
            self.server.tls_failed(self.client_address, exc)
            return None
        return FrameSocket(
            sock,
            limits.keys,
            limits.max_frame,
            limits.frame_timeout,
            never_wait=True,
            check=limits.check,
            tls=channel,
        )

    def finish(self) -> None:
        if self.conn is not None:
            self.server.gate.leave(self.conn)
        connection.close()


class Server(socketserver.ThreadingTCPServer):
    """ThreadingTCPServer with the hooks a long-running, exposed broker needs."""

    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024

    def __init__(
        self,
        address: tuple[str, int],
        endpoint: Endpoint,
        listener: socket.socket | None = None,
    ) -> None:
        """Listen on `address`, or on `listener`: a socket already listening,
        handed over by the broker's last life (reexec.py)."""
        self.endpoint = endpoint
        limits = endpoint.limits
        self.gate = Gate(
            limits.max_connections, limits.max_unauthenticated, limits.first_frame_timeout
        )
        self.lobby = Lobby(self.gate, self._hand_off)  # TLS connections, until their first bytes
        self.loop = Loop(endpoint, self.gate)  # plain connections
        self.accept_failures = 0
        self.tls_failures = 0
        self._accept_log = Every()
        self._tls_log = Every()
        try:
            super().__init__(address, Handler, bind_and_activate=listener is None)
        except BaseException:
            self.lobby.stop()
            self.loop.stop()
            raise
        if listener is not None:
            self.socket.close()
            self.socket = listener
            self.server_address = listener.getsockname()
            listener.listen(self.request_queue_size)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self.gate.measure()
        self.lobby.start()
        self.loop.start()
        super().serve_forever(poll_interval)

    def service_actions(self) -> None:
        self.gate.measure()

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept; out of descriptors, log it (once per interval) and pause
        briefly, instead of letting the accept loop spin, while the connections
        already open are served on."""
        try:
            return self.socket.accept()
        except OSError as exc:
            if exc.errno in EXHAUSTED:
                self.accept_failures += 1
                if self._accept_log.due():
                    logger.error(
                        "cannot accept connections error=%s failures=%s; serving the open "
                        "connections, trying again every %s s",
                        exc.strerror or exc,
                        self.accept_failures,
                        ACCEPT_BACKOFF,
                        extra={"action": "accept_failed"},
                    )
                time.sleep(ACCEPT_BACKOFF)
            raise

    def verify_request(self, request: Any, client_address: Any) -> bool:
        allowed = self.endpoint.limits.allowed_clients
        if allowed and client_address[0] not in allowed:
            security.warning(
                "connection refused client=%s",
                client_address[0],
                extra={"action": "client_refused"},
            )
            return False
        return self.gate.admit(request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve on the event loop; with TLS, wait in the lobby, with no
        thread, until the first bytes arrive."""
        conn = self.gate.held(request)
        if conn is None:  # cannot happen: admitted by verify_request just before
            self.shutdown_request(request)
        elif self.endpoint.limits.tls is None:
            self.loop.add(conn)
        else:
            self.lobby.add(conn)

    def _hand_off(self, conn: Conn) -> None:
        """A thread of its own for a connection whose first bytes arrived."""
        socketserver.ThreadingMixIn.process_request(self, conn.sock, conn.address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.exception(
            "connection failed client=%s", client_address, extra={"action": "connection_failed"}
        )

    def tls_failed(self, client_address: Any, exc: OSError) -> None:
        """Count a failed TLS handshake; log it once per interval."""
        self.tls_failures += 1
        if self._tls_log.due():
            security.warning(
                "tls handshake failed client=%s error=%s failures=%s",
                client_address[0],
                exc,
                self.tls_failures,
                extra={"action": "tls_failed"},
            )

    def figures(self) -> dict[str, int]:
        """The connections held and refused, for the broker's stats."""
        return {
            **self.gate.figures(),
            "accept_failures": self.accept_failures,
            "tls_failures": self.tls_failures,
            "spins": Spins.polled,
            "spun": Spins.received,
        }

    def close_clients(self) -> None:
        """Shut every open client connection, so their threads end."""
        self.gate.drop_all()

    def server_close(self) -> None:
        super().server_close()
        self.lobby.stop()
        self.loop.stop()

    def detach(self) -> socket.socket:
        """Stop serving but leave the listening socket open, for the broker's
        next life: connections made meanwhile wait in its backlog."""
        self.lobby.stop()
        self.loop.stop()
        return self.socket
