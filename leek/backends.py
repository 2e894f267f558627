"""A backend for Django's tasks framework that runs the tasks on leek.

Configure it in settings::

    TASKS = {"default": {"BACKEND": "leek.backends.LeekBackend"}}

and the framework's ``@task`` functions (``django.tasks`` on Django 6, the
``django-tasks`` package on Django 5.2: ``pip install "leek[tasks]"``) are
pushed to the broker by ``.enqueue()`` and run on its workers, with the
task's ``queue_name``, ``priority`` and ``run_after``. Inside transaction.atomic()
the push waits for the commit, as every leek push does (ON_COMMIT).

Results come from the database, so ``get_result()`` works from any process:

=================  ==========================================================
leek               TaskResult
=================  ==========================================================
queued             READY (also while a failed attempt waits for its retry)
running            RUNNING
succeeded          SUCCESSFUL, ``return_value`` from the SuccessTask row
failed             FAILED
cancelled          FAILED, with a ``leek.exceptions.TaskCancelled`` error
FailedTask rows    ``errors``: exception class path and traceback, per attempt
attempts           ``attempts`` (the one running does not count) and
                   ``worker_ids`` (the broker's name, once per attempt)
=================  ==========================================================

Arguments and return values must be JSON-serialisable, as the framework asks;
they are normalised as its other backends do (a tuple becomes a list).
Retries follow leek's MAX_RETRIES unless ``OPTIONS = {"max_retries": n}``;
``OPTIONS = {"timeout": seconds}`` sets a time limit. A task that
``takes_context`` gets a ``TaskContext`` whose ``attempt`` counts from 1.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone
from django.utils.module_loading import import_string

from . import conf

if TYPE_CHECKING:
    from django.tasks import Task, TaskContext, TaskResult, TaskResultStatus
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TaskError
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json
else:
    try:  # Django 6.0 and later
        from django.tasks import Task, TaskContext, TaskResult, TaskResultStatus
        from django.tasks.backends.base import BaseTaskBackend
        from django.tasks.base import TaskError
        from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
        from django.tasks.signals import task_enqueued, task_finished, task_started
        from django.utils.json import normalize_json
    except ImportError:
        try:  # Django 5.2 with the django-tasks package
            from django_tasks import TaskContext, TaskResult, TaskResultStatus
            from django_tasks.backends.base import BaseTaskBackend
            from django_tasks.base import Task, TaskError
            from django_tasks.exceptions import InvalidTaskError as InvalidTask
            from django_tasks.exceptions import TaskResultDoesNotExist
            from django_tasks.signals import task_enqueued, task_finished, task_started
            from django_tasks.utils import normalize_json
        except ImportError as exc:
            raise ImproperlyConfigured(
                "leek.backends.LeekBackend needs Django's tasks framework: Django 6.0 or later, "
                'or the django-tasks package on Django 5.2 (pip install "leek[tasks]")'
            ) from exc

logger = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

STATUSES = {
    "queued": TaskResultStatus.READY,
    "running": TaskResultStatus.RUNNING,
    "succeeded": TaskResultStatus.SUCCESSFUL,
    "failed": TaskResultStatus.FAILED,
    "cancelled": TaskResultStatus.FAILED,
}
CANCELLED = "leek.exceptions.TaskCancelled"


class TaskCall:
    """What the broker runs for a framework task: the task, by its module path.

    Only the path, the backend alias and takes_context travel in the payload;
    the worker imports the task and calls its function (with a TaskContext
    when the task takes one)."""

    def __init__(
        self, path: str, alias: str, takes_context: bool, func: Callable[..., Any] | None = None
    ) -> None:
        self.path = path
        self.alias = alias
        self.takes_context = takes_context
        if func is not None:
            self.__wrapped_task__ = func  # names the task in the admin

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.alias, self.takes_context))

    def __repr__(self) -> str:
        return f"<TaskCall {self.path}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .runtime import current_task

        task = import_task(self.path, self.alias)
        context = current_task()
        result = _running(
            task,
            context.id if context else None,
            context.attempt if context else 1,
            args,
            kwargs,
            self.alias,
            context.node if context else "",
        )
        task_started.send(LeekBackend, task_result=result)
        try:
            if self.takes_context:
                value = task.call(TaskContext(task_result=result), *args, **kwargs)
            else:
                value = task.call(*args, **kwargs)
            value = normalize_json(value)
        except BaseException as exc:
            kind = type(exc)
            result.errors.append(
                TaskError(
                    exception_class_path=f"{kind.__module__}.{kind.__qualname__}",
                    traceback=_traceback(exc),
                )
            )
            object.__setattr__(result, "status", TaskResultStatus.FAILED)
            object.__setattr__(result, "finished_at", timezone.now())
            task_finished.send(LeekBackend, task_result=result)
            raise
        object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
        object.__setattr__(result, "finished_at", timezone.now())
        object.__setattr__(result, "_return_value", value)
        task_finished.send(LeekBackend, task_result=result)
        return value


def _traceback(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(exc))


def import_task(path: str, alias: str) -> Task[..., Any]:
    """The framework Task at `path` (the module attribute @task made)."""
    target = import_string(path)
    if isinstance(target, Task):
        return target
    raise TypeError(
        f"{path} is a {type(target).__name__}, not a task of Django's tasks "
        "framework: decorate it with @task"
    )


class LeekBackend(BaseTaskBackend):
    """Django's tasks framework on leek: push through the broker, results from the database."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        retries = self.options.get("max_retries")
        timeout = self.options.get("timeout")
        self.max_retries: int | None = None if retries is None else int(retries)
        self.timeout: float | None = None if timeout is None else float(timeout)

    def enqueue(
        self, task: Task[P, R], args: Sequence[Any], kwargs: dict[str, Any]
    ) -> TaskResult[P, R]:
        """Push the task to the broker; its TaskResult is READY, with leek's task id."""
        from .client.api import enqueue

        self.validate_task(task)
        values: list[Any] = normalize_json(list(args))  # type: ignore[assignment]
        named: dict[str, Any] = normalize_json(dict(kwargs))  # type: ignore[assignment]
        run_at = task.run_after
        if run_at is not None and timezone.is_naive(run_at):
            run_at = timezone.make_aware(run_at)
        handle = enqueue(
            TaskCall(task.module_path, self.alias, task.takes_context, task.func),
            values,
            named,
            queue=task.queue_name,
            priority=task.priority,
            run_at=run_at,
            max_retries=self.max_retries,
            timeout=self.timeout,
        )
        result: TaskResult[P, R] = TaskResult(
            task=task,
            id=str(handle.id),
            status=TaskResultStatus.READY,
            enqueued_at=timezone.now(),
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=values,
            kwargs=named,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult[..., Any]:
        """The task's state as the database has it; TaskResultDoesNotExist for an
        unknown id or a task that was not pushed through this framework."""
        return load_result(result_id)


def load_result(result_id: str, running_attempt: int | None = None) -> TaskResult[..., Any]:
    """A TaskResult from the Task row and its SuccessTask and FailedTask rows."""
    from .models import FailedTask, SuccessTask
    from .models import Task as TaskRow
    from .protocol.payload import load_task, load_value

    try:
        key = uuid.UUID(str(result_id))
    except ValueError:
        raise TaskResultDoesNotExist(f"no task result {result_id!r}: not a leek task id") from None
    row = TaskRow.objects.filter(pk=key).first()
    if row is None:
        raise TaskResultDoesNotExist(f"no task result {result_id!r}")
    fn, args, kwargs = load_task(bytes(row.payload))
    if not isinstance(fn, TaskCall):
        raise TaskResultDoesNotExist(
            f"task {result_id} was pushed by leek's own API, not through Django's tasks framework"
        )
    task = import_task(fn.path, fn.alias)
    try:
        task = task.using(
            queue_name=row.queue, priority=row.priority, backend=fn.alias, run_after=row.run_after
        )
    except (InvalidTask, KeyError, ImproperlyConfigured):
        logger.debug("task %s kept its declared options", fn.path)
    failures = list(FailedTask.objects.filter(task_id=key).order_by("attempt", "id"))
    success = SuccessTask.objects.filter(task_id=key).order_by("-id").first()
    errors = [TaskError(exception_class_path=f.exc_type, traceback=f.traceback) for f in failures]
    if row.status == "cancelled":
        errors.append(TaskError(exception_class_path=CANCELLED, traceback=""))
    attempts = int(row.attempts) - (1 if row.status == "running" else 0)
    if running_attempt is not None:
        attempts = running_attempt
    starts = [f.started_at for f in failures if f.started_at]
    starts += [s.started_at for s in (success,) if s] + ([row.started_at] if row.started_at else [])
    finished = row.status in ("succeeded", "failed", "cancelled")
    result: TaskResult[..., Any] = TaskResult(
        task=task,
        id=str(key),
        status=STATUSES[str(row.status)],
        enqueued_at=row.queued_at,
        started_at=min(starts) if starts else None,
        finished_at=row.finished_at if finished else None,
        last_attempted_at=row.started_at,
        args=list(args),
        kwargs=dict(kwargs),
        backend=fn.alias,
        errors=errors,
        worker_ids=[row.broker or "leek"] * max(attempts, 0),
    )
    if row.status == "succeeded" and success is not None:
        object.__setattr__(result, "_return_value", load_value(success.result))
    return result


def _running(
    task: Task[..., Any],
    task_id: uuid.UUID | None,
    attempt: int,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    alias: str,
    node: str,
) -> TaskResult[..., Any]:
    """The TaskResult of the attempt running on this worker (of broker `node`)."""
    now = timezone.now()
    node = node or conf.node_name()
    if task_id is not None:
        try:
            loaded = load_result(str(task_id), running_attempt=attempt)
        except TaskResultDoesNotExist:
            pass
        else:
            object.__setattr__(loaded, "status", TaskResultStatus.RUNNING)
            object.__setattr__(loaded, "started_at", loaded.started_at or now)
            object.__setattr__(loaded, "last_attempted_at", now)
            object.__setattr__(loaded, "finished_at", None)
            object.__setattr__(loaded, "worker_ids", [node] * attempt)
            return loaded
    return TaskResult(
        task=task,
        id=str(task_id or ""),
        status=TaskResultStatus.RUNNING,
        enqueued_at=None,
        started_at=now,
        finished_at=None,
        last_attempted_at=now,
        args=list(args),
        kwargs=dict(kwargs),
        backend=alias,
        errors=[],
        worker_ids=[node] * attempt,
    )
