"""The broker's TCP side: socketserver's server and one client connection.

`Server` fills the hooks `socketserver.BaseServer` documents (``verify_request``
for the address allowlist and the gate, ``process_request`` to wait in the
lobby, ``get_request`` to survive running out of descriptors,
``service_actions``, ``handle_error`` so errors are logged rather than
printed); admission.py holds and limits the connections. `Handler` serves one
persistent client connection: it completes the TLS handshake when the broker
has TLS, reads frames (the protocol package checks size and signature, and the
limits' check refuses replays, before anything is unpickled), hands each
request to the `Endpoint` behind the server (the broker), and writes each reply
in one call, naming the nonce of the request it answers. It knows nothing of
the broker but the `Endpoint` protocol and its `Limits`.
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

from ..exceptions import LeekError, ProtocolError, ReplayedFrame, StaleFrame
from ..protocol.frame import MAGIC, NO_NONCE, Check, Keys
from ..protocol.sockets import FrameSocket, Spins
from ..protocol.tls import Channel
from .admission import Conn, Every, Gate, Lobby

logger = logging.getLogger(__name__)
security = logging.getLogger("leek.security")
#: Seconds a connection's thread waits for its last enqueue to be committed
#: before it reads on regardless (a write fails well before: see groupcommit.py).
ENQUEUE_TIMEOUT = 60.0

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


class Endpoint(Protocol):
    """What serves the requests of the connections: the broker."""

    limits: Limits
    #: The verbs answered once their tasks are committed, through `push`.
    pushes: frozenset[str]

    def push(self, verb: str, data: Any, reply: Reply) -> None:
        """Queue the tasks of a push; `reply` is called once they are committed."""

    def answer(self, verb: str, data: Any) -> Any:
        """The value of any other verb; raises LeekError, ValueError,
        TypeError or KeyError for a request it refuses."""

    def frame_rejected(self, error: BaseException) -> None:
        """Count a frame refused for its size, its signature, its bytes, or as a replay."""


class Handler(socketserver.BaseRequestHandler):
    """One client connection: frames in, replies out, until the client leaves.

    A push's reply is sent by the thread that commits it (see groupcommit.py),
    so this thread goes back to reading as soon as the task is queued for the
    commit; every other verb is answered here."""

    server: Server
    request: socket.socket

    def setup(self) -> None:
        self.conn = self.server.gate.held(self.request)
        # Set while no enqueue of this connection waits for its commit: one at
        # a time per connection, so a client that pipelines requests cannot keep
        # this thread busy (and the GIL from the others') without pause.
        self.settled = threading.Event()
        self.settled.set()

    def handle(self) -> None:
        conn = self.conn
        if conn is None or conn.dropped:  # closed while it waited in the lobby
            return
        frames = self._open()
        if frames is None:
            return
        self.frames = frames
        endpoint = self.server.endpoint
        idle = endpoint.limits.idle_timeout
        trusted = False
        while True:
            if not self.settled.is_set():
                self.settled.wait(ENQUEUE_TIMEOUT)
            if not self.frames.caught_up():  # sends, but does not read its replies
                return
            try:
                frame = self.frames.read(idle=idle)
            except StaleFrame as exc:  # signed and whole, but a replay: the stream goes on
                endpoint.frame_rejected(exc)
                security.warning(
                    "frame refused client=%s error=%s",
                    self.client_address[0],
                    exc,
                    extra={
                        "action": "frame_replayed"
                        if isinstance(exc, ReplayedFrame)
                        else "frame_stale"
                    },
                )
                if not self._reply((0, False, _error(exc)), exc.nonce):
                    return
                continue
            except ProtocolError as exc:
                endpoint.frame_rejected(exc)
                security.warning(
                    "frame rejected client=%s error=%s",
                    self.client_address[0],
                    exc,
                    extra={"action": "frame_rejected"},
                )
                self._reply((0, False, _error(exc)), NO_NONCE)
                return
            except OSError:  # timed out, reset, or shut by the broker's stop
                return
            if frame is None:
                return
            if not trusted:  # signed with the secret: it keeps its place from now on
                self.server.gate.trust(conn)
                trusted = True
            request_id, verb, data = frame.message
            try:
                if verb in endpoint.pushes:
                    self.settled.clear()
                    endpoint.push(verb, data, self._answer(request_id, frame.nonce))
                    continue
                reply = (request_id, True, endpoint.answer(verb, data))
            except (LeekError, ValueError, TypeError, KeyError) as exc:
                reply = (request_id, False, _error(exc))
            except Exception as exc:
                logger.exception("request failed verb=%s", verb, extra={"action": "request_failed"})
                reply = (request_id, False, _error(exc))
            self.settled.set()  # nothing of this request waits for a commit
            if not self._reply(reply, frame.nonce):
                return

    def _open(self) -> FrameSocket | None:
        """The frames of this connection, once its TLS handshake (if any) is
        done; None when it fails."""
        limits = self.server.endpoint.limits
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        channel = None
        if limits.tls is not None:
            sock.settimeout(limits.first_frame_timeout)  # the gate's deadline bounds it too
            try:
                first = sock.recv(len(MAGIC), socket.MSG_PEEK)
                if not first:  # connected and left, as a port check does
                    return None
                if first == MAGIC:
                    raise ssl.SSLError("a plain frame: the client lacks LEEK['TLS']")
                channel = Channel(sock, limits.tls, server_side=True)
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
            spin=limits.spin,
        )

    def _answer(self, request_id: int, nonce: bytes) -> Reply:
        """The reply to a push, once its tasks are committed."""

        def done(value: Any, error: BaseException | None) -> None:
            if error is not None:
                self._reply((request_id, False, _error(error)), nonce)
            else:
                self._reply((request_id, True, value), nonce)
            self.settled.set()

        return done

    def _reply(self, message: tuple[Any, ...], nonce: bytes) -> bool:
        """Send a reply to the request of `nonce`; False when the client is gone."""
        try:
            self.frames.write(message, nonce)
        except OSError:
            return False
        return True

    def finish(self) -> None:
        if self.conn is not None:
            self.server.gate.leave(self.conn)
        connection.close()


def _error(exc: BaseException) -> dict[str, str]:
    return {"error": type(exc).__name__, "message": str(exc)}


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
        self.lobby = Lobby(self.gate, self._hand_off)
        self.accept_failures = 0
        self.tls_failures = 0
        self._accept_log = Every()
        self._tls_log = Every()
        try:
            super().__init__(address, Handler, bind_and_activate=listener is None)
        except BaseException:
            self.lobby.stop()
            raise
        if listener is not None:
            self.socket.close()
            self.socket = listener
            self.server_address = listener.getsockname()
            listener.listen(self.request_queue_size)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self.gate.measure()
        self.lobby.start()
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
        """Wait in the lobby, with no thread, until the first bytes arrive."""
        conn = self.gate.held(request)
        if conn is None:  # cannot happen: admitted by verify_request just before
            self.shutdown_request(request)
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

    def detach(self) -> socket.socket:
        """Stop serving but leave the listening socket open, for the broker's
        next life: connections made meanwhile wait in its backlog."""
        self.lobby.stop()
        return self.socket
