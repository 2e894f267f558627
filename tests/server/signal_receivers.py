"""Receivers of every leek signal, connected in brokers started with
tests.server.observed_settings (signals_app.py).

Each appends one JSON line per signal it gets to the file SIGNALS_FILE names:
the signal, the process that sent it, its sender and its arguments. A signal
named in SIGNALS_RAISE (comma-separated) also reaches a receiver that raises,
and one named in SIGNALS_HANG a receiver that never returns."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from django.dispatch import Signal

from leek import signals


def _log(sender: Any, signal: Signal, **arguments: Any) -> None:
    path = os.environ.get("SIGNALS_FILE")
    if not path:
        return
    entry = {
        "signal": signals.NAMES[signal],
        "pid": os.getpid(),
        "sender": f"{sender.__module__}.{sender.__qualname__}",
        **{key: _plain(value) for key, value in arguments.items()},
    }
    with open(path, "a") as log:
        log.write(json.dumps(entry) + "\n")


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | type(None) | list) else str(value)


def _broken(sender: Any, signal: Signal, **arguments: Any) -> None:
    if signals.NAMES[signal] in os.environ.get("SIGNALS_RAISE", "").split(","):
        raise RuntimeError(f"a receiver of {signals.NAMES[signal]} is broken")


def _hung(sender: Any, signal: Signal, **arguments: Any) -> None:
    if signals.NAMES[signal] in os.environ.get("SIGNALS_HANG", "").split(","):
        while True:  # a receiver waiting on a peer that never answers
            time.sleep(60)


def connect() -> None:
    """Connect the receivers to every leek signal."""
    for signal in signals.NAMES:
        signal.connect(_broken, dispatch_uid=f"broken-{signals.NAMES[signal]}")
        signal.connect(_log, dispatch_uid=f"log-{signals.NAMES[signal]}")
        signal.connect(_hung, dispatch_uid=f"hung-{signals.NAMES[signal]}")


def read(path: Path) -> list[dict[str, Any]]:
    """The signals logged in `path`, in the order they were sent."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]
