"""A task's TaskResult of Django's tasks framework, read back from leek's rows.

`load_result` builds it from the Task row and its SuccessTask and FailedTask
rows, so ``get_result()`` works from any process; `running_result` is the one a
worker hands to the task and to the framework's signals while an attempt runs:

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
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from . import conf
from .framework import (
    InvalidTask,
    Task,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
)

logger = logging.getLogger(__name__)

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


def load_result(result_id: str) -> TaskResult[..., Any]:
    """A TaskResult from the Task row and its SuccessTask and FailedTask rows."""
    from .backends import TaskCall, import_task
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


def running_result(
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
