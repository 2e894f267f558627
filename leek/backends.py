"""A backend for Django's tasks framework that runs the tasks on leek.

Configure it in settings::

    TASKS = {"default": {"BACKEND": "leek.backends.LeekBackend"}}

and the framework's ``@task`` functions (``django.tasks`` on Django 6, the
``django-tasks`` package on Django 5.2: ``pip install "leek[tasks]"``) are
pushed to the broker by ``.enqueue()`` and run on its workers, with the
task's ``queue_name``, ``priority`` and ``run_after``. The backend's task_class
is `LeekTask`, which takes leek's own options: ``@task(max_retries=2,
timeout=30)``; the backend's ``OPTIONS`` give the defaults of its tasks.

Results come from the database, so ``get_result()`` works from any process;
leek/task_results.py says how a task's rows become its TaskResult.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from inspect import iscoroutinefunction
from typing import Any, ParamSpec, TypeVar

from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from . import fields as checked
from .exceptions import TaskTimeout
from .framework import (
    BaseTaskBackend,
    InvalidTask,
    Task,
    TaskContext,
    TaskError,
    TaskResult,
    TaskResultStatus,
    normalize_json,
    task_enqueued,
    task_finished,
    task_started,
)
from .task_results import load_result as load_result
from .task_results import running_result

P = ParamSpec("P")
R = TypeVar("R")


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
        result = running_result(
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
