"""A TCP proxy in front of PostgreSQL that breaks a connection around an insert.

Armed, it watches what its clients send for an insert into the task table.
By default it then drops the server's answer to it ("INSERT 0 ...", sent
once the statement has committed), or inside a transaction the answer to
its COMMIT, and closes both ends instead: the client
gets a broken connection for a write the database did commit, the ambiguous
failure of a network that goes away at the wrong moment. Armed `before`, it
closes both ends instead of sending the insert on: the same broken
connection, for a write the database never saw.
"""

from __future__ import annotations

import contextlib
import socket
import threading

#: What a client sends to insert tasks (store/sql.py), and how the server's
#: answer to an insert starts.
STATEMENT = b"INSERT INTO leek_task"
ANSWER = b"INSERT 0 "
#: What a client sends to begin a transaction, and the server's answer to its commit.
BEGIN = b"BEGIN"
COMMITTED = b"COMMIT"
ROLLBACK = b"ROLLBACK"


class Doomed:
    """What one connection sent: a transaction begun, and the insert to cut."""

    def __init__(self) -> None:
        self.began = False  # inside a transaction: a BEGIN sent, no COMMIT or ROLLBACK yet
        self.answer = b""  # the server's answer to drop: set once the insert was sent


class CommitCutter:
    """Forwards 127.0.0.1:`port` (`self.port`) to PostgreSQL at `target`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.cut = threading.Event()  # set once an answer was lost
        self._armed = False
        self._before = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def arm(self, before: bool = False) -> None:
        """Lose the answer to the next insert of tasks, or with `before` the
        insert itself (once)."""
        with self._lock:
            self._armed, self._before = True, before
            self.cut.clear()

    def _take(self) -> bool:
        """Whether the proxy is armed; disarms it."""
        with self._lock:
            armed, self._armed = self._armed, False
        return armed

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
            doomed = Doomed()
            self._sockets += [client, upstream]
            for args in ((client, upstream, doomed, True), (upstream, client, doomed, False)):
                thread = threading.Thread(target=self._pipe, args=args, daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pipe(self, source: socket.socket, sink: socket.socket, doomed: Doomed, asks: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if asks:
                    if BEGIN in chunk:
                        doomed.began = True
                    if STATEMENT in chunk and self._take():
                        if self._before:
                            self.cut.set()
                            return  # the insert is dropped, and both ends closed below
                        doomed.answer = COMMITTED if doomed.began else ANSWER
                    if COMMITTED in chunk or ROLLBACK in chunk:
                        doomed.began = False
                elif doomed.answer and doomed.answer in chunk:
                    self.cut.set()
                    return  # the answer is dropped, and both ends closed below
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
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(10)
