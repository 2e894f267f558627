"""The broker's TCP side: socketserver's server and one client connection.

`Server` fills the hooks `socketserver.BaseServer` documents (``verify_request``
for the address allowlist, ``handle_error`` so errors are logged rather than
printed) and `Handler` serves one persistent client connection: it reads frames
(the protocol package checks size and signature, and the limits' check refuses
replays, before anything is unpickled), hands each request to the `Endpoint`
behind the server (the broker), and writes each reply in one call, naming the
nonce of the request it answers. It knows nothing of the broker but the
`Endpoint` protocol and its `Limits`.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from django.db import connection

from ..exceptions import LeekError, ProtocolError, ReplayedFrame, StaleFrame
from ..protocol.frame import NO_NONCE, Check, Keys
from ..protocol.sockets import FrameSocket

logger = logging.getLogger(__name__)
security = logging.getLogger("leek.security")
#: Seconds a connection's thread waits for its last enqueue to be committed
#: before it reads on regardless (a write fails well before: see groupcommit.py).
ENQUEUE_TIMEOUT = 60.0

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

    def frame_rejected(self) -> None:
        """Count a frame refused for its size, its signature, its bytes, or as a replay."""


class Handler(socketserver.BaseRequestHandler):
    """One client connection: frames in, replies out, until the client leaves.

    A push's reply is sent by the thread that commits it (see groupcommit.py),
    so this thread goes back to reading as soon as the task is queued for the
    commit; every other verb is answered here."""

    server: Server
    request: socket.socket

    def setup(self) -> None:
        limits = self.server.endpoint.limits
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.frames = FrameSocket(
            self.request,
            limits.keys,
            limits.max_frame,
            limits.frame_timeout,
            never_wait=True,
            check=limits.check,
        )
        self.server.track(self.request)
        # Set while no enqueue of this connection waits for its commit: one at
        # a time per connection, so a client that pipelines requests cannot keep
        # this thread busy (and the GIL from the others') without pause.
        self.settled = threading.Event()
        self.settled.set()

    def handle(self) -> None:
        endpoint = self.server.endpoint
        idle = endpoint.limits.idle_timeout
        while True:
            if not self.settled.is_set():
                self.settled.wait(ENQUEUE_TIMEOUT)
            if not self.frames.caught_up():  # sends, but does not read its replies
                return
            try:
                frame = self.frames.read(idle=idle)
            except StaleFrame as exc:  # signed and whole, but a replay: the stream goes on
                endpoint.frame_rejected()
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
                endpoint.frame_rejected()
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
        self.server.untrack(self.request)
        connection.close()


def _error(exc: BaseException) -> dict[str, str]:
    return {"error": type(exc).__name__, "message": str(exc)}


class Server(socketserver.ThreadingTCPServer):
    """ThreadingTCPServer with the hooks a long-running broker needs."""

    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, Handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        allowed = self.endpoint.limits.allowed_clients
        if allowed and client_address[0] not in allowed:
            security.warning(
                "connection refused client=%s",
                client_address[0],
                extra={"action": "client_refused"},
            )
            return False
        return True

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.exception(
            "connection failed client=%s", client_address, extra={"action": "connection_failed"}
        )

    def track(self, sock: socket.socket) -> None:
        with self._open_lock:
            self._open.add(sock)

    def untrack(self, sock: socket.socket) -> None:
        with self._open_lock:
            self._open.discard(sock)

    def close_clients(self) -> None:
        """Shut every open client connection, so their threads end."""
        with self._open_lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    logger.debug("client socket already closed")
            self._open.clear()
