"""An @leek.task coroutine function the brokers under test import."""

from __future__ import annotations

import asyncio

from leek.client import task


@task(max_retries=0)
async def double(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x
