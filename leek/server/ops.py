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
    epoch: int = 0  # of the claim the attempt started under (Store.epoch)
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
    #: Called once the outcome is committed; unlike `done` it makes no waiter
    #: of the op, which stays retried while the database is away.
    committed: Callable[[], None] | None = None
    #: Committed on its own (in autocommit) by a batch that then failed: a
    #: retry of the batch leaves it out.
    written: bool = False


@dataclass(slots=True)
class Call:
    """fn(cursor, dialect) run inside the batch's transaction; the result is its value."""

    fn: Callable[[Any, Dialect], Any]
    done: Done | None = None
    tries: int = 0
    kind: ClassVar[str] = "call"


Op = Insert | Mark | Record | Call


class Waiter:
    """Completes when the writer has committed an operation, or failed it.

    A wait that times out leaves the write where it is: it may still commit.
    So a waiter that acts on what a write did (tasks it claimed, a cancel)
    passes `late`, which gets the value and the error when the write ends
    after the wait gave up (on the thread that wrote it): nothing a write
    committed is lost to a wait that ended first."""

    __slots__ = ("_lock", "_guard", "value", "error", "resolved", "_late")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()  # released by resolve()
        self._guard = threading.Lock()  # resolve() against a wait that times out
        self.value: Any = None
        self.error: BaseException | None = None
        self.resolved = False
        self._late: Done | None = None

    def resolve(self, value: Any = None, error: BaseException | None = None) -> None:
        with self._guard:
            self.value, self.error = value, error
            self.resolved = True
            late = self._late
        self._lock.release()
        if late is not None:
            late(value, error)

    def wait(self, timeout: float | None = None, late: Done | None = None) -> Any:
        """The write's value (or its error, raised); TimeoutError when it has
        not ended within `timeout` seconds, and then `late` gets its end."""
        if self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            self._lock.release()  # a second wait() returns at once
        else:
            with self._guard:
                if not self.resolved:
                    self._late = late
                    raise TimeoutError(f"database write not committed within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.value
