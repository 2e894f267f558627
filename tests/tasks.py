"""Tasks the brokers under test import (as tests.tasks.<name>)."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any


def add(a: int, b: int) -> int:
    return a + b


def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}


def fail(message: str = "boom") -> None:
    raise ValueError(message)


def noop() -> None:
    return None


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def spin(seconds: float) -> int:
    """Busy Python code for `seconds` (stoppable by a time limit)."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def append_line(path: str, text: str) -> str:
    """Append `text` to a file: a mark each run leaves, readable by the test."""
    with open(path, "a") as handle:
        handle.write(text + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return text


def fail_noting(path: str, text: str) -> None:
    """Note a digest of `text` in a file, then fail: the argument each attempt got."""
    append_line(path, hashlib.sha256(text.encode()).hexdigest())
    raise RuntimeError("noted, failing")


def flaky(path: str, failures: int) -> int:
    """Fail the first `failures` runs (counted in a file), then succeed."""
    runs = Path(path)
    count = int(runs.read_text() or 0) + 1 if runs.exists() else 1
    runs.write_text(str(count))
    if count <= failures:
        raise RuntimeError(f"flaky run {count}")
    return count


def chatty(text: str) -> str:
    print(text)  # noqa: T201 - the test reads the captured stdout
    print("to stderr", file=sys.stderr)  # noqa: T201
    return text


def progress_steps() -> str:
    import leek

    ctx = leek.current_task()
    leek.set_progress(50, "half way")
    time.sleep(0.3)
    return str(ctx.id if ctx else None)


def progress_then_sleep(percent: float, note: str, seconds: float) -> str:
    """Set progress, then stay running for `seconds`."""
    import leek

    leek.set_progress(percent, note)
    time.sleep(seconds)
    return note


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("this object refuses to be pickled")


def return_unpicklable() -> Unpicklable:
    return Unpicklable()


def retry_later(path: str) -> str:
    """Ask to be run again after 0.3 s once, then succeed."""
    import leek

    runs = Path(path)
    if not runs.exists():
        runs.write_text(str(time.time()))
        raise leek.Retry(countdown=0.3)
    return runs.read_text()


def hook_to_file(task_id: Any, name: str, outcome: Any) -> None:
    """An ON_FAILURE hook: writes what it was given to LEEK_TEST_HOOK_FILE."""
    with open(os.environ["LEEK_TEST_HOOK_FILE"], "a") as handle:
        handle.write(f"{task_id} {name} {outcome.exc_type} {outcome.attempt}\n")


def broken_hook(task_id: Any, name: str, outcome: Any) -> None:
    raise RuntimeError("the hook itself is broken")


def log_mark(mark: str) -> str:
    """Write an Event row: the tasks of the fault test leave one per run."""
    from leek.models import Event

    Event.objects.create(kind="mark", message=mark)
    return mark


def pid() -> int:
    """The process the task runs in."""
    return os.getpid()


def connection_was_open() -> tuple[bool, int]:
    """Whether the database connection was open when the task began (it
    opens it, with a query), and the process it runs in."""
    from django.db import connection

    was_open = connection.connection is not None
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return was_open, os.getpid()


def tasks_running() -> tuple[int, float]:
    """The tasks running in the process it runs in, itself included, and
    the seconds since one started or ended, as the broker's waits for its
    database read them (protocol/spin.py)."""
    from leek.protocol.spin import RUNS

    return RUNS.count, time.monotonic() - RUNS.at if RUNS.at else -1.0


def parent() -> int:
    """The parent of the process the task runs in."""
    return os.getppid()


def comm() -> str:
    """The name of the process the task runs in, as `top` shows it."""
    with open(f"/proc/{os.getpid()}/comm") as name:
        return name.read().strip()


def exit_now(status: int) -> None:
    """End the process at once, as a crashing C extension or os._exit would."""
    os._exit(status)


def segfault() -> None:
    """Die of SIGSEGV, as a broken C extension does."""
    import signal

    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(5)


def nap_through(seconds: float) -> str:
    """Sleep in short naps, swallowing every Exception: a time limit must still stop it."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(0.05)
        except Exception:  # noqa: S112 - the task under test swallows what it can
            continue
    return "slept through"


_HOARD: list[bytes] = []


def hoard(megabytes: int) -> int:
    """Keep `megabytes` MiB alive in the process for good; its pid."""
    _HOARD.append(b"x" * megabytes * 1024 * 1024)
    return os.getpid()


def shell_echo(text: str) -> int:
    """Print through a subprocess and through C's stdio, not Python's sys.stdout."""
    import ctypes
    import subprocess

    subprocess.run(["echo", text], check=True)  # noqa: S603, S607
    libc = ctypes.CDLL(None)
    libc.printf(b"from C\n")
    libc.fflush(None)
    return os.getpid()


def sleep_once(path: str, seconds: float) -> str:
    """Sleep on the first run only (marked by a file holding its pid); later runs
    return at once."""
    if os.path.exists(path):
        return "ran again"
    Path(f"{path}.new").write_text(str(os.getpid()))
    os.replace(f"{path}.new", path)  # whole once there: a test waiting for it reads the pid
    time.sleep(seconds)
    return "first run"


async def async_add(a: int, b: int) -> int:
    """An async def task: awaits, then returns the sum."""
    import asyncio

    await asyncio.sleep(0.01)
    return a + b


async def async_nap(seconds: float) -> str:
    """An async def task that awaits for `seconds` (a time limit must cancel it)."""
    import asyncio

    await asyncio.sleep(seconds)
    return "woke up"


async def async_whoami() -> list[Any]:
    """The task's own id and attempt as leek.current_task() gives them inside a coroutine."""
    import leek

    context = leek.current_task()
    return [str(context.id) if context else None, context.attempt if context else None]


def mark_then_exit(path: str, status: int) -> None:
    """Leave a line in `path`, then end the process at once (os._exit): a task
    that kills whatever runs it, every time."""
    append_line(path, str(os.getpid()))
    os._exit(status)


def wait_for_file(path: str, timeout: float = 60.0) -> str:
    """Block until the test creates `path` (a gate it controls), or `timeout` passes."""
    end = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < end:
        time.sleep(0.005)
    return path


def until_cancelled(path: str) -> str:
    """Mark its start in `path`, loop until leek.current_task().cancelled, mark the stop."""
    import leek

    append_line(path, "started")
    context = leek.current_task()
    while context is not None and not context.cancelled:
        time.sleep(0.01)
    append_line(path, "stopped")
    return "stopped"


def ignore_cancel(path: str, outcome: str) -> str:
    """Mark its start in `path`, wait until the test creates `path` + ".go" (the
    cancel flag unread), then return, or raise when `outcome` is "raise"."""
    append_line(path, "started")
    wait_for_file(path + ".go")
    if outcome == "raise":
        raise RuntimeError("ended by raising after its cancel")
    return outcome


def note_run(path: str, seconds: float = 0.0) -> str:
    """Sleep `seconds`, then append "<task id> <broker port>" to `path`: which
    broker ran which task, one line per run."""
    import leek

    time.sleep(seconds)
    context = leek.current_task()
    port = os.environ.get("LEEK_PORT", "")
    append_line(path, f"{context.id if context else ''} {port}")
    return port
