"""Django's tasks framework on leek: tasks written with @task run on a real broker."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import ModuleType

import pytest
from django.utils import timezone

import leek
from leek.models import FailedTask, SuccessTask, Task
from leek.protocol.payload import load_value
from tests import tasks as leek_tasks
from tests.conftest import BrokerProcess, free_port, wait_for

from .conftest import SETTINGS, finished
from .framework import LeekBackend, TaskResultDoesNotExist, TaskResultStatus, task_backends


def test_the_backend_declares_what_it_supports(jobs: ModuleType) -> None:
    backend = task_backends["default"]
    assert isinstance(backend, LeekBackend)
    assert backend.supports_defer and backend.supports_async_task
    assert backend.supports_get_result and backend.supports_priority


def test_a_task_runs_and_reports_its_return_value(
    framework_broker: BrokerProcess, jobs: ModuleType
) -> None:
    result = jobs.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY and result.enqueued_at is not None
    row = Task.objects.get(pk=result.id)
    assert row.name == "tests.backends.tasks.add" and row.queue == "default"
    finished(result)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.errors == [] and result.attempts == 1
    assert result.worker_ids == [f"{socket.gethostname()}:{framework_broker.port}"]
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.last_attempted_at == result.started_at
    again = jobs.add.get_result(result.id)
    assert (again.status, again.return_value, again.args) == (result.status, 5, [2, 3])
    assert task_backends["default"].get_result(result.id).return_value == 5


def test_queue_priority_and_return_values_as_json(
    framework_broker: BrokerProcess, jobs: ModuleType
) -> None:
    result = jobs.pair.enqueue((1, 2), {"k": (3,)})
    row = Task.objects.get(pk=result.id)
    assert (row.queue, row.priority) == ("emails", 5)
    assert finished(result).return_value == [[1, 2], {"k": [3]}]
    assert result.task.queue_name == "emails" and result.task.priority == 5
    urgent = jobs.add.using(priority=-20).enqueue(1, 1)
    assert Task.objects.get(pk=urgent.id).priority == -20
    with pytest.raises(TypeError):
        jobs.add.enqueue(object(), 1)  # arguments must be JSON, checked before the push


def test_failures_map_to_failed_with_their_errors(
    framework_broker: BrokerProcess, jobs: ModuleType
) -> None:
    result = finished(jobs.fail.enqueue("kaput"))  # OPTIONS: one retry
    assert result.status == TaskResultStatus.FAILED
    assert result.attempts == 2 and len(result.errors) == 2
    for error in result.errors:
        assert error.exception_class is ValueError
        assert error.exception_class_path == "builtins.ValueError"
        assert "ValueError: kaput" in error.traceback
        assert 'tests/backends/tasks.py", line' in error.traceback
    with pytest.raises(ValueError, match="Task failed"):
        _ = result.return_value
    bad = finished(jobs.not_json.enqueue())
    assert bad.status == TaskResultStatus.FAILED
    assert bad.errors[-1].exception_class is TypeError


def test_context_defer_and_async(framework_broker: BrokerProcess, jobs: ModuleType) -> None:
    pushed = time.time()
    later = jobs.describe.using(run_after=timezone.now() + timedelta(seconds=1)).enqueue("hi")
    coroutine = jobs.slow_double.enqueue(21)
    assert finished(coroutine).return_value == 42
    assert later.status == TaskResultStatus.READY
    finished(later)
    assert later.return_value == {
        "word": "hi",
        "attempt": 1,
        "id": later.id,
        "status": "RUNNING",
        "queue": "default",
        "priority": 0,
        "enqueued": True,
    }
    assert later.started_at is not None and later.started_at.timestamp() - pushed >= 1.0


def test_results_of_unknown_and_cancelled_tasks(
    framework_broker: BrokerProcess, jobs: ModuleType
) -> None:
    with pytest.raises(TaskResultDoesNotExist):
        task_backends["default"].get_result("not-an-id")
    with pytest.raises(TaskResultDoesNotExist):
        task_backends["default"].get_result("6b0d7d4e-8f5e-4a57-9c55-0a4f5b2b6c11")
    native = leek.push_task_to_queue(leek_tasks.add, 1, 2)
    with pytest.raises(TaskResultDoesNotExist, match="leek's own API"):
        task_backends["default"].get_result(str(native.id))
    waiting = jobs.add.using(run_after=timezone.now() + timedelta(minutes=5)).enqueue(1, 2)
    assert leek.cancel(waiting.id)
    waiting.refresh()
    assert waiting.status == TaskResultStatus.FAILED and waiting.is_finished
    assert waiting.errors[-1].exception_class is leek.TaskCancelled
    assert waiting.attempts == 0


def test_a_framework_task_can_be_a_periodic_task(
    broker_factory: Callable[..., BrokerProcess], jobs: ModuleType
) -> None:
    path = "tests.backends.tasks.describe"
    schedule = {"tick": {"task": path, "every": 1, "args": ["tick"]}}
    broker_factory(DJANGO_SETTINGS_MODULE=SETTINGS, LEEK_SCHEDULE=json.dumps(schedule))
    success = wait_for(lambda: SuccessTask.objects.filter(name=path).first())
    value = load_value(success.result)
    assert value["word"] == "tick" and value["attempt"] == 1 and value["status"] == "RUNNING"


def test_each_attempt_is_credited_to_the_broker_that_ran_it(
    broker_factory: Callable[..., BrokerProcess], jobs: ModuleType, tmp_path: Path
) -> None:
    port = free_port()
    first = broker_factory(
        port=port, DJANGO_SETTINGS_MODULE=SETTINGS, LEEK_NODE_NAME="first", LEEK_RETRY_BACKOFF="3"
    )
    result = jobs.flaky.enqueue(str(tmp_path / "failed-once"))
    wait_for(lambda: FailedTask.objects.filter(task_id=result.id).exists())
    assert first.kill(signal.SIGTERM) == 0  # the retry waits in the database
    broker_factory(port=port, DJANGO_SETTINGS_MODULE=SETTINGS, LEEK_NODE_NAME="second")
    finished(result)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.worker_ids == ["first", "second"] and result.attempts == 2


def test_an_attempt_cut_short_is_credited_to_the_broker_that_died(
    broker_factory: Callable[..., BrokerProcess], jobs: ModuleType, tmp_path: Path
) -> None:
    port = free_port()
    first = broker_factory(port=port, DJANGO_SETTINGS_MODULE=SETTINGS, LEEK_NODE_NAME="first")
    gate = tmp_path / "gate"
    result = jobs.hold.enqueue(str(gate))
    wait_for(lambda: Task.objects.filter(pk=result.id, status="running").exists())
    first.kill(signal.SIGKILL)
    gate.touch()
    broker_factory(
        port=port,
        DJANGO_SETTINGS_MODULE=SETTINGS,
        LEEK_NODE_NAME="second",
        LEEK_HEARTBEAT_TIMEOUT="1",  # the silent first broker is gone after a second
    )
    finished(result)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert [e.exception_class_path for e in result.errors] == ["leek.exceptions.WorkerLost"]
    assert result.worker_ids == ["first", "second"]
