"""leek: a durable background-task broker for Django."""

from __future__ import annotations

from typing import Any

from . import checks  # noqa: F401 - registers the system checks, installed app or not

__version__ = "0.1.0"

_EXPORTS = {
    "TaskHandle": "leek.client",
    "TaskFunction": "leek.client",
    "cancel": "leek.client",
    "enqueue": "leek.client",
    "enqueue_many": "leek.client",
    "handled": "leek.client",
    "ping": "leek.client",
    "push_task_to_queue": "leek.client",
    "stats": "leek.client",
    "stop": "leek.client",
    "task": "leek.client",
    "waiting": "leek.client",
    "chain": "leek.client",
    "chord": "leek.client",
    "group": "leek.client",
    "signature": "leek.client",
    "Signature": "leek.client",
    "GroupHandle": "leek.client",
    "current_task": "leek.runtime",
    "set_progress": "leek.runtime",
    "log_event": "leek.events",
    "LeekError": "leek.exceptions",
    "BrokerUnavailable": "leek.exceptions",
    "AuthenticationFailed": "leek.exceptions",
    "CommitFailed": "leek.exceptions",
    "TaskFailed": "leek.exceptions",
    "TaskCancelled": "leek.exceptions",
    "TaskExpired": "leek.exceptions",
    "TaskNotReady": "leek.exceptions",
    "PayloadError": "leek.exceptions",
    "Retry": "leek.exceptions",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Import the public names lazily, so `leek` loads before Django's apps."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'leek' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # found at once from now on: a push is a hot path
    return value
