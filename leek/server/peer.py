"""What one client connection's frames ask for, whoever reads them.

A `Peer` takes the frames of one connection, read by the event loop
(loop.py) or by a thread of the connection's own (tcp.py's Handler, for TLS),
and serves each: a push is queued for the group commit and answered by the
thread that commits it (groupcommit.py); any other verb is answered at once,
or, where the reader serves many connections, on a thread aside (`aside`) so a
verb that reads the database never holds up the others. Until a request's
reply is sent the peer is `busy`, and its reader reads nothing more of it: one
request at a time per connection, so a client that pipelines requests gets no
more of the broker than one that waits.

It refuses a bad frame (`refused`) with a reply saying why, logs it on the
``leek.security`` logger and counts it; a stale or replayed frame (signed and
whole) leaves the stream readable, any other closes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..exceptions import LeekError, ProtocolError, ReplayedFrame, StaleFrame
from ..protocol.frame import NO_NONCE, Frame
from ..protocol.sockets import FrameSocket
from .admission import Conn, Gate

if TYPE_CHECKING:
    from .tcp import Endpoint

logger = logging.getLogger(__name__)
security = logging.getLogger("leek.security")

#: Runs a call on a thread aside from the reader's (an executor's `submit`).
Aside = Callable[..., object]
#: What a request refused with an error of its own raises: the client gets it.
REFUSALS = (LeekError, ValueError, TypeError, KeyError)


class Peer:
    """One client connection's requests, served one at a time."""

    def __init__(
        self,
        endpoint: Endpoint,
        gate: Gate,
        conn: Conn,
        frames: FrameSocket,
        settled: Callable[[], object],
        aside: Aside | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.gate = gate
        self.conn = conn
        self.frames = frames
        self.settled = settled  # called once the reply a request waited for is sent
        self.aside = aside
        self.busy = False  # a request's reply is owed: read nothing more
        self.trusted = False

    def refused(self, exc: ProtocolError) -> bool:
        """Log, count and answer a frame refused for its size, signature, bytes
        or stamp; True when the stream goes on (a replay, signed and whole)."""
        self.endpoint.frame_rejected(exc)
        client = self.conn.address[0]
        if isinstance(exc, StaleFrame):
            security.warning(
                "frame refused client=%s error=%s",
                client,
                exc,
                extra={
                    "action": "frame_replayed" if isinstance(exc, ReplayedFrame) else "frame_stale"
                },
            )
            return self.reply((0, False, error(exc)), exc.nonce)
        security.warning(
            "frame rejected client=%s error=%s", client, exc, extra={"action": "frame_rejected"}
        )
        self.reply((0, False, error(exc)), NO_NONCE)
        return False

    def request(self, frame: Frame) -> bool:
        """Serve one verified frame; False when the client is gone, or the
        broker stops (`Endpoint.closing`: the connection is closed, unanswered).
        A push, or a verb answered aside, leaves the peer busy until its reply
        is sent."""
        if self.endpoint.closing:
            return False
        if not self.trusted:  # signed with the secret: it keeps its place from now on
            self.gate.trust(self.conn)
            self.trusted = True
        request_id, verb, data = frame.message
        endpoint = self.endpoint
        try:
            if verb in endpoint.pushes:
                self.busy = True
                endpoint.push(verb, data, self._later(request_id, frame.nonce))
                return True
            if self.aside is not None and verb not in endpoint.quick:
                self.busy = True
                self.aside(self._aside, request_id, frame.nonce, verb, data)
                return True
            reply = (request_id, True, endpoint.answer(verb, data))
        except REFUSALS as exc:
            reply = (request_id, False, error(exc))
        except Exception as exc:
            logger.exception("request failed verb=%s", verb, extra={"action": "request_failed"})
            reply = (request_id, False, error(exc))
        self.busy = False  # nothing of this request is owed any more
        return self.reply(reply, frame.nonce)

    def _later(self, request_id: int, nonce: bytes) -> Callable[[Any, BaseException | None], None]:
        """The reply to a push, once its tasks are committed."""

        def done(value: Any, exc: BaseException | None) -> None:
            if exc is not None:
                self._settle((request_id, False, error(exc)), nonce)
            else:
                self._settle((request_id, True, value), nonce)

        return done

    def _aside(self, request_id: int, nonce: bytes, verb: str, data: Any) -> None:
        """Answer a verb on a thread aside, then let the reader go on."""
        from django.db import connection

        try:
            reply = (request_id, True, self.endpoint.answer(verb, data))
        except REFUSALS as exc:
            reply = (request_id, False, error(exc))
        except Exception as exc:
            logger.exception("request failed verb=%s", verb, extra={"action": "request_failed"})
            reply = (request_id, False, error(exc))
        finally:
            connection.close_if_unusable_or_obsolete()
        self._settle(reply, nonce)

    def _settle(self, reply: tuple[Any, ...], nonce: bytes) -> None:
        self.reply(reply, nonce)
        self.busy = False
        self.settled()

    def reply(self, message: tuple[Any, ...], nonce: bytes) -> bool:
        """Send a reply to the request of `nonce`; False when the client is gone."""
        try:
            self.frames.write(message, nonce)
        except OSError:
            return False
        return True


def error(exc: BaseException) -> dict[str, str]:
    """The value of a reply that refuses a request."""
    return {"error": type(exc).__name__, "message": str(exc)}
