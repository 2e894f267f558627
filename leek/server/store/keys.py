"""Unique keys: what a push whose key another task holds gets instead of a new task.

A task pushed with a key holds it, as its row's ``lock_key``, from its insert
until it starts (or, pushed with ``key_running``, until it ends: succeeded,
failed for good, cancelled or expired). ``lock_key`` is unique among the rows
that have one, so the insert of a second task with a held key does nothing,
whichever broker or client writes it and whatever else its batch holds (the
inserts say ON CONFLICT DO NOTHING). The reply then names the holder: `settle`
reads its id and sets it as the pushed task's `holder`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..rows import Dialect, NewTask
from .sql import by_list

logger = logging.getLogger(__name__)

#: Inserts tried again for a task whose key's holder ended between its
#: insert and the read of the holder (the key is then free).
SETTLE_TRIES = 3

Insert = Callable[[Any, Sequence[NewTask]], Sequence[NewTask]]


def settle(
    d: Dialect, insert: Insert, cursor: Any, tasks: Sequence[NewTask], fresh: Sequence[NewTask]
) -> list[NewTask]:
    """The tasks of `tasks` inserted, `fresh` first; each keyed task not
    inserted gets its key's holder as `holder`. A replayed task (its own id
    there already) keeps its own id; one whose holder ended meanwhile is
    inserted again."""
    inserted = list(fresh)
    done = {t.id for t in inserted}
    pending = [t for t in tasks if t.key is not None and t.id not in done]
    for _ in range(SETTLE_TRIES):
        if not pending:
            break
        held = holders(d, cursor, {t.key for t in pending if t.key is not None})
        there = existing(d, cursor, [t.id for t in pending])
        free = []
        for t in pending:
            if t.id in there:
                t.holder = None
            elif t.key in held:
                t.holder = held[t.key]
            else:
                free.append(t)
        again = list(insert(cursor, free)) if free else []
        inserted += again
        taken = {t.id for t in again}
        pending = [t for t in free if t.id not in taken]
    for t in pending:
        logger.warning(
            "task not inserted: its key changed hands too often task=%s key=%s",
            t.id,
            t.key,
            extra={"action": "key_unsettled"},
        )
    return inserted


def holders(d: Dialect, cursor: Any, keys: Iterable[str]) -> dict[str, Any]:
    """The id of the task holding each of `keys` that is held."""
    wanted = sorted(keys)
    sql = _marks(d, "SELECT lock_key, id FROM leek_task WHERE lock_key IN", wanted)
    by_list(d, cursor, sql, wanted)
    return {str(key): d.read_uuid(task_id) for key, task_id in cursor.fetchall()}


def existing(d: Dialect, cursor: Any, ids: Sequence[Any]) -> set[Any]:
    """Which of task `ids` are there."""
    keys = [d.pk(i) for i in ids]
    by_list(d, cursor, _marks(d, "SELECT id FROM leek_task WHERE id IN", keys), keys)
    return {d.read_uuid(task_id) for (task_id,) in cursor.fetchall()}


def _marks(d: Dialect, head: str, values: Sequence[Any]) -> str:
    return f"{head} ({', '.join([d.ph] * len(values))})"
