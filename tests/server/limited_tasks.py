"""Tasks the rate limit tests push (as tests.server.limited_tasks.<name>)."""

from __future__ import annotations

import os
import time

from leek.client import task


def stamp(path: str) -> float:
    """Append the time this run started to `path`, one line per run."""
    now = time.time()
    with open(path, "a") as handle:
        handle.write(f"{now!r}\n")
        handle.flush()
        os.fsync(handle.fileno())
    return now


@task(rate_limit="10/s")
def ten_a_second(path: str) -> float:
    return stamp(path)
