"""Tasks the brokers under test import (as tests.tasks.<name>)."""

from __future__ import annotations

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
