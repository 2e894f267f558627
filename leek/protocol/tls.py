"""TLS under the frames: the contexts of LEEK["TLS"], and a channel over a plain socket.

Frames stay signed with the shared secret inside TLS; TLS adds secrecy and,
with certificates, the identity of the broker (and of clients, in mutual TLS).
Both sides speak TLS 1.3 only: leek talks to leek.

A :class:`Channel` runs an ``ssl.SSLObject`` over memory buffers instead of
wrapping the socket, so :class:`~leek.protocol.sockets.FrameSocket` keeps what
it is built on: a blocking socket whose kernel timeouts (``SO_RCVTIMEO``,
``SO_SNDTIMEO``) bound each call, and writes that never wait (``MSG_DONTWAIT``)
on the broker's side. OpenSSL allows no concurrent use of one connection, so a
lock serialises every call on the SSLObject; no system call is made under it.
The ciphertext :meth:`Channel.seal` returns is sent by its caller under
FrameSocket's write lock, so records leave in the order they were made. What
TLS itself wants sent while reading (a key update) waits in the buffer and
leaves with the next frame.

A TLS 1.3 server checks the client's certificate after the client has finished
its side of the handshake, so a client learns it was refused only from what
the broker sends next. :func:`connect` waits for that (the broker's session
ticket, or its alert) before it returns, so a refusal is an error of the
connection, never of a request already sent.
"""

from __future__ import annotations

import functools
import os
import socket
import ssl
import threading
from collections.abc import Mapping
from typing import Any

from ..exceptions import AuthenticationFailed

#: The keys LEEK["TLS"] takes.
KEYS = ("cert", "key", "ca", "require_client_cert", "client_cert", "client_key", "server_name")
#: The keys that name files.
FILES = ("cert", "key", "ca", "client_cert", "client_key")
#: The most bytes one receive of ciphertext asks the kernel for.
RECV_SIZE = 65536


def problems(options: Any, broker: bool = False) -> list[str]:
    """What is wrong with LEEK["TLS"]: each problem one sentence; none when it is
    empty (TLS off). With `broker`, a certificate and key to serve are required."""
    if not options:
        return []
    if not isinstance(options, Mapping):
        return [f"must be a dict, got {type(options).__name__}"]
    found: list[str] = []
    unknown = sorted(set(options) - set(KEYS))
    if unknown:
        found.append(f"has unknown keys {', '.join(unknown)} (known: {', '.join(KEYS)})")
    for key in FILES:
        path = options.get(key)
        if path is None:
            continue
        if not isinstance(path, str) or not path:
            found.append(f"{key!r} must be the path of a PEM file, got {path!r}")
        elif not os.path.isfile(path) or not os.access(path, os.R_OK):
            found.append(f"{key!r} names {path!r}, which is not a readable file")
    required = options.get("require_client_cert", False)
    if not isinstance(required, bool):
        found.append(f"'require_client_cert' must be True or False, got {required!r}")
    if not isinstance(options.get("server_name", ""), str):
        found.append(f"'server_name' must be a host name, got {options['server_name']!r}")
    if options.get("require_client_cert") and not options.get("ca"):
        found.append("'require_client_cert' needs 'ca', the CA that signs client certificates")
    if options.get("key") and not options.get("cert"):
        found.append("'key' needs 'cert', the broker's certificate")
    if options.get("client_key") and not options.get("client_cert"):
        found.append("'client_key' needs 'client_cert', the client's certificate")
    if broker and not options.get("cert"):
        found.append("a broker needs 'cert' and 'key', its certificate and private key")
    if found:
        return found
    for side, build in (("broker", server_context), ("client", client_context)):
        if side == "broker" and not options.get("cert"):
            continue
        try:
            build(options)
        except (ssl.SSLError, OSError, ValueError) as exc:
            found.append(f"cannot be loaded for the {side}: {exc}")
    return found


