"""async def tasks: awaited in an event loop on the worker, in both pools."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

import leek
from leek.models import FailedTask, SuccessTask
from leek.protocol.payload import dump_task, load_value
from leek.server.attempt import Attempt, perform
from tests import tasks
from tests.conftest import BOTH_POOLS, BrokerProcess
from tests.server import async_tasks


def attempt_of(fn: Any, *args: Any, timeout: float | None = None) -> Attempt:
    return Attempt(uuid.uuid4(), "t", 1, dump_task(fn, args, {}), timeout, "here", 0)


def test_perform_awaits_a_coroutine_function() -> None:
    result = perform(attempt_of(tasks.async_add, 2, 3), None, None, ())
    assert result.succeeded
    assert load_value(result.result) == 5


def test_a_time_limit_cancels_a_coroutine_where_it_awaits() -> None:
    result = perform(attempt_of(tasks.async_nap, 30, timeout=0.2), None, None, ())
    assert (result.succeeded, result.exc_type) == (False, "leek.exceptions.TaskTimeout")


def test_a_coroutines_own_timeout_error_is_not_its_time_limit() -> None:
    async def waits_for_too_little() -> None:
        await asyncio.wait_for(asyncio.sleep(5), 0.01)

    result = perform(attempt_of(waits_for_too_little, timeout=30), None, None, ())
    assert result.exc_type == "builtins.TimeoutError"


@BOTH_POOLS
def test_an_async_tasks_result_is_the_coroutines_value(broker: BrokerProcess) -> None:
    handle = leek.enqueue(tasks.async_add, (20, 22))
    assert handle.result(timeout=20) == 42
    assert SuccessTask.objects.get(task_id=handle.id).result_repr == "42"


@BOTH_POOLS
def test_an_async_task_sees_its_own_context(broker: BrokerProcess) -> None:
    handle = leek.enqueue(tasks.async_whoami)
    assert handle.result(timeout=20) == [str(handle.id), 1]


@BOTH_POOLS
def test_a_decorated_coroutine_function_runs(broker: BrokerProcess) -> None:
    assert async_tasks.double.delay(21).result(timeout=20) == 42


@BOTH_POOLS
def test_an_awaiting_async_task_is_stopped_at_its_limit(broker: BrokerProcess) -> None:
    handle = leek.enqueue(tasks.async_nap, (60,), timeout=0.5, max_retries=0)
    with pytest.raises(leek.TaskFailed, match=r"timed out after 0.5 s"):
        handle.result(timeout=20)
    assert FailedTask.objects.get(task_id=handle.id).exc_type == "leek.exceptions.TaskTimeout"
    stats = leek.stats()[1]
    assert (stats["workers_alive"], stats["workers_stuck"]) == (2, 0)
    assert leek.enqueue(tasks.async_add, (1, 1)).result(timeout=20) == 2
