"""One live broker per node name.

A broker recovers the unfinished tasks under its name when it starts, so two
live brokers under one name (an explicit LEEK_NODE_NAME copied to two machines,
or two brokers of one machine on one port and two addresses) would each run
the other's tasks again. `ensure_free` refuses such a start: the name's last
heartbeat is recent and its broker is not known dead, and the heartbeat moves
while the new broker watches it. A broker killed a moment ago leaves a recent
heartbeat too; on its own machine its process is gone, which is seen at once,
and from elsewhere its heartbeat stands still. `Conflict` catches what the start
cannot (two brokers started at the same instant): each heartbeat first reads
the row, and a row another process wrote since the last one makes this broker
unhealthy, so `leek ping` fails on both.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import timedelta
from typing import Any

from ..exceptions import NodeNameInUse
from .store import Store

logger = logging.getLogger(__name__)

#: Heartbeat intervals a new broker watches a recent namesake's heartbeat for.
WATCH_INTERVALS = 2


def ensure_free(store: Store, hostname: str, interval: float, timeout: float) -> None:
    """Return when no live broker runs as the store's node; raise NodeNameInUse when one does."""
    node = store.node
    last = store.nodes.node_row(node)
    if last is None or last["stopped"]:
        return
    if last["db_now"] - last["heartbeat_at"] > timedelta(seconds=timeout):
        return  # silent past the timeout: the other brokers count it dead too
    if last["hostname"] == hostname and not _running(int(last["pid"])):
        return  # killed on this machine, and restarted
    deadline = time.monotonic() + WATCH_INTERVALS * interval + 0.5
    while time.monotonic() < deadline:
        time.sleep(min(0.1, interval / 4))
        now = store.nodes.node_row(node)
        if now is None or now["stopped"]:
            return
        if now["heartbeat_at"] != last["heartbeat_at"]:
            raise NodeNameInUse(
                f"a live broker already runs as node {node!r} "
                f"(machine {now['hostname'] or '?'}, address {now['host']}:{now['port']}, "
                f"pid {now['pid']}): give each broker its own LEEK_NODE_NAME"
            )


class Conflict:
    """Whether another live process wrote this broker's row since its last
    heartbeat; the finding holds until `timeout` seconds pass without another."""

    def __init__(self, node: str, hostname: str, timeout: float) -> None:
        self.node = node
        self.me = (hostname, os.getpid())
        self.timeout = timeout
        self._message = ""
        self._seen = 0.0  # time.monotonic() of the last foreign write seen
        self.written = False  # set once a heartbeat of this broker is committed

    @property
    def message(self) -> str:
        """Why this broker is unhealthy, or "" while it is alone under its name."""
        if self._message and time.monotonic() - self._seen > self.timeout:
            self._message = ""
        return self._message

    def check(self, row: tuple[Any, ...] | None) -> None:
        """Read the row (hostname, pid, host, port, stopped) as the heartbeat's
        transaction finds it, before it is written; a conflict found that was
        not known is logged."""
        known = bool(self.message)
        if not self.written or row is None:
            return
        if (row[0], int(row[1])) != self.me and not row[4]:
            self._seen = time.monotonic()
            self._message = (
                f"another broker also runs as node {self.node!r} (machine {row[0] or '?'}, "
                f"address {row[2]}:{row[3]}, pid {row[1]}): give each its own LEEK_NODE_NAME"
            )
            if not known:
                logger.error("%s", self._message, extra={"action": "node_name_conflict"})


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
