"""The two tasks every system runs.

`noop()` does nothing but append its start time to a stamp file: one fixed-width
line of 18 bytes, written with a single O_APPEND `write`, which the kernel keeps
whole even with many writers. The harness counts finished tasks by the file's
size and reads start times from it, the same way for every system, without
asking any queue for its state. The file is named by BENCH_STAMP_FILE, which
the harness sets for the client and for every worker process it starts.

`burn(loops)` is CPU-bound work: `loops` turns of a pure-Python loop, holding
the interpreter's lock throughout, then a stamp like noop's, of the time it
finished. The count of turns is fixed by the caller, not the time spent, so
every system does the same work whatever its workers share a core or a lock
with; `loops_for` calibrates it once per run.
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


def _stamp() -> None:
    os.write(_stamp_fd(), b"%017.6f\n" % time.time())


def noop() -> None:
    """The no-op task: record when it started, and return."""
    _stamp()


def spin(loops: int) -> int:
    """`loops` turns of integer arithmetic in the interpreter, with no call that
    could release its lock."""
    x = 0
    for i in range(loops):
        x = (x * 31 + i) & 0xFFFF
    return x


def burn(loops: int) -> None:
    """The CPU-bound task: spin `loops` turns, then record when it finished."""
    spin(loops)
    _stamp()


def loops_for(ms: float, tries: int = 7) -> int:
    """The turns of `spin` that take `ms` milliseconds of one core here: timed on
    the fastest of `tries` runs, the one least slowed by whatever else ran."""
    probe = 200_000
    spin(probe)  # warm up
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        spin(probe)
        best = min(best, time.perf_counter() - start)
    return max(1, round(probe * ms / 1000 / best))
