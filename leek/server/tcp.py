"""The broker's TCP side: socketserver's server and one client connection.

`Server` fills the hooks `socketserver.BaseServer` documents (``verify_request``
for the address allowlist, ``handle_error`` so errors are logged rather than
printed) and `Handler` serves one persistent client connection: it reads frames
(protocol.py checks size and signature before anything is unpickled), hands
each verb to the `Broker`, and writes each reply in one call.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.db import connection

from ..exceptions import LeekError, ProtocolError
from ..protocol import FrameSocket

if TYPE_CHECKING:
    from .broker import Broker

#: The verbs that insert tasks, each answered once its tasks are committed.
PUSHES = ("enqueue", "enqueue_batch", "enqueue_many")

logger = logging.getLogger(__name__)
security = logging.getLogger("leek.security")
#: Seconds a connection's thread waits for its last enqueue to be committed
#: before it reads on regardless (a write fails well before: see writer.py).
ENQUEUE_TIMEOUT = 60.0


class Handler(socketserver.BaseRequestHandler):
    """One client connection: frames in, replies out, until the client leaves.

    An enqueue's reply is sent by the thread that commits it (see writer.py),
    so this thread goes back to reading as soon as the task is queued for the
    commit; every other verb is answered here."""

    server: Server
    request: socket.socket

    def setup(self) -> None:
        broker = self.server.broker
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.frames = FrameSocket(
            self.request, broker.key, broker.max_frame, broker.frame_timeout, never_wait=True
        )
        self.server.track(self.request)
        # Set while no enqueue of this connection waits for its commit: one at
        # a time per connection, so a client that pipelines requests cannot keep
        # this thread busy (and the GIL from the others') without pause.
        self.settled = threading.Event()
        self.settled.set()

    def handle(self) -> None:
        broker = self.server.broker
        while True:
            if not self.settled.is_set():
                self.settled.wait(ENQUEUE_TIMEOUT)
            if not self.frames.caught_up():  # sends, but does not read its replies
                return
            try:
                message = self.frames.read(idle=broker.idle_timeout)
            except ProtocolError as exc:
                broker.rejected += 1
                security.warning(
                    "frame rejected client=%s error=%s",
                    self.client_address[0],
                    exc,
                    extra={"action": "frame_rejected"},
                )
                self._reply((0, False, _error(exc)))
                return
            except OSError:  # timed out, reset, or shut by the broker's stop
                return
            if message is None:
                return
            request_id, verb, data = message
            try:
                if verb in PUSHES:
                    self.settled.clear()
                    broker.enqueue(verb, data, self._answer(request_id))
                    continue
                reply = (request_id, True, broker.answer(verb, data))
            except (LeekError, ValueError, TypeError, KeyError) as exc:
                reply = (request_id, False, _error(exc))
            except Exception as exc:
                logger.exception("request failed verb=%s", verb, extra={"action": "request_failed"})
                reply = (request_id, False, _error(exc))
            self.settled.set()  # nothing of this request waits for a commit
            if not self._reply(reply):
                return

    def _answer(self, request_id: int) -> Callable[[Any, BaseException | None], None]:
        """The reply to a push, once its tasks are committed."""

        def done(value: Any, error: BaseException | None) -> None:
            if error is not None:
                self._reply((request_id, False, _error(error)))
            else:
                self._reply((request_id, True, value))
            self.settled.set()

        return done

    def _reply(self, message: tuple[Any, ...]) -> bool:
        try:
            self.frames.write(message)
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

    def __init__(self, address: tuple[str, int], broker: Broker) -> None:
        self.broker = broker
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, Handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        allowed = self.broker.allowed_clients
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
