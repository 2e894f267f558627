"""Raw frames on a real socket, as a client sends them and a broker answers them."""

from __future__ import annotations

import io
import socket
import threading
from typing import Any

from leek import conf
from leek.protocol.frame import Frame, Keys, encode, read_frame


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


class Recorder:
    """A TCP proxy in front of `port` that keeps every byte its clients send."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.sent = bytearray()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            except OSError:
                client.close()
                continue
            self._sockets += [client, upstream]
            for source, sink, keep in ((client, upstream, True), (upstream, client, False)):
                thread = threading.Thread(target=self._pipe, args=(source, sink, keep), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pipe(self, source: socket.socket, sink: socket.socket, keep: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if keep:
                    self.sent += chunk
                sink.sendall(chunk)
        except OSError:
            pass  # either side went away
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already shut by the other direction
            source.close()

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        except OSError:
            pass  # not connected: some systems refuse it on a listener
        self.listener.close()
        self._accept.join(10)
        for sock in self._sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes its pipes
            except OSError:
                pass  # closed already
        for thread in self._threads:
            thread.join(10)
