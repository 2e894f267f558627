"""A TCP proxy on 127.0.0.1 for the tests: it forwards each chunk its hook lets through."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any


class Proxy:
    """Forwards 127.0.0.1:`self.port` to `target`, two threads a connection.

    A subclass decides in `passes` what becomes of each chunk read, and may
    keep what it needs of one connection in the object `state` makes for it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def state(self) -> Any:
        """What a new connection's two directions share."""
        return None

    def passes(self, chunk: bytes, state: Any, asks: bool) -> bool:
        """Whether `chunk`, read from the client (`asks`) or from the server,
        goes on; False closes both ends instead."""
        return True

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            shared = self.state()
            self._sockets += [client, upstream]
            for args in ((client, upstream, shared, True), (upstream, client, shared, False)):
                thread = threading.Thread(target=self._pipe, args=args, daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pipe(self, source: socket.socket, sink: socket.socket, state: Any, asks: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if not self.passes(chunk, state, asks):
                    return  # dropped, and both ends closed below
                sink.sendall(chunk)
        except OSError:
            pass  # either side went away
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            source.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self.listener.close()
        self._accept.join(10)
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes its pipes
        for thread in self._threads:
            thread.join(10)
