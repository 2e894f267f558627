"""What the group commit writes: typed ops, and the Waiter of one someone waits for.

An op is one of four kinds, each a dataclass: `Insert` (a push's tasks),
`Mark` (a task shown running), `Record` (an attempt's outcome) and `Call` (a
function run inside the batch's transaction). Each carries the `done`
callback of whoever waits for it, and how many batches it has been tried in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from .rows import Dialect, NewTask, Outcome

#: Called once an op is committed, with its result, or failed, with the error.
Done = Callable[[Any, BaseException | None], None]


@dataclass(slots=True)
class Insert:
    """New tasks; the result is the Ready of those not inserted before."""

    tasks: Sequence[NewTask]
    done: Done | None = None
    tries: int = 0
    kind: ClassVar[str] = "insert"


@dataclass(slots=True)
class Mark:
    """A task shown running; nobody waits for it."""

    task_id: Any
    attempt: int
    started: float
    done: Done | None = None
    tries: int = 0
    kind: ClassVar[str] = "mark"


@dataclass(slots=True)
class Record:
    """An attempt's outcome; retried while the database is away."""

    outcome: Outcome
    done: Done | None = None
    tries: int = 0
    kind: ClassVar[str] = "outcome"


@dataclass(slots=True)
class Call:
    """fn(cursor, dialect) run inside the batch's transaction; the result is its value."""

    fn: Callable[[Any, Dialect], Any]
    done: Done | None = None
    tries: int = 0
    kind: ClassVar[str] = "call"


Op = Insert | Mark | Record | Call


class Waiter:
    """Completes when the writer has committed an operation, or failed it."""

    __slots__ = ("_lock", "value", "error")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()  # released by resolve()
        self.value: Any = None
        self.error: BaseException | None = None

    def resolve(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error
        self._lock.release()

    def wait(self, timeout: float | None = None) -> Any:
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError(f"database write not committed within {timeout} s")
        self._lock.release()  # a second wait() returns at once
        if self.error is not None:
            raise self.error
        return self.value
