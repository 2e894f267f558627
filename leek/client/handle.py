"""A pushed task, followed from the database: its status, progress and result."""

from __future__ import annotations

import time
import uuid
from typing import Any

from ..exceptions import TaskCancelled, TaskExpired, TaskFailed, TaskNotReady
from ..protocol.payload import load_value


class TaskHandle:
    """A pushed task: its id at once, its status and result from the database."""

    def __init__(self, task_id: uuid.UUID | str) -> None:
        self.id = task_id if isinstance(task_id, uuid.UUID) else uuid.UUID(str(task_id))

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def _task(self) -> Any:
        from ..models import Task

        return Task.objects.filter(pk=self.id).only("status", "progress", "progress_note").first()

    def status(self) -> str | None:
        """queued, running, succeeded, failed, cancelled or expired; None while the push
        waits for its transaction to commit (with ATOMIC_PUSH "outbox", the
        transaction sees its own push queued)."""
        task = self._task()
        return None if task is None else str(task.status)

    def ready(self) -> bool:
        """True once the task has finished, whichever way."""
        return self.status() in ("succeeded", "failed", "cancelled", "expired")

    def progress(self) -> tuple[float | None, str]:
        """The percentage and note the task last set with set_progress()."""
        task = self._task()
        return (None, "") if task is None else (task.progress, task.progress_note)

    def result(self, timeout: float | None = None) -> Any:
        """The task's return value, waiting up to `timeout` seconds (None: forever).

        Raises TaskFailed (with the remote type, message and traceback) when it
        failed for good, TaskCancelled when cancelled, TaskExpired when it
        expired before it started, TaskNotReady on timeout.
        """
        from ..models import FailedTask, SuccessTask

        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.001
        while True:
            status = self.status()
            if status == "succeeded":
                success = SuccessTask.objects.filter(task_id=self.id).order_by("-id").first()
                return load_value(success.result if success else None)
            if status == "failed":
                failure = FailedTask.objects.filter(task_id=self.id).order_by("-id").first()
                if failure is None:
                    raise TaskFailed("failed, and no failure was recorded")
                raise TaskFailed(
                    failure.exc_message, remote_type=failure.exc_type, traceback=failure.traceback
                )
            if status == "cancelled":
                raise TaskCancelled(f"task {self.id} was cancelled")
            if status == "expired":
                raise TaskExpired(f"task {self.id} expired before it started")
            if deadline is not None and time.monotonic() >= deadline:
                raise TaskNotReady(
                    f"task {self.id} is {status or 'not pushed yet'} after {timeout} s"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def cancel(self, running: bool = False) -> bool:
        """Cancel the task (see :func:`cancel`); True when it never runs, or,
        with `running`, was stopped where it ran."""
        from .api import cancel

        return cancel(self.id, running=running)
