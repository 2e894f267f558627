"""Task rows a client writes itself, for a broker to adopt.

Two paths write them: the database fallback, when no broker committed a push
(`spool`), and the outbox, which writes a push made inside
transaction.atomic() in that very transaction (`outbox`), so that the task
exists if and only if the transaction commits. Either way the row is queued
and spooled, owned by no broker: a broker adopts it at its next sweep (every
SWEEP_INTERVAL seconds, and at its start), or at once when `wake` reaches one.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from ..exceptions import LeekError
from . import connection

logger = logging.getLogger(__name__)


#: Writes tried again for a task whose key's holder ended between the write
#: and the read of the holder (the key is then free).
SETTLE_TRIES = 3


def spool(messages: list[dict[str, Any]], using: str | None = None) -> dict[str, str]:
    """Write each task as a spooled, queued row, on database `using` (None:
    where leek's models are routed). A replayed id is ignored, and so is a
    task whose key another task holds: the value maps such a task's id to
    the holder's. Each payload is stored as dump_task signed it, and a
    worker checks it before anything is unpickled."""
    from ..models import Task

    now = timezone.now()
    rows = [
        Task(
            id=uuid.UUID(m["id"]),
            name=m["name"][:255],
            queue=m["queue"],
            priority=m["priority"],
            status="waiting" if m.get("waiting") else "queued",
            payload=m["payload"],
            args_repr=m["args_repr"],
            max_retries=_retries(m["max_retries"]),
            timeout=m["timeout"],
            queued_at=now,
            run_after=_time(m["run_after"]),
            broker="",
            spooled=True,
            code_version=(m["code_version"] or "")[:64],
            key=m.get("key"),
            lock_key=m.get("key"),
            key_running=bool(m.get("key_running", False)),
            expires_at=_time(m.get("expires")),
            chain=_uuid(m.get("chain")),
            next_step=_uuid(m.get("next_step")),
        )
        for m in messages
    ]
    manager = Task.objects if using is None else Task.objects.using(using)
    manager.bulk_create(rows, ignore_conflicts=True)
    keyed = [row for row in rows if row.lock_key is not None]
    return _holders(manager, keyed) if keyed else {}


def _holders(manager: Any, rows: list[Any]) -> dict[str, str]:
    """For each of the keyed `rows` not written because another task holds
    its key, {its id: the holder's id}; one whose holder ended meanwhile is
    written again."""
    held: dict[str, str] = {}
    pending = rows
    for _ in range(SETTLE_TRIES):
        there = set(manager.filter(pk__in=[r.id for r in pending]).values_list("id", flat=True))
        pending = [r for r in pending if r.id not in there]
        if not pending:
            break
        holders = dict(
            manager.filter(lock_key__in={r.lock_key for r in pending}).values_list("lock_key", "id")
        )
        free = []
        for row in pending:
            if row.lock_key in holders:
                held[str(row.id)] = str(holders[row.lock_key])
            else:
                free.append(row)
        if not free:
            break
        manager.bulk_create(free, ignore_conflicts=True)
        pending = free
    return held


def outbox(messages: list[dict[str, Any]], using: str) -> dict[str, str]:
    """Write the tasks in the transaction open on `using`, and wake a broker
    once it commits; a rollback takes the rows and the wake away with it.

    One wake serves every push of a transaction: a push finds the wake of an
    earlier one registered already, unless that one was made in a savepoint
    that may still roll back without this push's. The value is spool's."""
    held = spool(messages, using)
    db = transaction.get_connection(using)
    current = set(db.savepoint_ids)
    if not any(hook[1] is wake and hook[0] <= current for hook in db.run_on_commit):
        transaction.on_commit(wake, using=using, robust=True)
    return held


def wake() -> None:
    """Ask a broker to adopt the spooled tasks now (the ``sweep`` verb).

    Never raises for a broker that cannot be asked: a lost wake only delays
    the tasks until a broker's next sweep."""
    try:
        connection.call("sweep", {})
    except LeekError as exc:
        logger.info(
            "no broker woken for the spooled tasks; its next sweep adopts them error=%s",
            exc,
            extra={"action": "wake_lost"},
        )


def unbatch(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The tasks of an ``enqueue_batch`` as ``enqueue`` sends each, which is
    what `spool` writes."""
    return [
        {
            "id": str(uuid.UUID(bytes=task_id)),
            "name": name,
            "payload": payload,
            "args_repr": args_repr,
            **data["options"],
        }
        for task_id, name, payload, args_repr in data["tasks"]
    ]


def _retries(value: int | None) -> int:
    from .. import conf

    return int(conf.get("MAX_RETRIES")) if value is None else value


def _uuid(value: str | None) -> uuid.UUID | None:
    """A chain's link (a push of steps, client/canvas.py), or None for a lone task."""
    return None if value is None else uuid.UUID(value)


def _time(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)
