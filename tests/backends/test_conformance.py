"""leek against the framework's own ImmediateBackend: the same tasks on both, every
TaskResult field compared (results.describe), and the signals in the same order.

The ImmediateBackend runs a task inside enqueue(), once; leek runs it on a
broker, with retries. A retried task is the ImmediateBackend's run with one
error and one worker id per attempt."""

from __future__ import annotations

import socket
import uuid
from datetime import timedelta
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from tests.conftest import BOTH_POOLS, BrokerProcess, wait_for

from . import receivers
from .conftest import SETTINGS, finished
from .framework import TaskResultDoesNotExist, TaskResultStatus, task_backends, task_enqueued
from .results import describe

IMMEDIATE = "immediate"


def node(broker: BrokerProcess) -> str:
    return f"{socket.gethostname()}:{broker.port}"


def on_both(task: Any, *args: Any, alias: str = "default") -> tuple[Any, Any]:
    """The finished results of `task` run on leek (backend `alias`) and on the
    ImmediateBackend."""
    leek = finished(task.using(backend=alias).enqueue(*args))
    return leek, task.using(backend=IMMEDIATE).enqueue(*args)


def assert_same(leek: Any, immediate: Any, broker: BrokerProcess, alias: str = "default") -> None:
    """Every field alike, but for what only says which backend and run it was."""
    assert describe(leek) == describe(immediate)
    assert str(uuid.UUID(leek.id)) == leek.id and immediate.id
    assert (leek.backend, immediate.backend) == (alias, IMMEDIATE)
    assert leek.worker_ids == [node(broker)] * leek.attempts


def retried(immediate: Any, attempts: int) -> dict[str, Any]:
    """The ImmediateBackend's result of a task that failed, as leek reports it
    after `attempts` attempts that each failed alike."""
    expected = describe(immediate)
    expected.update(errors=expected["errors"] * attempts, attempts=attempts, worker_ids=attempts)
    return expected


def test_a_success_reports_every_field_as_the_immediate_backend_does(
    framework_broker: BrokerProcess, jobs: ModuleType
) -> None:
    leek, immediate = on_both(jobs.add, 2, 3)
    assert leek.status == TaskResultStatus.SUCCESSFUL and leek.return_value == 5
    assert_same(leek, immediate, framework_broker)


def test_a_failure_reports_every_field_as_the_immediate_backend_does(
    framework_broker: BrokerProcess, jobs: ModuleType
) -> None:
    leek, immediate = on_both(jobs.fail, "kaput", alias="once")  # no retry
    assert leek.status == TaskResultStatus.FAILED
    assert describe(leek)["errors"] == [["builtins.ValueError", "ValueError: kaput"]]
    assert_same(leek, immediate, framework_broker, alias="once")


def test_retries_add_one_error_and_one_worker_id_per_attempt(
    framework_broker: BrokerProcess, jobs: ModuleType, tmp_path: Path
) -> None:
    leek, immediate = on_both(jobs.fail, "kaput")  # the backend's OPTIONS: one retry
    assert describe(leek) == retried(immediate, attempts=2)
    assert leek.worker_ids == [node(framework_broker)] * 2

    marker = str(tmp_path / "leek-failed-once")
    leek = finished(jobs.flaky.enqueue(marker))
    first = jobs.flaky.using(backend=IMMEDIATE).enqueue(str(tmp_path / "immediate-failed-once"))
    second = jobs.flaky.using(backend=IMMEDIATE).enqueue(str(tmp_path / "immediate-failed-once"))
    assert (first.status, second.status) == (TaskResultStatus.FAILED, TaskResultStatus.SUCCESSFUL)
    assert leek.status == TaskResultStatus.SUCCESSFUL and leek.return_value == second.return_value
    assert describe(leek)["errors"] == describe(first)["errors"]
    assert leek.attempts == 2 and leek.worker_ids == [node(framework_broker)] * 2


