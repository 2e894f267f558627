"""Framework tasks with leek's options given to @task: only where @task passes
its extra keywords on (Django 6.1, the django-tasks backport; not Django 6.0)."""

from __future__ import annotations

import asyncio
import time

from .framework import task


@task(max_retries=2)  # type: ignore[call-overload, untyped-decorator]
def always_fails() -> None:
    raise OSError("still broken")


@task(max_retries=0, timeout=0.5)  # type: ignore[call-overload, untyped-decorator]
def oversleeps(seconds: float) -> float:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # short sleeps: the time limit stops it between two
        time.sleep(0.02)
    return seconds


@task(max_retries=0, timeout=0.5)  # type: ignore[call-overload, untyped-decorator]
async def naps(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds
