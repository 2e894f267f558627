"""A web process's pushes, counted in prometheus_client's default registry.

When prometheus_client is installed, every push a process makes counts its
tasks in ``leek_client_pushes_total{outcome}``, in the process's default
registry: whatever already serves that registry (django-prometheus, or
prometheus_client's own WSGI app or HTTP server, with its multiprocess mode
under gunicorn) shows it next to the site's own metrics. Without the package
nothing is counted and nothing is imported. The outcomes:

    =========  ==========================================================
    sent       a broker committed the tasks
    spooled    no broker committed them: the process wrote them to the
               database itself (FALLBACK "database"), for a broker to adopt
    outbox     written in the caller's transaction (ATOMIC_PUSH "outbox")
    failed     neither a broker nor the database took them: the push
               raised (or, after a transaction's commit, the tasks were lost)
    =========  ==========================================================
"""

from __future__ import annotations

import threading
from typing import Any

#: The counter's name, as prometheus_client takes it (it adds ``_total``).
NAME = "leek_client_pushes"
OUTCOMES = ("sent", "spooled", "outbox", "failed")

#: The counter's child of each outcome (looked up once: `labels` takes a lock
#: and builds a key); empty once prometheus_client was found missing.
_outcomes: dict[str, Any] | None = None
_lock = threading.Lock()


def pushed(outcome: str, verb: str, data: Any) -> None:
    """Count the tasks of a push (`verb`, `data` as sent) under `outcome`."""
    outcomes = _outcomes if _outcomes is not None else _register()
    if outcomes:
        outcomes[outcome].inc(size(verb, data))


def size(verb: str, data: Any) -> int:
    """How many tasks a push holds."""
    if verb == "enqueue_batch":
        return len(data["tasks"])
    if verb == "enqueue_many":
        return len(data)
    return 1


def _register() -> dict[str, Any]:
    """The counter's children, registered in the default registry at the first push."""
    global _outcomes
    with _lock:
        if _outcomes is None:
            try:
                from prometheus_client import Counter
            except ImportError:
                _outcomes = {}
            else:
                counter = Counter(NAME, "Tasks pushed by this process, by outcome.", ["outcome"])
                _outcomes = {outcome: counter.labels(outcome) for outcome in OUTCOMES}
        return _outcomes
