"""`leek retry-failed` from cron: a task that fails at every run is requeued a few times only."""

from __future__ import annotations

import json
from typing import Any

import pytest

import leek
from leek.cli.repair import left_failed, requeue, retry_failed
from leek.models import FailedTask, Task
from tests import tasks
from tests.conftest import BrokerProcess, leek_cli, wait_for

LEFT = "left 1 failed tasks alone: each was requeued {n} times already (--max-requeues {n})"


def failed_again(handle: Any, runs: int) -> None:
    """Wait until the task has failed for good `runs` times."""
    wait_for(lambda: FailedTask.objects.filter(task_id=handle.id, final=True).count() == runs)
    wait_for(lambda: handle.status() == "failed")


def test_a_task_that_always_fails_is_requeued_three_times_then_left_failed(
    broker: BrokerProcess,
) -> None:
    handle = leek.enqueue(tasks.fail, ("every time",), max_retries=0)
    failed_again(handle, 1)
    for run in range(1, 4):
        done = leek_cli(broker.port, "retry-failed")
        assert (done.returncode, done.stdout) == (0, "requeued 1 failed tasks\n")
        failed_again(handle, run + 1)
    done = leek_cli(broker.port, "retry-failed")
    assert done.returncode == 0
    assert done.stdout == "requeued 0 failed tasks\n" + LEFT.format(n=3) + "\n"
    task = Task.objects.get(pk=handle.id)
    assert (task.status, task.requeues) == ("failed", 3)
    assert FailedTask.objects.filter(task_id=handle.id).count() == 4
    assert leek_cli(broker.port, "retry-failed").stdout.endswith(LEFT.format(n=3) + "\n")


def test_max_requeues_is_an_option_and_json_says_what_was_left(broker: BrokerProcess) -> None:
    handle = leek.enqueue(tasks.fail, max_retries=0)
    failed_again(handle, 1)
    done = leek_cli(broker.port, "--json", "retry-failed", "--max-requeues", "1")
    assert json.loads(done.stdout) == {
        "ok": True,
        "count": 1,
        "left": 0,
        "max_requeues": 1,
        "dry_run": False,
    }
    failed_again(handle, 2)
    dry = leek_cli(broker.port, "retry-failed", "--max-requeues", "1", "--dry-run")
    assert dry.stdout == (
        "would requeue 0 failed tasks\nwould leave 1 failed tasks alone: "
        "each was requeued 1 times already (--max-requeues 1)\n"
    )
    more = leek_cli(broker.port, "retry-failed", "--max-requeues", "2")
    assert more.stdout == "requeued 1 failed tasks\n"
    failed_again(handle, 3)
    assert Task.objects.get(pk=handle.id).requeues == 2


@pytest.mark.parametrize("value", ["-1", "three", "1.5"])
def test_a_bad_max_requeues_is_refused(broker: BrokerProcess, value: str) -> None:
    done = leek_cli(broker.port, "retry-failed", "--max-requeues", value)
    assert done.returncode == 2
    assert "--max-requeues: must be a whole number, 0 or more" in done.stderr
    assert "Traceback" not in done.stderr


def test_every_requeue_counts_the_admins_too(transactional_db: Any) -> None:
    from django.utils import timezone

    now = timezone.now()
    task = Task.objects.create(name="t", payload=b"", queued_at=now, status="failed")
    FailedTask.objects.create(
        task=task, name="t", attempt=1, failed_at=now, exc_type="E", final=True
    )
    assert requeue([task.id]) == 1  # as the admin's actions do
    Task.objects.filter(pk=task.id).update(status="failed")
    FailedTask.objects.create(
        task=task, name="t", attempt=1, failed_at=now, exc_type="E", final=True
    )
    assert (retry_failed(max_requeues=1), left_failed(max_requeues=1)) == (0, 1)
    assert (retry_failed(max_requeues=2), left_failed(max_requeues=2)) == (1, 0)
    assert Task.objects.get(pk=task.id).requeues == 2
    with pytest.raises(ValueError, match="0 or more"):
        retry_failed(max_requeues=-1)
