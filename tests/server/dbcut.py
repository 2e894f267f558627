"""A TCP proxy in front of PostgreSQL that breaks a connection around an insert.

Armed, it watches what its clients send for an insert into the task table
(or another table it is armed for: an outcome's attempt row, say).
By default it then drops the server's answer to it ("INSERT 0 ...", sent
once the statement has committed), or inside a transaction the answer to
its COMMIT, and closes both ends instead: the client gets a broken
connection for a write the database did commit, the ambiguous failure of a
network that goes away at the wrong moment. Armed `before`, it closes both
ends instead of sending the insert on: the same broken connection, for a
write the database never saw.
"""

from __future__ import annotations

import threading

from tests.proxy import Proxy

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


class CommitCutter(Proxy):
    """Forwards 127.0.0.1:`port` (`self.port`) to PostgreSQL at `target`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.cut = threading.Event()  # set once an insert or its answer was lost
        self._armed = False
        self._before = False
        self._statement = STATEMENT
        self._lock = threading.Lock()
        super().__init__(target)

    def arm(self, before: bool = False, statement: bytes = STATEMENT) -> None:
        """Lose the answer to the next insert of tasks (or the next
        `statement`), or with `before` the insert itself (once)."""
        with self._lock:
            self._armed, self._before, self._statement = True, before, statement
            self.cut.clear()

    def _take(self) -> bool:
        """Whether the proxy is armed; disarms it."""
        with self._lock:
            armed, self._armed = self._armed, False
        return armed

    def state(self) -> Doomed:
        return Doomed()

    def passes(self, chunk: bytes, state: Doomed, asks: bool) -> bool:
        if asks:
            if BEGIN in chunk:
                state.began = True
            if self._statement in chunk and self._take():
                if self._before:
                    self.cut.set()
                    return False  # the insert is dropped
                state.answer = COMMITTED if state.began else ANSWER
            if COMMITTED in chunk or ROLLBACK in chunk:
                state.began = False
        elif state.answer and state.answer in chunk:
            self.cut.set()
            return False  # the answer is dropped
        return True
