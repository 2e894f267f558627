"""leek's own options of a framework task: @task(max_retries=..., timeout=...)."""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import pytest

import leek
from leek.backends import LeekTask
from leek.models import Task
from tests.conftest import BrokerProcess

from .conftest import finished
from .framework import FORWARDS_OPTIONS, InvalidTask, TaskResultStatus, task

needs_forwarding = pytest.mark.skipif(
    not FORWARDS_OPTIONS, reason="this @task passes no extra keyword on (Django 6.0)"
)


def declare(jobs: ModuleType, **options: Any) -> LeekTask:
    """A LeekTask made as @task makes one (Django 6.0's Task has no defaults)."""
    return LeekTask(
        func=jobs.plain,
        priority=0,
        backend="default",
        queue_name="default",
        run_after=None,
        **options,
    )


@needs_forwarding
def test_max_retries_given_to_task_is_honoured_through_the_framework(
    framework_broker: BrokerProcess,
) -> None:
    from . import option_tasks

    assert option_tasks.always_fails.max_retries == 2
    result = finished(option_tasks.always_fails.enqueue())
    assert result.status == TaskResultStatus.FAILED
    assert result.attempts == 3 and len(result.errors) == 3
    assert Task.objects.get(pk=result.id).max_retries == 2
    assert result.task.max_retries == 2  # the task as declared, read back


@needs_forwarding
def test_a_timeout_given_to_task_stops_the_task(framework_broker: BrokerProcess) -> None:
    from . import option_tasks

    result = finished(option_tasks.oversleeps.enqueue(5))
    assert result.status == TaskResultStatus.FAILED and result.attempts == 1
    assert result.errors[0].exception_class_path == "leek.exceptions.TaskTimeout"
    assert Task.objects.get(pk=result.id).timeout == 0.5


@needs_forwarding
def test_a_timeout_stops_an_async_task_where_it_awaits(framework_broker: BrokerProcess) -> None:
    from . import option_tasks

    result = finished(option_tasks.naps.enqueue(60), timeout=20)
    assert result.status == TaskResultStatus.FAILED and result.attempts == 1
    assert result.errors[0].exception_class_path == "leek.exceptions.TaskTimeout"
    assert leek.stats()[1]["workers_stuck"] == 0


@needs_forwarding
def test_an_unknown_option_given_to_task_raises_invalid_task(jobs: ModuleType) -> None:
    with pytest.raises(InvalidTask, match="unknown option 'bogus' for a leek task"):
        task(bogus=1)(jobs.plain)  # type: ignore[call-overload]


def test_an_unknown_option_raises_invalid_task_on_every_version(jobs: ModuleType) -> None:
    with pytest.raises(InvalidTask, match="unknown option 'bogus', 'other'"):
        declare(jobs, bogus=1, other=2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_retries": -1}, "max_retries must be between 0 and"),
        ({"max_retries": "3"}, "max_retries must be a whole number, got '3'"),
        ({"max_retries": True}, "max_retries must be a whole number, got True"),
        ({"max_retries": 1.5}, "max_retries must be a whole number, got 1.5"),
        ({"timeout": 0}, "timeout must be a finite number of seconds above zero"),
        ({"timeout": math.inf}, "timeout must be a finite number of seconds above zero"),
        ({"timeout": "5"}, "timeout must be a number of seconds, got '5'"),
    ],
)
def test_a_bad_option_value_raises_invalid_task_saying_what_it_must_be(
    jobs: ModuleType, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidTask, match=message):
        declare(jobs, **options)


def test_options_survive_using_and_are_the_tasks_own(jobs: ModuleType) -> None:
    declared = declare(jobs, max_retries=4, timeout=2.5)
    moved = declared.using(priority=3, queue_name="emails")
    assert isinstance(moved, LeekTask)
    assert (moved.max_retries, moved.timeout, moved.priority) == (4, 2.5, 3)
    assert declare(jobs).max_retries is None  # the backend's OPTIONS decide


def test_the_backend_options_are_the_defaults_of_its_tasks(
    framework_broker: BrokerProcess, jobs: ModuleType
) -> None:
    once = finished(jobs.fail.using(backend="once").enqueue("x"))
    assert once.attempts == 1 and Task.objects.get(pk=once.id).max_retries == 0
    default = jobs.add.enqueue(1, 1)
    assert Task.objects.get(pk=default.id).max_retries == 1
