"""The rows of expiry and paused queues as the broker reads and writes them (`Store.controls`)."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from ..ops import Call
from ..rows import Dialect
from .cursor import raw_cursor
from .sql import PAUSED

if TYPE_CHECKING:
    from ..ops import Waiter
    from . import Store


class ControlRows:
    """Expired tasks marked through the store's lanes; paused queues read."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def expire(self, task_id: uuid.UUID) -> None:
        """Mark a task that a worker found past its expiry expired, in the next
        batch of the outcomes lane (unless it started or ended meanwhile)."""
        sql = self.store.sql.expire

        def write(cursor: Any, d: Dialect) -> None:
            cursor.execute(sql, (d.time(time.time()), d.pk(task_id)))

        self.store.outcomes.later(Call(write))

    def any_expired(self, before: float) -> bool:
        """Whether a waiting task expires before Unix time `before` (a read)."""
        cursor = raw_cursor()
        try:
            cursor.execute(self.store.sql.any_expired, (self.store.dialect.time(before),))
            return cursor.fetchone() is not None
        finally:
            cursor.close()

    def expire_due(self, before: float) -> Waiter:
        """Mark every waiting task that expires before Unix time `before`
        expired, whichever broker owns it; the value is [(id, queue,
        broker)] of those marked."""
        sql = self.store.sql.expire_due

        def write(cursor: Any, d: Dialect) -> list[tuple[uuid.UUID, str, str]]:
            cursor.execute(sql, (d.time(time.time()), d.time(before)))
            return [(d.read_uuid(i), str(q), str(b)) for i, q, b in cursor.fetchall()]

        return self.store.call(write)

    def paused(self) -> frozenset[str]:
        """The queues paused (QueueState), as the database has them."""
        cursor = raw_cursor()
        try:
            cursor.execute(PAUSED)
            return frozenset(str(queue) for (queue,) in cursor.fetchall())
        finally:
            cursor.close()
