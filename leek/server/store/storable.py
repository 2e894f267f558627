"""What the database can store: task text made storable before the store writes it.

Task code can print or raise anything, and both databases refuse some of it:
PostgreSQL's text refuses a NUL character and its varchar a name past its
length, and both drivers refuse a string with a lone surrogate (not valid
Unicode). A write one of them refuses fails, so the store passes every task
text through here on its way in (`Store.insert`, `Store.record`, a periodic
run's task), the same way on both databases:

- a NUL becomes the four characters ``\\x00`` and a lone surrogate its
  ``\\udXXX`` escape, as ``repr`` writes them;
- output (stdout, stderr), error texts (message, traceback) and descriptions
  (``args_repr``, ``result_repr``) are cut at CAPTURE_LIMIT characters, a
  traceback keeping its end (where the exception is), the others their start;
- names are cut to their columns' lengths (models.py): task and exception
  type names to 255 characters, queue names and code versions to 64.

A cut text ends (or, for a traceback, starts) with ``…``. A value that needs
none of this is passed on as it is, checked at the cost of a scan.
"""

from __future__ import annotations

import dataclasses

from ...exceptions import OutcomeNotStored
from ...fields import encodes
from ..rows import NewTask, Outcome

#: Column lengths, as models.py declares them.
NAME_LENGTH = 255  # Task.name, SuccessTask.name, FailedTask.name and .exc_type
QUEUE_LENGTH = 64  # Task.queue
CODE_VERSION_LENGTH = 64  # Task.code_version
#: The exception type of the failure a task gets when its outcome could not be stored.
NOT_STORED = f"{OutcomeNotStored.__module__}.{OutcomeNotStored.__qualname__}"

CUT = "…"


def text(value: str, limit: int, tail: bool = False) -> str:
    """`value` as every database stores it: NULs and lone surrogates escaped,
    at most `limit` characters (its end kept when `tail`)."""
    if not _clean(value):
        if not value.isascii() and not encodes(value):
            value = value.encode("utf-8", "backslashreplace").decode("utf-8")
        value = value.replace("\x00", "\\x00")
    if len(value) <= limit:
        return value
    if tail:
        return CUT + value[len(value) - limit + 1 :]
    return value[: limit - 1] + CUT


def _clean(value: str) -> bool:
    """Whether `value` is stored as it is (its length aside)."""
    return (value.isascii() or encodes(value)) and "\x00" not in value


def _fits(value: str, limit: int) -> bool:
    return len(value) <= limit and _clean(value)


def task(t: NewTask, limit: int) -> NewTask:
    """A new task's row values as the databases take them (`t` itself when they already are)."""
    if (
        _fits(t.name, NAME_LENGTH)
        and _fits(t.queue, QUEUE_LENGTH)
        and _fits(t.args_repr, limit)
        and _fits(t.code_version, CODE_VERSION_LENGTH)
    ):
        return t
    return dataclasses.replace(
        t,
        name=text(t.name, NAME_LENGTH),
        queue=text(t.queue, QUEUE_LENGTH),
        args_repr=text(t.args_repr, limit),
        code_version=text(t.code_version, CODE_VERSION_LENGTH),
    )


def outcome(o: Outcome, limit: int) -> Outcome:
    """An attempt's outcome with every text as the databases take it (`o`
    itself when they already are)."""
    if (
        _fits(o.name, NAME_LENGTH)
        and _fits(o.exc_type, NAME_LENGTH)
        and _fits(o.stdout, limit)
        and _fits(o.stderr, limit)
        and _fits(o.exc_message, limit)
        and _fits(o.traceback, limit)
        and _fits(o.result_repr, limit)
    ):
        return o
    return dataclasses.replace(
        o,
        name=text(o.name, NAME_LENGTH),
        result_repr=text(o.result_repr, limit),
        stdout=text(o.stdout, limit),
        stderr=text(o.stderr, limit),
        exc_type=text(o.exc_type, NAME_LENGTH),
        exc_message=text(o.exc_message, limit),
        traceback=text(o.traceback, limit, tail=True),
    )


def not_stored(o: Outcome, error: BaseException, limit: int) -> Outcome:
    """What is written for an outcome the database refused: a failure saying
    why, with none of the attempt's own values (result, output, traceback).

    A success becomes the task's final failure. A failure keeps its place:
    final, or to be retried at its time (the broker holds the retry already)."""
    reason = text(f"{type(error).__name__}: {error}".strip(), limit // 2)
    if o.succeeded:
        what = "the result"
    else:
        what = f"the failure ({text(o.exc_type, NAME_LENGTH)})"
    message = f"{what} of attempt {o.attempt} could not be stored: {reason}"
    return Outcome(
        o.task_id,
        o.name,
        o.attempt,
        o.started,
        o.finished,
        False,
        exc_type=NOT_STORED,
        exc_message=text(message, limit),
        final=o.succeeded or o.final,
        retry_at=None if o.succeeded else o.retry_at,
        epoch=o.epoch,
    )
