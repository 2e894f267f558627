"""Persistent broker connections per thread, with failover between brokers.

A thread holds up to two: one for its pushes, spread over the brokers
(spread.py), and one for the other verbs, which go to HOST:PORT first and
then to the brokers of BROKERS in order. With SPREAD off, or a single
broker, pushes take the second connection, in that order, too."""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from .. import conf
from ..exceptions import (
    AuthenticationFailed,
    BadSignature,
    BrokerError,
    BrokerUnavailable,
    CommitFailed,
    FrameTooLarge,
    LeekError,
    PayloadError,
    ProtocolError,
    ReflectedFrame,
    ReplayedFrame,
    StaleFrame,
)
from ..protocol import tls
from ..protocol.frame import NO_NONCE, Frame, Keys
from ..protocol.sockets import FrameSocket
from . import spread

logger = logging.getLogger(__name__)

_local = threading.local()
#: The attributes of `_local` holding a thread's connections: to the broker
#: its pushes are spread to, and for every other verb (and pushes, unspread).
SPREAD_SLOT, ORDERED_SLOT = "spread", "connection"
#: What a broker answers for a request it refuses for what the request holds:
#: sent again, to it or to another broker, it would be refused again.
REQUEST_ERRORS = frozenset({"ValueError", "TypeError", "KeyError"})
#: Seconds a client whose send was cut short waits for the broker's refusal,
#: which the broker sent before it closed: it is there already, or never comes.
REFUSAL_WAIT = 0.5


