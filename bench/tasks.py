"""The one task every system runs.

`noop()` does nothing but append its start time to a stamp file: one fixed-width
line of 18 bytes, written with a single O_APPEND `write`, which the kernel keeps
whole even with many writers. The harness counts finished tasks by the file's
size and reads start times from it, the same way for every system, without
asking any queue for its state. The file is named by BENCH_STAMP_FILE, which
the harness sets for the client and for every worker process it starts.
"""

from __future__ import annotations

import os
import time

STAMP_LEN = 18  # "%017.6f\n": seconds since the epoch, microseconds, newline

_fd: int | None = None
_pid: int | None = None


def _stamp_fd() -> int:
    global _fd, _pid
    pid = os.getpid()
    if _fd is None or _pid != pid:  # a forked worker opens its own descriptor
        _fd = os.open(os.environ["BENCH_STAMP_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _pid = pid
    return _fd


def noop() -> None:
    """The no-op task: record when it started, and return."""
    now = time.time()
    os.write(_stamp_fd(), b"%017.6f\n" % now)
