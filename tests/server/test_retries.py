"""Retries with backoff, Retry(countdown), no-retry exceptions, time limits, hooks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import leek
from leek.models import FailedTask, SuccessTask, Task
from tests import tasks
from tests.conftest import BOTH_POOLS, wait_for


@BOTH_POOLS
def test_failing_twice_then_succeeding(broker_factory: Any, tmp_path: Path, pool: str) -> None:
    broker_factory(LEEK_POOL=pool, LEEK_RETRY_BACKOFF="0.05")
    handle = leek.push_task_to_queue(tasks.flaky, str(tmp_path / "runs"), 2)
    assert handle.result(timeout=20) == 3
    task = Task.objects.get()
    assert (task.status, task.attempts) == ("succeeded", 3)
    failures = list(FailedTask.objects.order_by("attempt"))
    assert [(f.attempt, f.final, f.exc_type) for f in failures] == [
        (1, False, "builtins.RuntimeError"),
        (2, False, "builtins.RuntimeError"),
    ]
    assert "flaky run 2" in failures[1].traceback
    assert SuccessTask.objects.get().attempt == 3


@BOTH_POOLS
def test_always_failing_ends_failed_after_max_retries_plus_one(
    broker_factory: Any, pool: str
) -> None:
    broker_factory(LEEK_POOL=pool, LEEK_RETRY_BACKOFF="0.05")
    handle = leek.enqueue(tasks.fail, ("nope",), max_retries=2)
    with pytest.raises(leek.TaskFailed, match="nope"):
        handle.result(timeout=20)
    assert Task.objects.get().attempts == 3
    assert list(FailedTask.objects.order_by("attempt").values_list("attempt", "final")) == [
        (1, False),
        (2, False),
        (3, True),
    ]


@BOTH_POOLS
def test_backoff_grows_as_configured(broker_factory: Any, pool: str) -> None:
    broker_factory(
        LEEK_POOL=pool,
        LEEK_RETRY_BACKOFF="0.2",
        LEEK_RETRY_JITTER="0",
        LEEK_RETRY_BACKOFF_MAX="0.5",
    )
    handle = leek.enqueue(tasks.fail, max_retries=3)
    with pytest.raises(leek.TaskFailed):
        handle.result(timeout=20)
    failures = list(FailedTask.objects.order_by("attempt"))
    gaps = [
        (b.started_at - a.failed_at).total_seconds()  # type: ignore[operator]
        for a, b in zip(failures, failures[1:], strict=False)
    ]
    # 0.2, 0.4, then capped at 0.5; the sweep of delayed tasks is exact to ~10 ms.
    for gap, expected in zip(gaps, [0.2, 0.4, 0.5], strict=True):
        assert expected - 0.01 <= gap <= expected + 0.15, gaps


@BOTH_POOLS
def test_jitter_adds_up_to_its_share(broker_factory: Any, pool: str) -> None:
    broker_factory(LEEK_POOL=pool, LEEK_RETRY_BACKOFF="0.2", LEEK_RETRY_JITTER="1.0")
    handle = leek.enqueue(tasks.fail, max_retries=1)
    with pytest.raises(leek.TaskFailed):
        handle.result(timeout=20)
    first, second = FailedTask.objects.order_by("attempt")
    gap = (second.started_at - first.failed_at).total_seconds()  # type: ignore[operator]
    assert 0.19 <= gap <= 0.55


@BOTH_POOLS
def test_a_task_may_ask_for_a_retry(broker: Any, tmp_path: Path) -> None:
    handle = leek.push_task_to_queue(tasks.retry_later, str(tmp_path / "first"))
    first_run = float(handle.result(timeout=20))
    failure = FailedTask.objects.get()
    assert failure.exc_type == "leek.exceptions.Retry" and not failure.final
    started = SuccessTask.objects.get().started_at.timestamp()
    assert started - first_run >= 0.29


@BOTH_POOLS
def test_no_retry_exceptions_fail_at_once(broker_factory: Any, pool: str) -> None:
    broker_factory(LEEK_POOL=pool, LEEK_NO_RETRY="builtins.ValueError")
    handle = leek.enqueue(tasks.fail, max_retries=5)
    with pytest.raises(leek.TaskFailed):
        handle.result(timeout=20)
    assert Task.objects.get().attempts == 1


@BOTH_POOLS
def test_a_time_limit_fails_the_task_and_keeps_the_pool(broker: Any) -> None:
    handle = leek.enqueue(tasks.spin, (30,), timeout=0.5, max_retries=0)
    with pytest.raises(leek.TaskFailed, match=r"timed out after 0.5 s"):
        handle.result(timeout=20)
    assert leek.ping() == (True, "I'm OK")
    assert leek.stats()[1]["workers_alive"] == 2
    assert leek.push_task_to_queue(tasks.add, 1, 1).result(timeout=10) == 2
    # the stopped thread's late outcome was discarded: one outcome only
    assert FailedTask.objects.filter(task_id=handle.id).count() == 1


@BOTH_POOLS
def test_failure_hooks_run_once_and_a_broken_one_is_contained(
    broker_factory: Any, tmp_path: Path, pool: str
) -> None:
    hook_file = tmp_path / "hook"
    broker = broker_factory(
        LEEK_POOL=pool,
        LEEK_ON_FAILURE="tests.tasks.broken_hook,tests.tasks.hook_to_file",
        LEEK_TEST_HOOK_FILE=str(hook_file),
    )
    handle = leek.enqueue(tasks.fail, max_retries=1)
    with pytest.raises(leek.TaskFailed):
        handle.result(timeout=20)
    wait_for(hook_file.exists)
    assert hook_file.read_text() == f"{handle.id} tests.tasks.fail builtins.ValueError 2\n"
    assert "failure hook raised" in broker.output()
    assert leek.ping() == (True, "I'm OK")