class Connection:
    """A socket to one broker; one frame out, its reply read back.

    A reply must be signed with the broker's key for replies and name the
    nonce of the request it answers; anything else raises
    AuthenticationFailed. A request the broker refuses as stale (the clocks
    disagree, or the broker started after the client stamped it) is stamped
    anew with the broker's clock, read from the refusal, and sent once more."""

    def __init__(
        self,
        address: tuple[str, int],
        secret: bytes,
        connect_timeout: float,
        reply_timeout: float,
        max_frame: int,
        tls_options: dict[str, Any] | None = None,
        spin: float = 0.0,
    ) -> None:
        self.address = address
        sock = socket.create_connection(address, timeout=connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            channel = tls.connect(sock, tls_options, address) if tls_options else None
            self.frames = FrameSocket(
                sock, Keys.client(secret), max_frame, reply_timeout, tls=channel, spin=spin
            )
        except BaseException:
            sock.close()
            raise
        self.ids = itertools.count(1)

    def request(self, verb: str, data: Any) -> tuple[bool, Any]:
        request_id = next(self.ids)
        restamped = False
        while True:
            try:
                nonce = self.frames.write((request_id, verb, data), bounded=True)
            except FrameTooLarge as exc:  # nothing was sent: no broker would read it
                raise PayloadError(
                    f"the {verb} request is too large to send: {exc} (LEEK['MAX_FRAME']); "
                    "push fewer tasks at once, or pass references to the data (a primary "
                    "key, a file's path) instead of the data"
                ) from exc
            except OSError as exc:  # the broker may have refused it, then closed, mid-send
                refused = self._refusal()
                if not refused:
                    raise
                raise self._refused(refused) from exc
            reply = self._read(verb)
            got_id, ok, value = reply.message
            refused = _frame_refusal(reply.message)
            if refused and reply.nonce == NO_NONCE:  # a frame it could not verify: it closes
                raise self._refused(refused)
            if reply.nonce != nonce:
                raise AuthenticationFailed(
                    f"broker {self.where} sent a reply to another request than the {verb} "
                    "request sent: a replayed or misrouted reply"
                )
            if got_id == request_id:
                return ok, value
            if not refused:
                raise ProtocolError(f"reply {got_id} does not answer request {request_id}")
            if value["error"] == StaleFrame.__name__ and not restamped:
                self.frames.clock_offset = reply.sent - time.time()
                restamped = True
                continue
            hint = (
                ""
                if value["error"] == ReplayedFrame.__name__
                else "; the clocks of this client and the broker must agree (run NTP)"
            )
            raise AuthenticationFailed(f"broker {self.where} refused {verb}: {refused}{hint}")

    def _refusal(self) -> str:
        """What the broker said when it refused a frame this client was still
        sending, then closed (a reset cuts the send short, and the refusal
        sent before it can still be read); empty when it said nothing."""
        try:
            self.frames.sock.settimeout(REFUSAL_WAIT)
            reply = self.frames.read()
        except (OSError, LeekError):
            return ""
        if reply is None or reply.nonce != NO_NONCE:
            return ""
        return _frame_refusal(reply.message)

    def _refused(self, refused: str) -> ProtocolError:
        """The error of a request frame the broker refused unread, and closed
        on: FrameTooLarge for one over its MAX_FRAME, which it would refuse
        again (`call` goes on to the next broker)."""
        message = f"broker {self.where} refused the request: {refused}"
        if refused.startswith(FrameTooLarge.__name__):
            return FrameTooLarge(
                f"{message}; this client's LEEK['MAX_FRAME'] is {self.frames.max_size:,} "
                "bytes: set it alike on clients and brokers"
            )
        return ProtocolError(message)

    def _read(self, verb: str) -> Frame:
        """The next frame from the broker, verified."""
        try:
            reply = self.frames.read()
        except ReflectedFrame as exc:
            raise AuthenticationFailed(
                f"{self.where} sent back this client's own {verb} request instead of a "
                "reply: what listens there is not a leek broker (an echo, or a reflection)"
            ) from exc
        except BadSignature as exc:
            raise AuthenticationFailed(
                f"broker {self.where} answered with a signature this client cannot verify: "
                "LEEK_SECRET (or SECRET_KEY) differs between client and broker"
            ) from exc
        except TimeoutError as exc:
            raise TimeoutError(f"broker {self.where} did not answer {verb}: {exc}") from exc
        if reply is None:
            raise ConnectionResetError(f"broker {self.where} closed the connection")
        return reply

    @property
    def where(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def close(self) -> None:
        self.frames.close()

    def __del__(self) -> None:
        # A thread that ends drops its connection with its thread-local storage
        # (runserver and other servers start a thread per request): close it.
        if hasattr(self, "frames"):
            self.close()


def _frame_refusal(message: tuple[Any, ...]) -> str:
    """What the broker said when it refused a request frame itself (request id 0),
    else an empty string."""
    got_id, ok, value = message
    if got_id != 0 or ok or not isinstance(value, dict):
        return ""
    return f"{value.get('error')}: {value.get('message')}"


def connect(address: tuple[str, int], reply_timeout: float | None = None) -> Connection:
    """A new connection to the broker at `address`, with this client's secret,
    limits and TLS; `reply_timeout` (None: REPLY_TIMEOUT) bounds each wait for
    a reply. The caller closes it. Raises OSError when the broker cannot be
    reached."""
    settings = conf.get_settings()
    logger.debug(
        "connecting to broker address=%s:%s",
        address[0],
        address[1],
        extra={"action": "broker_connect"},
    )
    return Connection(
        address,
        str(settings["SECRET"]).encode(),
        float(settings["CONNECT_TIMEOUT"]),
        float(settings["REPLY_TIMEOUT"] if reply_timeout is None else reply_timeout),
        int(settings["MAX_FRAME"]),
        settings["TLS"],
        float(settings["SPIN"]),
    )


def call(verb: str, data: Any = None, *, push: bool = False) -> Any:
    """Send one request to a broker and return its answer.

    Uses this thread's open connection; on a broken connection it reconnects
    and resends once (enqueue is idempotent), then tries the other brokers:
    for a push with SPREAD on and several brokers, the healthy ones from the
    next in turn, a broker that fails resting meanwhile (spread.py); else
    HOST:PORT, then BROKERS in order. Raises BrokerUnavailable naming every
    address tried, AuthenticationFailed when a broker rejects the secret,
    BrokerError when it answers with an error.

    A push (`push=True`) that a broker could not commit (CommitFailed), or
    whose reply cannot be verified (AuthenticationFailed), goes on to the
    next broker as well; when no broker committed it, the error raised is
    AuthenticationFailed if any broker failed so, else CommitFailed, naming
    every broker tried. A push the broker refuses for what it holds (a value
    out of range) raises BrokerError at once, as any other verb does.
    """
    addresses = conf.brokers()
    spreading = push and len(addresses) > 1 and bool(conf.get("SPREAD"))
    slot = SPREAD_SLOT if spreading else ORDERED_SLOT
    current: Connection | None = getattr(_local, slot, None)
    tried: list[str] = []
    refused: list[LeekError] = []  # a push's failures that the next broker may not have
    if current is not None and current.address not in addresses:
        _drop(current)  # the settings no longer name its broker
        current = None
    since = 0.0  # when the connection in use was made, if this call made it
    for address in _candidates(current, addresses, spreading):
        for attempt in range(2):
            reused = attempt == 0 and current is not None and current.address == address
            conn = current if reused else None
            try:
                if conn is None:
                    since = time.monotonic()
                    conn = connect(address)
                ok, value = conn.request(verb, data)
            except AuthenticationFailed as exc:
                _drop(conn)
                if not push:
                    raise
                current = None
                refused.append(exc)
                if spreading:
                    spread.failed(address, exc)
                break
            except (OSError, ProtocolError) as exc:
                _drop(conn)
                current = None
                reason = f"{address[0]}:{address[1]} ({exc.__class__.__name__}: {exc})"
                if reason not in tried:
                    tried.append(reason)
                unreachable = isinstance(
                    exc, ConnectionRefusedError | socket.timeout | socket.gaierror
                )
                if spreading and (unreachable or not reused):
                    spread.failed(address, exc)
                    break
                if unreachable or (spreading and spread.resting(address)):
                    break  # nothing listens there, or another thread saw it fail
                if isinstance(exc, FrameTooLarge):
                    break  # it would refuse it again
                continue
            setattr(_local, slot, conn)
            if not ok:
                error = _error_reply(conn, verb, value, push)
                if not isinstance(error, CommitFailed):
                    raise error
                _drop(conn)
                current = None
                refused.append(error)
                if spreading:
                    spread.failed(address, error)
                break
            if spreading and not reused:
                spread.answered(address, since)
            return value
    if refused:
        raise _uncommitted(refused, tried)
    raise BrokerUnavailable("no broker answered: tried " + "; ".join(tried))


def _candidates(
    current: Connection | None, addresses: list[tuple[str, int]], spreading: bool
) -> Iterator[tuple[str, int]]:
    """The brokers a request tries, in order: the one this thread is connected
    to, then the others, in turn from spread.py for a spread push (asked only
    when the connection held fails), else in the order of the settings."""
    if current is not None:
        yield current.address
    for address in spread.order(addresses) if spreading else addresses:
        if current is None or address != current.address:
            yield address


def _error_reply(conn: Connection, verb: str, value: Any, push: bool) -> BrokerError:
    """The error for a broker's error reply: CommitFailed for a push that
    failed in the broker's database, BrokerError otherwise."""
    error, message = value.get("error"), value.get("message")
    if push and error not in REQUEST_ERRORS:
        return CommitFailed(f"broker {conn.where} could not commit {verb}: {error}: {message}")
    return BrokerError(f"broker {conn.where} refused {verb}: {error}: {message}")


def _uncommitted(refused: list[LeekError], unreachable: list[str]) -> LeekError:
    """The error of a push no broker committed: AuthenticationFailed if any
    broker's reply could not be verified, else CommitFailed."""
    if len(refused) == 1 and not unreachable:
        return refused[0]
    worst = next((e for e in refused if isinstance(e, AuthenticationFailed)), refused[0])
    reasons = [str(e) for e in refused] + [f"{r} unreachable" for r in unreachable]
    return type(worst)("no broker committed the push: " + "; ".join(reasons))


def _drop(conn: Connection | None) -> None:
    if conn is None:
        return
    conn.close()
    for slot in (SPREAD_SLOT, ORDERED_SLOT):
        if getattr(_local, slot, None) is conn:
            setattr(_local, slot, None)


def close() -> None:
    """Close this thread's broker connections, if any."""
    for slot in (SPREAD_SLOT, ORDERED_SLOT):
        _drop(getattr(_local, slot, None))


def _forget_inherited() -> None:
    """In a child forked from a process that had connected (a pre-fork web
    server's master that pushed before forking its workers): its sockets are
    the parent's too, and a frame written on one would take the parent's
    replies. The child drops its copies unused and connects anew."""
    global _local
    _local = threading.local()


os.register_at_fork(after_in_child=_forget_inherited)
