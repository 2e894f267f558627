"""A backend for Django's tasks framework that runs the tasks on leek.

Configure it in settings::

    TASKS = {"default": {"BACKEND": "leek.backends.LeekBackend"}}

and the framework's ``@task`` functions (``django.tasks`` on Django 6, the
``django-tasks`` package on Django 5.2: ``pip install "leek[tasks]"``) are
pushed to the broker by ``.enqueue()`` and run on its workers, with the
task's ``queue_name``, ``priority`` and ``run_after``. The backend's task_class
is `LeekTask`, which takes leek's own options: ``@task(max_retries=2,
timeout=30)``; the backend's ``OPTIONS`` give the defaults of its tasks.

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
attempts           ``worker_ids``: for each attempt, the one running
                   included, the node name of the broker that ran it;
                   ``attempts`` is their number
=================  ==========================================================

Inside transaction.atomic() the push waits for the commit, as every leek push
does (ON_COMMIT): the TaskResult is READY with ``enqueued_at`` None, its id
unknown to ``get_result()``, and ``task_enqueued`` is sent once the commit has
sent the push, when ``enqueued_at`` is set; a block that rolls back pushes
nothing and sends nothing. The worker sends ``task_started`` for each attempt
and ``task_finished`` once, at the task's final status; an attempt that fails
and will be retried sends leek's ``task_retried`` (leek.signals) instead.

Arguments and return values must be JSON-serialisable, as the framework asks;
they are normalised as its other backends do (a tuple becomes a list). A task
that ``takes_context`` gets a ``TaskContext`` whose ``attempt`` counts from 1.
An ``async def`` task is awaited in the worker's event loop, as leek's own are
(server/attempt.py), so its time limit cancels it where it awaits.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from inspect import iscoroutinefunction
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from . import conf
from . import fields as checked
from .exceptions import TaskTimeout

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
    "expired": TaskResultStatus.FAILED,
}
CANCELLED = "leek.exceptions.TaskCancelled"
EXPIRED = "leek.exceptions.TaskExpired"
#: The worker id of an attempt whose broker is not known (a row written before
#: outcomes named their broker).
UNKNOWN_WORKER = "leek"


def _check_max_retries(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"max_retries must be a whole number, got {value!r}")
    checked.max_retries(value)


def _check_timeout(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"timeout must be a number of seconds, got {value!r}")
    checked.timeout(value)


#: leek's options of a task, each with its check, which raises ValueError
#: saying what the value must be: what ``@task(...)`` takes beyond the
#: framework's own keywords (the backend's OPTIONS give their defaults).
TASK_OPTIONS: dict[str, Callable[[Any], None]] = {
    "max_retries": _check_max_retries,
    "timeout": _check_timeout,
}


@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class LeekTask(Task):  # type: ignore[type-arg]
    """A task of Django's tasks framework, with leek's options: LeekBackend's task_class.

    ``@task(max_retries=2, timeout=30)`` sets them for one task (Django 6.1
    and the django-tasks backport pass the decorator's extra keywords to the
    backend's task_class). None, the default, leaves them to the backend's
    OPTIONS, then to leek's MAX_RETRIES and TIMEOUT. A keyword leek does not
    know is kept in `unknown`, and LeekBackend.validate_task refuses the task
    with InvalidTask naming it."""

    max_retries: int | None = None
    timeout: float | None = None
    unknown: tuple[str, ...] = field(default=(), repr=False)

    def __init__(
        self,
        *,
        max_retries: int | None = None,
        timeout: float | None = None,
        unknown: tuple[str, ...] = (),
        **given: Any,
    ) -> None:
        own = {f.name for f in fields(Task)}
        object.__setattr__(self, "max_retries", max_retries)
        object.__setattr__(self, "timeout", timeout)
        object.__setattr__(self, "unknown", (*unknown, *sorted(set(given) - own)))
        Task.__init__(self, **{k: v for k, v in given.items() if k in own})  # validates


class TaskCall:
    """What the broker runs for a framework task: the task, by its module path.

    Only the path, the backend alias, takes_context and the run_after it was
    pushed with (the row's run_after becomes a retry's time) travel in the
    payload; the worker imports the task and calls its function (with a
    TaskContext when the task takes one), sending the framework's
    task_started, and task_finished when the attempt ends the task."""

    def __init__(
        self,
        path: str,
        alias: str,
        takes_context: bool,
        func: Callable[..., Any] | None = None,
        run_after: datetime | None = None,
    ) -> None:
        self.path = path
        self.alias = alias
        self.takes_context = takes_context
        self.run_after = run_after
        if func is not None:
            self.__wrapped_task__ = func  # names the task in the admin

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.alias, self.takes_context, None, self.run_after))

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
        given = (TaskContext(task_result=result), *args) if self.takes_context else args
        if iscoroutinefunction(task.func):
            # The worker awaits it in its own event loop, within its time limit.
            return self._awaited(task.func(*given, **kwargs), result, context)
        try:
            value = normalize_json(task.call(*given, **kwargs))
        except BaseException as exc:
            _failed(result, context, exc)
            raise
        return _succeeded(result, value)

    async def _awaited(self, coro: Any, result: TaskResult[..., Any], context: Any) -> Any:
        try:
            value = normalize_json(await coro)
        except asyncio.CancelledError:  # its time limit: leek raises TaskTimeout for it
            _failed(result, context, TaskTimeout())
            raise
        except BaseException as exc:
            _failed(result, context, exc)
            raise
        return _succeeded(result, value)


def _failed(result: TaskResult[..., Any], context: Any, exc: BaseException) -> None:
    """Record the attempt's error on `result`, and finish it unless leek retries it."""
    if context is None or not context.will_retry(exc):
        kind = type(exc)
        result.errors.append(
            TaskError(
                exception_class_path=f"{kind.__module__}.{kind.__qualname__}",
                traceback=_traceback(exc),
            )
        )
        _finish(result, TaskResultStatus.FAILED)


def _succeeded(result: TaskResult[..., Any], value: Any) -> Any:
    object.__setattr__(result, "_return_value", value)
    _finish(result, TaskResultStatus.SUCCESSFUL)
    return value


def _finish(result: TaskResult[..., Any], status: TaskResultStatus) -> None:
    """Give the running `result` its final status and send task_finished."""
    object.__setattr__(result, "status", status)
    object.__setattr__(result, "finished_at", timezone.now())
    task_finished.send(LeekBackend, task_result=result)


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

    task_class = LeekTask
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

    def validate_task(self, task: Task[..., Any]) -> None:
        """The framework's checks, then leek's options (TASK_OPTIONS): InvalidTask
        names an option leek does not know, or says what a bad value must be."""
        super().validate_task(task)
        unknown = getattr(task, "unknown", ())
        if unknown:
            raise InvalidTask(
                f"{task.module_path}: unknown option {', '.join(map(repr, unknown))} "
                f"for a leek task; leek takes {', '.join(TASK_OPTIONS)}"
            )
        for name, check in TASK_OPTIONS.items():
            value = getattr(task, name, None)
            if value is not None:
                try:
                    check(value)
                except (TypeError, ValueError) as exc:
                    raise InvalidTask(f"{task.module_path}: {exc}") from exc

    def enqueue(
        self, task: Task[P, R], args: Sequence[Any], kwargs: dict[str, Any]
    ) -> TaskResult[P, R]:
        """Push the task to the broker; its TaskResult is READY, with leek's task id.

        Inside transaction.atomic() (with ON_COMMIT) the push is sent by the
        commit: until then `enqueued_at` is None and task_enqueued unsent."""
        from .client.api import enqueue, waits_for_commit

        self.validate_task(task)
        values: list[Any] = normalize_json(list(args))  # type: ignore[assignment]
        named: dict[str, Any] = normalize_json(dict(kwargs))  # type: ignore[assignment]
        run_at = task.run_after
        if run_at is not None and timezone.is_naive(run_at):
            run_at = timezone.make_aware(run_at)
        retries = getattr(task, "max_retries", None)
        timeout = getattr(task, "timeout", None)
        later = waits_for_commit()
        handle = enqueue(
            TaskCall(task.module_path, self.alias, task.takes_context, task.func, run_at),
            values,
            named,
            queue=task.queue_name,
            priority=task.priority,
            run_at=run_at,
            max_retries=self.max_retries if retries is None else retries,
            timeout=self.timeout if timeout is None else timeout,
        )
        result: TaskResult[P, R] = TaskResult(
            task=task,
            id=str(handle.id),
            status=TaskResultStatus.READY,
            enqueued_at=None,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=values,
            kwargs=named,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )

        def enqueued() -> None:
            object.__setattr__(result, "enqueued_at", timezone.now())
            task_enqueued.send(type(self), task_result=result)

        if later:
            # Registered after the push's own callback, so it runs once the push is sent.
            transaction.on_commit(enqueued, robust=False)
        else:
            enqueued()
        return result

    def get_result(self, result_id: str) -> TaskResult[..., Any]:
        """The task's state as the database has it; TaskResultDoesNotExist for an
        unknown id (a push still waiting for its transaction's commit included)
        or a task that was not pushed through this framework; AuthenticationFailed
        for a payload or return value whose signature fails (never unpickled)."""
        return load_result(result_id)


def load_result(result_id: str) -> TaskResult[..., Any]:
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
    fn, args, kwargs = load_task(bytes(row.payload), key)
    if not isinstance(fn, TaskCall):
        raise TaskResultDoesNotExist(
            f"task {result_id} was pushed by leek's own API, not through Django's tasks framework"
        )
    task = import_task(fn.path, fn.alias)
    try:
        task = task.using(
            queue_name=row.queue, priority=row.priority, backend=fn.alias, run_after=fn.run_after
        )
    except (InvalidTask, KeyError, ImproperlyConfigured):
        logger.debug("task %s kept its declared options", fn.path)
    failures = list(FailedTask.objects.filter(task_id=key).order_by("attempt", "id"))
    success = SuccessTask.objects.filter(task_id=key).order_by("-id").first()
    errors = [TaskError(exception_class_path=f.exc_type, traceback=f.traceback) for f in failures]
    if row.status == "cancelled":
        errors.append(TaskError(exception_class_path=CANCELLED, traceback=""))
    elif row.status == "expired":
        errors.append(TaskError(exception_class_path=EXPIRED, traceback=""))
    # The broker of each attempt: its outcome row's, the later row of a number
    # run twice (after retry-failed); the task's owner for the one running.
    brokers = {f.attempt: f.broker for f in failures}
    if success is not None:
        brokers[success.attempt] = success.broker
    owner = row.broker or UNKNOWN_WORKER
    starts = [f.started_at for f in failures if f.started_at]
    starts += [s.started_at for s in (success,) if s] + ([row.started_at] if row.started_at else [])
    finished = row.status in ("succeeded", "failed", "cancelled", "expired")
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
        worker_ids=[brokers.get(n) or owner for n in range(1, int(row.attempts) + 1)],
    )
    if row.status == "succeeded" and success is not None:
        object.__setattr__(result, "_return_value", load_value(success.result, key))
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
    """The TaskResult of attempt number `attempt`, running on this worker of broker `node`."""
    now = timezone.now()
    node = node or conf.node_name()
    if task_id is not None:
        try:
            loaded = load_result(str(task_id))
        except TaskResultDoesNotExist:
            pass
        else:
            # The attempts before this one as the database has them (their
            # outcomes may still wait for the broker's next batch).
            before = loaded.worker_ids[: attempt - 1]
            before += [node] * (attempt - 1 - len(before))
            object.__setattr__(loaded, "status", TaskResultStatus.RUNNING)
            object.__setattr__(loaded, "started_at", loaded.started_at or now)
            object.__setattr__(loaded, "last_attempted_at", now)
            object.__setattr__(loaded, "finished_at", None)
            object.__setattr__(loaded, "worker_ids", [*before, node])
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
