"""Asking the brokers for their `stats`, for `leek top`.

A `Probe` asks every address the client knows (`conf.brokers()`), one after
the other, and keeps one connection to each from one frame to the next; a
connection that went stale is replaced once. A broker gets REPLY_WAIT seconds
to answer, not REPLY_TIMEOUT, so that one hung broker does not freeze the
view. Each address gets an `Answer`: the figures, or why there are none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import conf
from ..exceptions import AuthenticationFailed, ProtocolError

#: Seconds `leek top` waits for a broker's reply before it calls it unreachable.
REPLY_WAIT = 3.0


@dataclass(frozen=True, slots=True)
class Answer:
    """What one broker address said to `stats`: its figures, or why not.
    `reachable` is True when something answered, even with a refusal."""

    address: str
    stats: dict[str, Any] | None
    error: str = ""
    reachable: bool = True


class Probe:
    """Asks every broker address for its `stats`, keeping the connections open."""

    def __init__(self, reply_wait: float = REPLY_WAIT) -> None:
        self.reply_wait = reply_wait
        self.connections: dict[tuple[str, int], Any] = {}

    def ask(self) -> list[Answer]:
        return [self._ask(address) for address in conf.brokers()]

    def _ask(self, address: tuple[str, int]) -> Answer:
        from ..client.connection import connect

        where = f"{address[0]}:{address[1]}"
        for attempt in range(2):  # an open connection may have gone stale: one fresh try
            conn = self.connections.pop(address, None)
            fresh = conn is None
            try:
                if conn is None:
                    conn = connect(address, self.reply_wait)
                ok, value = conn.request("stats", {})
            except AuthenticationFailed as exc:
                _close(conn)
                return Answer(where, None, str(exc))
            except (OSError, ProtocolError) as exc:
                _close(conn)
                if fresh or attempt:
                    return Answer(where, None, f"{type(exc).__name__}: {exc}", reachable=False)
                continue
            self.connections[address] = conn
            if not ok:
                return Answer(where, None, f"{value.get('error')}: {value.get('message')}")
            return Answer(where, value)
        raise AssertionError("unreachable: the second try always returns")

    def close(self) -> None:
        for conn in self.connections.values():
            _close(conn)
        self.connections.clear()


def _close(conn: Any) -> None:
    if conn is not None:
        conn.close()