def test_a_running_task_counts_the_attempt_in_progress_as_the_immediate_backend_does(
    framework_broker: BrokerProcess, jobs: ModuleType, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    result = jobs.hold.enqueue(str(gate))

    def running() -> bool:
        result.refresh()
        return bool(result.status == TaskResultStatus.RUNNING)

    wait_for(running)
    seen_from_outside = describe(result)
    assert result.attempts == 1 and result.worker_ids == [node(framework_broker)]
    gate.touch()
    seen_from_inside = finished(result).return_value
    immediate = jobs.hold.using(backend=IMMEDIATE).enqueue(str(gate)).return_value
    assert immediate["status"] == "RUNNING" and immediate["attempts"] == 1
    assert seen_from_outside == seen_from_inside == immediate


def test_async_priority_queues_and_context_match_the_immediate_backend(
    framework_broker: BrokerProcess, jobs: ModuleType
) -> None:
    assert_same(*on_both(jobs.slow_double, 21), framework_broker)
    assert_same(*on_both(jobs.pair, (1, 2), {"k": (3,)}), framework_broker)
    assert_same(*on_both(jobs.add.using(priority=-20), 1, 1), framework_broker)
    leek, immediate = on_both(jobs.describe, "hi")
    assert leek.return_value["id"] == leek.id and immediate.return_value["id"] == immediate.id
    leek.return_value["id"] = immediate.return_value["id"] = "the task's own"
    assert_same(leek, immediate, framework_broker)


def test_a_deferred_task_differs_from_the_immediate_backend_only_by_its_run_after(
    framework_broker: BrokerProcess, jobs: ModuleType
) -> None:
    # The ImmediateBackend does not defer (supports_defer is False): leek's
    # deferred run is compared with its run at once.
    run_after = timezone.now() + timedelta(seconds=1)
    leek = finished(jobs.add.using(run_after=run_after).enqueue(1, 2))
    immediate = jobs.add.using(backend=IMMEDIATE).enqueue(1, 2)
    assert leek.task.run_after == run_after and leek.started_at >= run_after
    expected = describe(immediate)
    expected["task"]["run_after"] = True
    assert describe(leek) == expected


def test_inside_a_transaction_leek_enqueues_at_commit_as_on_commit_enqueue_does(
    framework_broker: BrokerProcess, jobs: ModuleType
) -> None:
    # leek's enqueue() inside atomic() behaves as the framework documents
    # transaction.on_commit(partial(task.enqueue, ...)): nothing is enqueued,
    # and no task_enqueued sent, before the commit.
    events: list[Any] = []

    def enqueued(sender: Any, task_result: Any, **kwargs: Any) -> None:
        events.append(("task_enqueued", task_result.backend, task_result.enqueued_at is not None))

    task_enqueued.connect(enqueued)
    try:
        with transaction.atomic():
            result = jobs.add.enqueue(1, 2)
            events.append("end of block")
            assert result.status == TaskResultStatus.READY and result.enqueued_at is None
            with pytest.raises(TaskResultDoesNotExist):
                task_backends["default"].get_result(result.id)
        events.append("committed")
        with transaction.atomic():
            transaction.on_commit(partial(jobs.add.using(backend=IMMEDIATE).enqueue, 1, 2))
            events.append("end of block")
        events.append("committed")
    finally:
        task_enqueued.disconnect(enqueued)
    assert events == [
        "end of block",
        ("task_enqueued", "default", True),
        "committed",
        "end of block",
        ("task_enqueued", IMMEDIATE, True),
        "committed",
    ]
    assert result.enqueued_at is not None
    assert finished(result).return_value == 3
    assert result.enqueued_at <= result.started_at


def test_a_rolled_back_block_enqueues_nothing_and_sends_no_task_enqueued(
    framework_broker: BrokerProcess, jobs: ModuleType
) -> None:
    events: list[str] = []

    def enqueued(sender: Any, task_result: Any, **kwargs: Any) -> None:
        events.append(task_result.backend)

    task_enqueued.connect(enqueued)
    try:
        with pytest.raises(RuntimeError), transaction.atomic():
            result = jobs.add.enqueue(1, 2)
            transaction.on_commit(partial(jobs.add.using(backend=IMMEDIATE).enqueue, 1, 2))
            raise RuntimeError("roll back")
        after = finished(jobs.add.enqueue(2, 2))  # the broker ran what came next
    finally:
        task_enqueued.disconnect(enqueued)
    assert events == ["default"] and after.return_value == 4
    with pytest.raises(TaskResultDoesNotExist):
        task_backends["default"].get_result(result.id)


def by_process(entries: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """The signals of one leek task: those the client sent (task_enqueued), and
    those the broker sent, each in order (the two processes run side by side:
    the task may start before the client is told it was enqueued)."""
    client = [e for e in entries if e["signal"] == "task_enqueued"]
    return client, [e for e in entries if e["signal"] != "task_enqueued"]


@BOTH_POOLS
def test_each_attempt_sends_task_started_and_the_task_finished_once_at_its_final_status(
    broker_factory: Any,
    jobs: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pool: str,
) -> None:
    log = tmp_path / "signals.jsonl"
    monkeypatch.setenv("SIGNAL_LOG", str(log))
    broker_factory(DJANGO_SETTINGS_MODULE=SETTINGS, LEEK_POOL=pool, SIGNAL_LOG=str(log))
    leek = finished(jobs.fail.enqueue("kaput"))  # one retry
    immediate = jobs.fail.using(backend=IMMEDIATE).enqueue("kaput")
    client, broker = by_process(receivers.read(log, leek.id))
    assert [s["signal"] for s in broker] == [
        "task_started",
        "task_retried",
        "task_started",
        "task_finished",
    ]
    assert broker[1]["attempt"] == 1 and broker[1]["exc_type"] == "builtins.ValueError"
    assert (broker[2]["status"], broker[2]["attempts"]) == ("RUNNING", 2)
    same = receivers.read(log, immediate.id)
    assert [s["signal"] for s in same] == ["task_enqueued", "task_started", "task_finished"]
    for mine, theirs in zip([*client, broker[0]], same[:2], strict=True):
        assert mine.pop("id") != theirs.pop("id")
        assert (mine.pop("backend"), theirs.pop("backend")) == ("default", IMMEDIATE)
        assert mine == theirs
    expected = retried(immediate, attempts=2)
    assert {k: broker[-1][k] for k in expected} == expected

    success = finished(jobs.add.enqueue(1, 2))
    client, broker = by_process(receivers.read(log, success.id))
    assert len(client) == 1
    assert [s["signal"] for s in broker] == ["task_started", "task_finished"]
    assert broker[-1]["status"] == "SUCCESSFUL" and broker[-1]["return_value"] == 3
