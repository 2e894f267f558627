"""Raw frames on a real socket, as a client sends them and a broker answers them."""

from __future__ import annotations

import io
import socket
from typing import Any

from leek import conf
from leek.protocol.frame import Frame, Keys, encode, read_frame
from tests.proxy import Proxy


def client_keys() -> Keys:
    """The keys of a client of the test's settings."""
    return Keys.client(str(conf.get("SECRET")).encode())


def request(message: tuple[Any, ...], **stamp: Any) -> bytes:
    """The frame a client sends for `message` (`nonce=`, `sent=` to choose its stamp)."""
    return encode(client_keys().send, message, **stamp)


def exchange(port: int, data: bytes, half_close: bool = True) -> bytes:
    """Send raw bytes; everything the broker answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def replies(data: bytes) -> list[Frame]:
    """The reply frames in `data`, each checked with the client's key."""
    stream = io.BytesIO(data)
    found = []
    while (frame := read_frame(stream, client_keys().receive, 1 << 30)) is not None:
        found.append(frame)
    return found


def messages(data: bytes) -> list[tuple[Any, ...]]:
    """The reply messages in `data`."""
    return [frame.message for frame in replies(data)]


def refusal(data: bytes) -> str:
    """The error class of the broker's refusal of a frame (request id 0)."""
    first = messages(data)[0]
    request_id, ok, value = first
    assert (request_id, ok) == (0, False), first
    return str(value["error"])


class Recorder(Proxy):
    """A TCP proxy in front of `port` that keeps every byte its clients send."""

    def __init__(self, port: int) -> None:
        self.sent = bytearray()
        super().__init__(("127.0.0.1", port))

    def passes(self, chunk: bytes, state: Any, asks: bool) -> bool:
        if asks:
            self.sent += chunk
        return True
