"""The database fallback: a client that reaches no broker writes the task row itself."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from django.utils import timezone


def spool(messages: list[dict[str, Any]]) -> None:
    """Write each task as a spooled, queued row; a broker adopts it within
    SWEEP_INTERVAL seconds, or at its start. A replayed id is ignored. Each
    payload is stored as dump_task signed it, and a worker checks it before
    anything is unpickled."""
    from ..models import Task

    now = timezone.now()
    Task.objects.bulk_create(
        [
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
            )
            for m in messages
        ],
        ignore_conflicts=True,
    )


def _retries(value: int | None) -> int:
    from .. import conf

    return int(conf.get("MAX_RETRIES")) if value is None else value


def _time(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)
