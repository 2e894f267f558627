"""What a running task can see: its own id, its progress, whether it is asked
to stop, its captured output."""

from __future__ import annotations

import io
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TextIO


class ProgressSink(Protocol):
    def progress(self, task_id: uuid.UUID, percent: float, note: str) -> None: ...


class Flag:
    """Set once by one thread, read by another: a running task's cancel
    (Running.stop). A threading.Event would do, at the cost of a lock and a
    condition made for every task."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


@dataclass(frozen=True, slots=True)
class TaskContext:
    """The task a worker thread is running."""

    id: uuid.UUID
    name: str
    attempt: int
    sink: ProgressSink | None = None
    node: str = ""  # the broker running it
    retry_rule: Callable[[BaseException], bool] | None = None  # the broker's: see will_retry
    stop: Flag | None = None  # set by cancel(running=True): see cancelled

    @property
    def cancelled(self) -> bool:
        """Whether the task was cancelled while it ran (``cancel(running=True)``
        on the threads pool): a long task reads it in its loop and returns. In
        a worker process it stays False, as the cancel ends the process."""
        return self.stop is not None and self.stop.is_set()

    def will_retry(self, exc: BaseException) -> bool:
        """Whether the broker runs the task again if this attempt ends by
        raising `exc` (its error is retried and a retry is left); False outside
        a broker."""
        return self.retry_rule is not None and self.retry_rule(exc)


_local = threading.local()


def current_task() -> TaskContext | None:
    """The task running on this thread, or None outside a task."""
    return getattr(_local, "context", None)


def set_progress(percent: float, note: str = "") -> bool:
    """Record the running task's progress (0-100) and a note; False outside a task."""
    context = current_task()
    if context is None or context.sink is None:
        return False
    if not 0 <= percent <= 100:
        raise ValueError(f"progress must be between 0 and 100, got {percent}")
    context.sink.progress(context.id, float(percent), note[:255])
    return True


class CapturedOutput:
    """A task's stdout and stderr, each kept up to `limit` characters."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.out = io.StringIO()
        self.err = io.StringIO()

    def write(self, stream: io.StringIO, text: str) -> int:
        room = self.limit - stream.tell()
        if room > 0:
            stream.write(text[:room])
        return len(text)

    def values(self) -> tuple[str, str]:
        return self.out.getvalue(), self.err.getvalue()


class _ThreadStream(io.TextIOBase):
    """sys.stdout or sys.stderr: the running task's capture on a worker thread,
    the real stream everywhere else."""

    def __init__(self, real: TextIO, which: str) -> None:
        self.real = real
        self.which = which

    def write(self, text: str) -> int:
        output: CapturedOutput | None = getattr(_local, "output", None)
        if output is None:
            return self.real.write(text)
        return output.write(output.out if self.which == "out" else output.err, text)

    def flush(self) -> None:
        if getattr(_local, "output", None) is None:
            self.real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def install_capture() -> None:
    """Route print() of tasks on worker threads to their own capture (once per process)."""
    if not isinstance(sys.stdout, _ThreadStream):
        sys.stdout = _ThreadStream(sys.stdout, "out")
    if not isinstance(sys.stderr, _ThreadStream):
        sys.stderr = _ThreadStream(sys.stderr, "err")


@contextmanager
def bind_context(context: TaskContext, output: CapturedOutput | None = None) -> Iterator[None]:
    """Make `context` the current task of this thread (and capture its output)."""
    _local.context = context
    _local.output = output
    try:
        yield
    finally:
        _local.context = None
        _local.output = None