def server_context(options: Mapping[str, Any]) -> ssl.SSLContext:
    """The broker's context: its certificate, and the client CA when it requires one.

    Raises ssl.SSLError or OSError for files that do not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(options["cert"], options.get("key") or None)
    if options.get("require_client_cert"):
        context.load_verify_locations(cafile=options["ca"])
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(options: Mapping[str, Any]) -> ssl.SSLContext:
    """A client's context (built once per distinct options): it verifies the
    broker against "ca", or the system's CAs, and the broker's name.

    Raises ssl.SSLError or OSError for files that do not load."""
    return _client_context(tuple(sorted((k, v) for k, v in options.items() if k in KEYS)))


@functools.lru_cache(maxsize=8)
def _client_context(items: tuple[tuple[str, Any], ...]) -> ssl.SSLContext:
    options = dict(items)
    context = ssl.create_default_context(cafile=options.get("ca") or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if options.get("client_cert"):
        context.load_cert_chain(options["client_cert"], options.get("client_key") or None)
    return context


class Channel:
    """TLS over one connected socket, for FrameSocket: `recv` gives plaintext,
    `seal` turns plaintext into the ciphertext to send."""

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        server_side: bool,
        server_name: str | None = None,
    ) -> None:
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_name
        )
        self._lock = threading.Lock()
        self._early = b""  # plaintext read while waiting to be accepted

    def handshake(self) -> None:
        """Complete the handshake on the socket as it is (blocking, or with a
        timeout). Raises ssl.SSLCertVerificationError when the peer's
        certificate fails, ssl.SSLError for any other refusal (the alert is sent
        to the peer first), ConnectionResetError when the peer closes, and what
        the socket raises."""
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                self._feed("during the TLS handshake")
                continue
            except ssl.SSLError:
                try:
                    self._flush()  # the alert that says why
                except OSError:
                    pass
                raise
            self._flush()  # the last flight, and a server's session tickets
            return

    def accepted(self) -> None:
        """(Client) Wait until the broker has accepted this client: in TLS 1.3
        its session ticket follows, or the alert refusing the certificate
        (ssl.SSLError)."""
        while True:
            try:  # takes in what has arrived: tickets, an alert, or data
                self._early += self._tls.read(RECV_SIZE)
                continue
            except ssl.SSLWantReadError:
                pass
            session = self._tls.session
            if session is not None and session.has_ticket:
                return
            self._feed("before accepting this client")

    @property
    def version(self) -> str | None:
        """The TLS version agreed on, once the handshake is done."""
        return self._tls.version()

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes of plaintext, b"" once the peer has closed.

        Raises what the socket's recv raises (BlockingIOError when the
        kernel's receive timeout passes) and ssl.SSLError for a bad record."""
        if self._early:
            data, self._early = self._early[:size], self._early[size:]
            return data
        while True:
            with self._lock:
                try:
                    return self._tls.read(size)
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLZeroReturnError:  # the peer's close_notify
                    return b""
            data = self.sock.recv(RECV_SIZE)
            if not data:
                return b""
            with self._lock:
                self._incoming.write(data)

    def recv_into(self, buffer: memoryview | bytearray) -> int:
        """Plaintext received into `buffer`: how many bytes, 0 once the peer
        has closed. Raises what :meth:`recv` raises."""
        view = memoryview(buffer)
        if self._early:
            size = min(len(view), len(self._early))
            view[:size] = self._early[:size]
            self._early = self._early[size:]
            return size
        while True:
            with self._lock:
                try:
                    return int(self._tls.read(len(view), view))
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLZeroReturnError:  # the peer's close_notify
                    return 0
            data = self.sock.recv(RECV_SIZE)
            if not data:
                return 0
            with self._lock:
                self._incoming.write(data)

    def seal(self, data: bytes) -> bytes:
        """`data` as ciphertext, after whatever TLS already has waiting to be
        sent; the caller sends it, in the order of its calls."""
        with self._lock:
            self._tls.write(data)
            return self._outgoing.read()

    def _flush(self) -> None:
        pending = self._outgoing.read()
        if pending:
            self.sock.sendall(pending)

    def _feed(self, when: str) -> None:
        data = self.sock.recv(RECV_SIZE)
        if not data:
            raise ConnectionResetError(f"peer closed the connection {when}")
        self._incoming.write(data)


def connect(sock: socket.socket, options: Mapping[str, Any], address: tuple[str, int]) -> Channel:
    """(Client) TLS on a socket connected to the broker at `address`: the
    handshake, then the broker's acceptance of this client.

    Raises AuthenticationFailed when the broker's certificate does not verify
    or the broker refuses this client's, ConnectionError when the handshake
    fails otherwise (a broker without TLS), and what the socket raises (its
    timeout included)."""
    where = f"{address[0]}:{address[1]}"
    name = str(options.get("server_name") or address[0])
    channel = Channel(sock, client_context(options), server_side=False, server_name=name)
    try:
        channel.handshake()
    except ssl.SSLCertVerificationError as exc:
        raise AuthenticationFailed(
            f"broker {where} has a TLS certificate this client cannot verify "
            f"({exc.verify_message}): LEEK['TLS']['ca'] must name the CA that signed it, "
            f"and the certificate must name {name!r} (or set LEEK['TLS']['server_name'])"
        ) from exc
    except ssl.SSLError as exc:
        raise ConnectionError(
            f"TLS handshake with broker {where} failed ({exc.reason or exc}): "
            "is LEEK['TLS'] set on the broker too?"
        ) from exc
    try:
        channel.accepted()
    except ssl.SSLError as exc:
        raise AuthenticationFailed(
            f"broker {where} refused this client's TLS certificate ({exc.reason or exc}): "
            "set LEEK['TLS']['client_cert'] and 'client_key' to a certificate its CA signed"
        ) from exc
    return channel
