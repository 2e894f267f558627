"""Django's tasks framework: django.tasks on Django 6, the django-tasks package on 5.2.

A test module importing this is skipped when neither is installed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from django.tasks import TaskContext, TaskResultStatus, task, task_backends
    from django.tasks.exceptions import TaskResultDoesNotExist
else:
    try:
        from django.tasks import TaskContext, TaskResultStatus, task, task_backends
        from django.tasks.exceptions import TaskResultDoesNotExist
    except ImportError:
        pytest.importorskip("django_tasks", reason="on Django 5.2: pip install 'leek[tasks]'")
        import django_tasks.signals  # noqa: F401 - resets the backends when TASKS changes
        from django_tasks import TaskContext, TaskResultStatus, task, task_backends
        from django_tasks.exceptions import TaskResultDoesNotExist

from leek.backends import LeekBackend  # noqa: E402 - needs the framework found above

__all__ = [
    "LeekBackend",
    "TaskContext",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
    "task",
    "task_backends",
]
