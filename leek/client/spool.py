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


def spool(messages: list[dict[str, Any]], using: str | None = None) -> None:
    """Write each task as a spooled, queued row, on database `using` (None:
    where leek's models are routed). A replayed id is ignored. Each payload is
    stored as dump_task signed it, and a worker checks it before anything is
    unpickled."""
    from ..models import Task

    now = timezone.now()
    rows = [
        Task(
            id=uuid.UUID(m["id"]),
            name=m["name"][:255],
            queue=m["queue"],
            priority=m["priority"],
            status="queued",
            payload=m["payload"],
            args_repr=m["args_repr"],
            max_retries=_retries(m["max_retries"]),
            timeout=m["timeout"],
            queued_at=now,
            run_after=_time(m["run_after"]),
            broker="",
            spooled=True,
            code_version=(m["code_version"] or "")[:64],
            rate_limit=m.get("rate_limit", ""),
        )
        for m in messages
    ]
    manager = Task.objects if using is None else Task.objects.using(using)
    manager.bulk_create(rows, ignore_conflicts=True)


def outbox(messages: list[dict[str, Any]], using: str) -> None:
    """Write the tasks in the transaction open on `using`, and wake a broker
    once it commits; a rollback takes the rows and the wake away with it.

    One wake serves every push of a transaction: a push finds the wake of an
    earlier one registered already, unless that one was made in a savepoint
    that may still roll back without this push's."""
    spool(messages, using)
    db = transaction.get_connection(using)
    current = set(db.savepoint_ids)
    if not any(hook[1] is wake and hook[0] <= current for hook in db.run_on_commit):
        transaction.on_commit(wake, using=using, robust=True)


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


def _time(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)
