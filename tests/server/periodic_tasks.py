"""Tasks the periodic and delayed tests' brokers import (as tests.server.periodic_tasks.<name>)."""

from __future__ import annotations

import os
import time


def stamp(path: str, label: str = "") -> float:
    """Append the time this run started (and a label) to a file; return the time."""
    now = time.time()
    with open(path, "a") as handle:
        handle.write(f"{now!r} {label}\n")
        handle.flush()
        os.fsync(handle.fileno())
    return now


def stamps(path: str, label: str | None = None) -> list[float]:
    """The times `stamp` wrote to `path`, with `label` when given, in order."""
    if not os.path.exists(path):
        return []
    found = []
    with open(path) as handle:
        for line in handle:
            moment, _, mark = line.rstrip("\n").partition(" ")
            if moment and (label is None or mark == label):
                found.append(float(moment))
    return found
