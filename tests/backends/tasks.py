"""Tasks of Django's tasks framework, run by the brokers these tests start."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from . import results
from .framework import TaskContext, task


@task
def add(a: int, b: int) -> int:
    return a + b


@task(queue_name="emails", priority=5)
def pair(a: Any, b: Any) -> tuple[Any, Any]:
    return (a, b)


@task
def fail(message: str) -> None:
    raise ValueError(message)


@task
def not_json() -> object:
    return object()


@task(takes_context=True)
def describe(context: TaskContext[..., Any], word: str) -> dict[str, Any]:
    result = context.task_result
    return {
        "word": word,
        "attempt": context.attempt,
        "id": result.id,
        "status": str(result.status),
        "queue": result.task.queue_name,
        "priority": result.task.priority,
        "enqueued": result.enqueued_at is not None,
    }


@task
async def slow_double(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


@task
def flaky(marker: str) -> str:
    """Fails the first time (and leaves the file `marker`), succeeds after."""
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise ConnectionError("the first attempt fails")
    return "ok"


@task(takes_context=True)
def hold(context: TaskContext[..., Any], gate: str) -> dict[str, Any]:
    """Waits up to 20 s for the file `gate`; returns its TaskResult as it was
    while it ran (results.describe)."""
    deadline = time.monotonic() + 20
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    return results.describe(context.task_result)


def plain(x: int) -> int:
    """A module-level function no decorator made a task of."""
    return x
