"""Tasks of Django's tasks framework, run by the brokers these tests start."""

from __future__ import annotations

import asyncio
from typing import Any

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
