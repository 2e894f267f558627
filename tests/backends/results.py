"""A TaskResult as plain data, to compare what two backends report.

Ids, worker ids and times differ from one run to the next, so they are
described by their shape: a time by whether it is set (and the times by
whether they come in order), the worker ids by their number, an error by its
class and the last line of its traceback. Everything else is kept as it is."""

from __future__ import annotations

from typing import Any


def describe(result: Any) -> dict[str, Any]:
    """Every field of `result` (a framework TaskResult) that two backends can share."""
    task = result.task
    times = [result.enqueued_at, result.started_at, result.last_attempted_at, result.finished_at]
    present = [t for t in times if t is not None]
    described = {
        "task": {
            "path": task.module_path,
            "priority": task.priority,
            "queue_name": task.queue_name,
            "run_after": task.run_after is not None,
            "takes_context": task.takes_context,
        },
        "status": str(result.status),
        "enqueued_at": result.enqueued_at is not None,
        "started_at": result.started_at is not None,
        "last_attempted_at": result.last_attempted_at is not None,
        "finished_at": result.finished_at is not None,
        "in_order": present == sorted(present),
        "args": result.args,
        "kwargs": result.kwargs,
        "errors": [[e.exception_class_path, last_line(e.traceback)] for e in result.errors],
        "attempts": result.attempts,
        "worker_ids": len(result.worker_ids),
        "is_finished": result.is_finished,
    }
    if str(result.status) == "SUCCESSFUL":
        described["return_value"] = result.return_value
    return described


def last_line(traceback: str) -> str:
    """The last line of a traceback: the exception and its message."""
    lines = [line for line in traceback.splitlines() if line.strip()]
    return lines[-1] if lines else ""
