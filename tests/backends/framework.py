"""Django's tasks framework: django.tasks on Django 6, the django-tasks package on 5.2.

A test module importing this is skipped when neither is installed."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from django.tasks import TaskContext, TaskResultStatus, task, task_backends
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
else:
    try:
        from django.tasks import TaskContext, TaskResultStatus, task, task_backends
        from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
        from django.tasks.signals import task_enqueued, task_finished, task_started
    except ImportError:
        pytest.importorskip("django_tasks", reason="on Django 5.2: pip install 'leek[tasks]'")
        import django_tasks.signals  # noqa: F401 - resets the backends when TASKS changes
        from django_tasks import TaskContext, TaskResultStatus, task, task_backends
        from django_tasks.exceptions import InvalidTaskError as InvalidTask
        from django_tasks.exceptions import TaskResultDoesNotExist
        from django_tasks.signals import task_enqueued, task_finished, task_started

from leek.backends import LeekBackend  # noqa: E402 - needs the framework found above

#: Whether @task passes its extra keywords to the backend's task_class (Django
#: 6.1 and the backport do; Django 6.0 does not).
FORWARDS_OPTIONS = any(
    p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(task).parameters.values()
)

__all__ = [
    "FORWARDS_OPTIONS",
    "InvalidTask",
    "LeekBackend",
    "TaskContext",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
    "task",
    "task_backends",
    "task_enqueued",
    "task_finished",
    "task_started",
]
