"""Receivers that append each task signal to the file SIGNAL_LOG names, a JSON line each.

Brokers started with tests.backends.settings connect them at start (apps.py),
their worker processes too. A test that sets SIGNAL_LOG for its own process
as well gets the signals it sends itself (task_enqueued, and all of them on
the ImmediateBackend) in the same file, in the order they were sent."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from django.dispatch import Signal, receiver

from leek.signals import task_retried

from .framework import task_enqueued, task_finished, task_started
from .results import describe

NAMES: dict[Signal, str] = {
    task_enqueued: "task_enqueued",
    task_started: "task_started",
    task_finished: "task_finished",
}


def _write(entry: dict[str, Any]) -> None:
    path = os.environ.get("SIGNAL_LOG")
    if path:
        with open(path, "a") as log:
            log.write(json.dumps(entry) + "\n")


@receiver(task_enqueued)
@receiver(task_started)
@receiver(task_finished)
def framework_signal(sender: Any, task_result: Any, signal: Signal, **kwargs: Any) -> None:
    _write(
        {
            "signal": NAMES[signal],
            "id": task_result.id,
            "backend": task_result.backend,
            **describe(task_result),
        }
    )


@receiver(task_retried)
def retried(sender: Any, task_id: Any, attempt: int, exc_type: str, **kwargs: Any) -> None:
    _write({"signal": "task_retried", "id": str(task_id), "attempt": attempt, "exc_type": exc_type})


def read(path: Path, task_id: str | None = None) -> list[dict[str, Any]]:
    """The signals logged in `path` (of one task only, with `task_id`), in order."""
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [e for e in entries if task_id is None or e["id"] == task_id]
