"""The connection a group commit writes on (groupcommit.py): one of its own.

It is opened on the first batch, and again after a failure closed it. It is
used only under the group commit's lock, whichever thread writes: on SQLite a
connection that did not write the last commit finds its page cache stale and
reads the pages again, so several writing connections would each pay for the
others' commits.

It waits LOCK_WAIT for a lock another connection holds (SQLite's busy
timeout; PostgreSQL's `lock_timeout`, unless the connection goes through a
pooler in transaction mode, where a setting of the session would reach other
clients), so that the thread leading a batch is soon back to its connections;
`lock_timeout` says for how long the group commit may try again.
"""

from __future__ import annotations

import logging
import math
import select
from collections.abc import Callable
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections

logger = logging.getLogger(__name__)

#: Seconds a write waits for a lock another connection holds (SQLite's write
#: lock; on PostgreSQL a table's or a row's, `lock_timeout`) before it leaves
#: the batch to the writer thread: the thread that leads it (the event loop)
#: goes back to its connections. The writer thread tries again every
#: LOCKED_RETRY seconds (groupcommit.py), on SQLite for as long as the
#: database's own `timeout` option allows (Python's default, 5 s, without
#: one), on PostgreSQL until the lock is let go, as a write waiting for it would.
LOCK_WAIT = 0.02


class WritingConnection:
    """A DatabaseWrapper of the writer's own, its cursor, and the cursor that
    binds parameters (`open`, from the store's statements)."""

    def __init__(self, open: Callable[[Any, Any], Any]) -> None:
        self._open = open
        #: Seconds a write may be held back by locks before it fails; 0 when
        #: a lock is waited for in the driver alone (no wait of LOCK_WAIT set).
        self.lock_timeout = 0.0
        self._db: Any = None
        self._cursor: Any = None
        self._bound: Any = None
        #: A poll of a PostgreSQL connection's socket, for what the server
        #: says while the connection is idle (see `_cut`); None on SQLite.
        self._idle: Any = None

    def cursors(self) -> tuple[Any, Any]:
        """The cursor every batch is written on, and the cursor that binds
        parameters (the same one on SQLite); opened when there is none, or
        when the server has cut the one there is."""
        if self._idle is not None and self._idle.poll(0):
            self._cut()
        if self._cursor is None:
            if self._db is None:
                self._db = connections.create_connection(DEFAULT_DB_ALIAS)
                self._db.inc_thread_sharing()
            self._db.ensure_connection()
            self._cursor = self._db.connection.cursor()
            wait = int(LOCK_WAIT * 1000)
            if self._db.vendor == "sqlite":
                options = self._db.settings_dict.get("OPTIONS") or {}
                self.lock_timeout = float(options.get("timeout", 5.0))
                self._cursor.execute(f"PRAGMA busy_timeout = {wait}")
            elif self._db.vendor == "postgresql" and session_kept(self._db.settings_dict):
                self.lock_timeout = math.inf
                self._cursor.execute(f"SET lock_timeout = '{wait}ms'")
            if self._db.vendor == "postgresql":
                self._idle = select.poll()
                self._idle.register(self._db.connection.fileno(), select.POLLIN)
            self._bound = self._open(self._cursor, self._db)
        return self._cursor, self._bound

    def _cut(self) -> None:
        """The server spoke while no statement was in flight: between batches a
        PostgreSQL connection hears nothing unless the server is ending it (a
        restart, a failover, `pg_terminate_backend`). It is closed, and the
        batch is written on a new one rather than failed on the dead one:
        nothing was sent on it, so nothing can be written twice."""
        logger.info(
            "writing connection closed by the database, reconnecting",
            extra={"action": "db_reconnect"},
        )
        self.close()

    def close(self) -> None:
        """Close the cursor and the connection; the next batch opens them again."""
        self._idle = None
        if self._cursor is not None:
            try:
                self._cursor.close()
            except Exception:
                logger.debug("closing the writing cursor failed", exc_info=True)
            self._cursor = self._bound = None
        if self._db is not None:
            self._db.close()


def session_kept(settings: dict[str, Any]) -> bool:
    """Whether a setting of the connection's session stays its own: not behind
    a pooler in transaction mode, which the settings say with
    `prepare_threshold: None` (README), and which would hand it to others."""
    options = settings.get("OPTIONS") or {}
    return options.get("prepare_threshold", 5) is not None
