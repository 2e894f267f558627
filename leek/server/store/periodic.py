"""The PeriodicTask rows as the broker reads and writes them (`Store.periodic`)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from ..rows import Dialect, NewTask, Ready
from . import storable
from .cursor import raw_cursor

if TYPE_CHECKING:
    from ..ops import Waiter
    from . import Store

#: A row's change of next_run_at: (id, next_run_at as read, new time).
NextRun = tuple[int, Any, float | None]


class PeriodicRows:
    """Reads and claims of PeriodicTask rows, written through the store's tasks lane."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def sync(self, entries: dict[str, dict[str, Any]], keep: list[str]) -> Waiter:
        """Write LEEK["SCHEDULE"]'s entries into rows marked from_settings
        (a changed schedule clears next_run_at); delete the other such rows
        but those named in `keep`."""
        sql = self.store.sql

        def write(cursor: Any, d: Dialect) -> None:
            for name, v in entries.items():
                row = (
                    json.dumps(v["args"]),
                    json.dumps(v["kwargs"]),
                    v["cron"],
                    v["every"],
                    v["queue"],
                    v["priority"],
                    v["enabled"],
                    v["catch_up"],
                )
                cursor.execute(sql.schedule_insert, (name, v["task"], *row, True))
                every = -1 if v["every"] is None else v["every"]
                cursor.execute(
                    sql.schedule_update,
                    (v["cron"], every, v["enabled"], v["task"], *row, True, name),
                )
            cursor.execute(sql.unschedule(len(keep)), keep)

        return self.store.call(write)

    def rows(self) -> list[tuple[Any, ...]]:
        """Every PeriodicTask row, its columns in sql.PERIODIC_COLUMNS' order."""
        cursor = raw_cursor()
        try:
            cursor.execute(self.store.sql.periodic_rows)
            return list(cursor.fetchall())
        finally:
            cursor.close()

    def set_next(self, changes: list[NextRun]) -> Waiter:
        """Set each row's next_run_at, where it is still as read; the value
        says, for each change, whether it was written."""
        sql = self.store.sql

        def write(cursor: Any, d: Dialect) -> list[bool]:
            done = []
            for row_id, old, nxt in changes:
                if old is None:
                    cursor.execute(sql.next_run_from_null, (d.time(nxt), row_id))
                else:
                    cursor.execute(sql.next_run_from, (d.time(nxt), row_id, old))
                done.append(cursor.rowcount == 1)
            return done

        return self.store.call(write)

    def claim(
        self,
        row_id: int,
        schedule: tuple[Any, str, float | None],
        due: float,
        nxt: float | None,
        task: NewTask | None,
    ) -> Waiter:
        """Claim the run of a periodic row due at `due` and insert its `task`
        (None: the run is skipped, only next_run_at moves on) in one transaction.

        The claim holds only while the row is as read: `schedule` is its
        (next_run_at as stored, cron, every). The value is the task inserted
        as Ready (none for a skipped run), or None when another broker
        claimed the run first or the row changed."""
        sql = self.store.sql
        stored, cron, every = schedule
        writes = self.store.writes
        if task is not None:
            task = storable.task(task, self.store.text_limit)

        def write(cursor: Any, d: Dialect) -> list[Ready] | None:
            where = (d.time(nxt), row_id, stored, cron, -1 if every is None else every)
            if task is not None:
                cursor.execute(sql.claim_run, (d.time(due), *where))
            else:
                cursor.execute(sql.skip_run, where)
            if cursor.rowcount != 1:
                return None
            return [] if task is None else writes.insert_tasks(cursor, [task])

        return self.store.call(write)

    def refused(self, row_id: int, name: str, path: str, reason: str) -> Waiter:
        """Write the Event of a periodic row this broker refuses to run."""
        sql = self.store.sql.event
        node = self.store.node
        message = f"periodic task {name!r} was not run: {reason}"[:1024]
        data = json.dumps({"periodic_task": row_id, "task": path, "reason": reason, "broker": node})

        def write(cursor: Any, d: Dialect) -> None:
            cursor.execute(sql, ("periodic.refused", message, "", data, d.time(time.time())))

        return self.store.call(write)
