"""leek's threads, named for the operating system too.

Python names a thread for itself only: `top -H`, `ps -L`, perf and
/proc/PID/task/TID/comm show every thread of a broker as ``python``. A
`Named` thread gives the kernel its name as it starts (Linux's prctl
PR_SET_NAME, the first 15 bytes), so a broker's event loop, its writers and
each worker's thread can be told apart from outside, and the CPU each one
spends read from /proc (``bench.profile --by-thread``). Where there is no
prctl, nothing is named and nothing fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import threading
from typing import Any

#: Linux prctl option: the name of the calling thread, the process's for its
#: main thread (`top`, `ps -o comm`).
PR_SET_NAME = 15
#: The bytes of a name the kernel keeps.
NAME_BYTES = 15


class Named(threading.Thread):
    """A thread that gives the kernel its name before it runs its target."""

    def run(self) -> None:
        name_thread(self.name)
        super().run()


def name_thread(name: str) -> None:
    """Give the calling thread `name` in the kernel, cut to NAME_BYTES bytes
    of UTF-8 (never inside a character); on its main thread, that names the
    process."""
    cut = name.encode()[:NAME_BYTES].decode(errors="ignore").encode()
    prctl(PR_SET_NAME, ctypes.c_char_p(cut))


def name_current() -> None:
    """Give the calling thread its Python name in the kernel too: for threads
    leek does not make itself (an executor's, socketserver's)."""
    name_thread(threading.current_thread().name)


def prctl(option: int, value: Any) -> None:
    """Linux's prctl(option, value); nothing where there is none."""
    with contextlib.suppress(Exception):
        _libc().prctl(option, value)


@functools.cache
def _libc() -> Any:
    """The C library, opened once: each thread leek starts names itself."""
    return ctypes.CDLL(None, use_errno=True)
