"""Rows the admin tests look at, written as a broker would write them."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from leek.models import BrokerNode, FailedTask, SuccessTask, Task


def make_task(
    status: str = "queued",
    name: str = "tests.tasks.add",
    queue: str = "default",
    ago: float = 60,
    **fields: Any,
) -> Task:
    """A task row that finished (or not) `ago` seconds after it was queued."""
    now = timezone.now()
    queued = now - timedelta(seconds=ago)
    finished = status in ("succeeded", "failed", "cancelled")
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "name": name,
        "queue": queue,
        "status": status,
        "payload": b"\x80\x05secret-payload-bytes",
        "args_repr": "2, 3",
        "queued_at": queued,
        "started_at": queued + timedelta(seconds=1) if status != "queued" else None,
        "finished_at": now if finished else None,
        "attempts": 0 if status == "queued" else 1,
    }
    values.update(fields)
    return Task.objects.create(**values)


def succeed(task: Task, result: str = "5", stdout: str = "", stderr: str = "") -> SuccessTask:
    started = task.started_at or timezone.now()
    return SuccessTask.objects.create(
        task=task,
        name=task.name,
        attempt=task.attempts or 1,
        started_at=started,
        finished_at=task.finished_at or timezone.now(),
        duration=1.25,
        result_repr=result,
        stdout=stdout,
        stderr=stderr,
    )


def fail(task: Task, attempt: int = 1, final: bool = True, message: str = "boom") -> FailedTask:
    return FailedTask.objects.create(
        task=task,
        name=task.name,
        attempt=attempt,
        started_at=task.started_at,
        failed_at=timezone.now(),
        exc_type="builtins.ValueError",
        exc_message=message,
        traceback=f'Traceback (most recent call last):\n  File "tests/tasks.py", line 20\n'
        f"ValueError: {message}\n",
        final=final,
        stdout="before the crash\n",
    )


def make_node(
    name: str = "127.0.0.1:8002", seen: datetime | None = None, **fields: Any
) -> BrokerNode:
    now = timezone.now()
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 8002,
        "pid": 4242,
        "version": "0.1.0",
        "code_version": "",
        "started_at": now - timedelta(hours=2),
        "heartbeat_at": seen or now,
        "workers": 4,
        "workers_alive": 4,
        "handled": 1234,
    }
    values.update(fields)
    return BrokerNode.objects.create(name=name, **values)
