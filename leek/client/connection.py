"""One persistent broker connection per thread, with failover between brokers."""

from __future__ import annotations

import itertools
import socket
import threading
from typing import Any

from .. import conf
from ..exceptions import (
    AuthenticationFailed,
    BadSignature,
    BrokerError,
    BrokerUnavailable,
    ProtocolError,
)
from ..protocol import tls
from ..protocol.sockets import FrameSocket

_local = threading.local()


class Connection:
    """A socket to one broker; one frame out, its reply read back."""

    def __init__(
        self,
        address: tuple[str, int],
        key: bytes,
        connect_timeout: float,
        reply_timeout: float,
        max_frame: int,
        tls_options: dict[str, Any] | None = None,
    ) -> None:
        self.address = address
        sock = socket.create_connection(address, timeout=connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            channel = tls.connect(sock, tls_options, address) if tls_options else None
            self.frames = FrameSocket(sock, key, max_frame, reply_timeout, tls=channel)
        except BaseException:
            sock.close()
            raise
        self.ids = itertools.count(1)

    def request(self, verb: str, data: Any) -> tuple[bool, Any]:
        request_id = next(self.ids)
        self.frames.write((request_id, verb, data))
        try:
            reply = self.frames.read()
        except BadSignature as exc:
            raise AuthenticationFailed(
                f"broker {self.where} answered with a signature this client cannot verify: "
                "LEEK_SECRET (or SECRET_KEY) differs between client and broker"
            ) from exc
        except TimeoutError as exc:
            raise TimeoutError(f"broker {self.where} did not answer {verb}: {exc}") from exc
        if reply is None:
            raise ConnectionResetError(f"broker {self.where} closed the connection")
        got_id, ok, value = reply
        if got_id != request_id:
            raise ProtocolError(f"reply {got_id} does not answer request {request_id}")
        return ok, value

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


def _connect(address: tuple[str, int]) -> Connection:
    settings = conf.get_settings()
    return Connection(
        address,
        str(settings["SECRET"]).encode(),
        float(settings["CONNECT_TIMEOUT"]),
        float(settings["REPLY_TIMEOUT"]),
        int(settings["MAX_FRAME"]),
        settings["TLS"],
    )


def call(verb: str, data: Any = None) -> Any:
    """Send one request to a broker and return its answer.

    Uses this thread's open connection; on a broken connection it reconnects
    and resends once (enqueue is idempotent), then tries the other brokers.
    Raises BrokerUnavailable naming every address tried, AuthenticationFailed
    when a broker rejects the secret, BrokerError when it answers with an error.
    """
    current: Connection | None = getattr(_local, "connection", None)
    tried: list[str] = []
    candidates = conf.brokers()
    if current is not None:
        if current.address in candidates:
            candidates.remove(current.address)
            candidates.insert(0, current.address)
        else:  # the settings no longer name its broker
            _drop(current)
            current = None
    for address in candidates:
        for attempt in range(2):
            conn = (
                current
                if (attempt == 0 and current is not None and current.address == address)
                else None
            )
            try:
                if conn is None:
                    conn = _connect(address)
                ok, value = conn.request(verb, data)
            except AuthenticationFailed:
                _drop(conn)
                raise
            except (OSError, ProtocolError) as exc:
                _drop(conn)
                current = None
                reason = f"{address[0]}:{address[1]} ({exc.__class__.__name__}: {exc})"
                if reason not in tried:
                    tried.append(reason)
                if isinstance(exc, ConnectionRefusedError | socket.timeout | socket.gaierror):
                    break  # nothing listens there: try the next broker
                continue
            _local.connection = conn
            if not ok:
                raise BrokerError(
                    f"broker {conn.where} refused {verb}: {value.get('error')}: "
                    f"{value.get('message')}"
                )
            return value
    raise BrokerUnavailable("no broker answered: tried " + "; ".join(tried))


def _drop(conn: Connection | None) -> None:
    if conn is not None:
        conn.close()
    if getattr(_local, "connection", None) is conn:
        _local.connection = None


def close() -> None:
    """Close this thread's broker connection, if any."""
    _drop(getattr(_local, "connection", None))
