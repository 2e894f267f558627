"""One attempt of a task: what a worker hands its runner, what comes back, and the run itself.

`perform` is the one place task code is called, on a worker thread (threads
pool) or in a worker process (processes pool), so both pools load payloads,
bind the task's context, and turn returns and exceptions into a `Result` the
same way. A `Result` crosses the pipe from a worker process as it is, and the
worker thread turns it into the Outcome the store writes (workers.py). A
payload whose signature fails is never unpickled (`refused`): its task fails
for good with AuthenticationFailed, and an Event says so.

An ``async def`` task's coroutine is run to its end in an event loop of its
own (`run_coroutine`), on the worker thread or in the worker process, so its
result is the coroutine's value and nothing one task leaves scheduled runs
during another. Its time limit cancels it where it awaits; a coroutine that
blocks its loop meets the pool's own limit instead (stops.py, process.py).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import traceback
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from ..exceptions import AuthenticationFailed, PayloadError, Retry, TaskTimeout
from ..logs import task_extra
from ..protocol.payload import dump_value, load_task
from ..runtime import CapturedOutput, Flag, ProgressSink, TaskContext, bind_context

#: Characters of a return value's repr kept for the admin.
REPR_LIMIT = 2000

security = logging.getLogger("leek.security")


@dataclass(slots=True)
class Attempt:
    """A task to run once, as a worker hands it to a thread or a process."""

    task_id: uuid.UUID
    name: str
    number: int  # 1 for the first attempt
    payload: bytes
    timeout: float | None
    node: str  # the broker running it
    max_retries: int  # the task's: attempt 1 + max_retries is its last


@dataclass(slots=True)
class Result:
    """How an attempt ended: a value, or an error and whether to retry it."""

    succeeded: bool
    result: bytes | None = None
    result_repr: str = ""
    exc_type: str = ""
    exc_message: str = ""
    traceback: str = ""
    retryable: bool = True
    countdown: float | None = None  # a Retry's own delay, else the backoff
    stdout: str = ""
    stderr: str = ""


def perform(
    attempt: Attempt,
    sink: ProgressSink | None,
    output: CapturedOutput | None,
    no_retry: tuple[type[BaseException], ...],
    stop: Flag | None = None,
) -> Result:
    """Run the task once and say how it ended. `output` captures print() on
    this thread (the threads pool); None leaves the streams alone (a worker
    process captures its file descriptors instead). `stop` is what the task's
    ``current_task().cancelled`` reads."""

    def will_retry(exc: BaseException) -> bool:
        return not final(attempt.number, attempt.max_retries, retryable(exc, no_retry))

    try:
        fn, args, kwargs = load_task(attempt.payload, attempt.task_id)
    except AuthenticationFailed as exc:
        return refused(attempt, exc)
    except PayloadError as exc:
        return failed(exc, retryable=False)
    try:
        context = TaskContext(
            attempt.task_id, attempt.name, attempt.number, sink, attempt.node, will_retry, stop
        )
        with bind_context(context, output):
            value = fn(*args, **kwargs)
            if inspect.iscoroutine(value):
                value = run_coroutine(value, attempt.timeout)
        return Result(True, result=dump_value(value), result_repr=short_repr(value))
    except TaskTimeout:
        return timed_out(attempt.timeout)
    except Exception as exc:
        return failed(exc, retryable=retryable(exc, no_retry))


def refused(attempt: Attempt, exc: AuthenticationFailed) -> Result:
    """The Result of an attempt whose payload failed its signature: the task
    fails for good, unread; the refusal is logged and written as an Event."""
    from ..events import log_event

    security.error(
        "stored payload refused task=%s name=%s error=%s",
        attempt.task_id,
        attempt.name,
        exc,
        extra=task_extra("payload_refused", attempt.task_id, attempt.name, attempt=attempt.number),
    )
    try:
        log_event(
            "security.payload_refused",
            str(exc),
            task=str(attempt.task_id),
            name=attempt.name,
            attempt=attempt.number,
            broker=attempt.node,
        )
    except Exception:
        security.exception(
            "could not write the event of a refused payload task=%s",
            attempt.task_id,
            extra=task_extra("event_failed", attempt.task_id, attempt.name, attempt=attempt.number),
        )
    return failed(exc, retryable=False)


def run_coroutine(coro: Coroutine[Any, Any, Any], limit: float | None) -> Any:
    """Run `coro` to its end in a new event loop on this thread; its value.

    Past `limit` seconds (None or 0: no limit) the coroutine is cancelled where
    it awaits and TaskTimeout is raised. Its own TimeoutError stays its own."""
    return asyncio.run(_within(coro, limit))


async def _within(coro: Coroutine[Any, Any, Any], limit: float | None) -> Any:
    if not limit:
        return await coro
    deadline = asyncio.timeout(limit)
    try:
        async with deadline:
            return await coro
    except TimeoutError:
        if deadline.expired():
            raise TaskTimeout() from None
        raise


def retryable(exc: BaseException, no_retry: tuple[type[BaseException], ...]) -> bool:
    """Whether a task that raised `exc` may run again: not when its payload
    cannot load, nor for the NO_RETRY exceptions; always after its time limit."""
    return isinstance(exc, TaskTimeout) or not isinstance(exc, (PayloadError, *no_retry))


def final(number: int, max_retries: int, retryable: bool) -> bool:
    """Whether failed attempt `number` ends its task: its error is not retried,
    or it was the last of the task's 1 + max_retries attempts."""
    return not retryable or number > max_retries


def failed(exc: BaseException, retryable: bool = True) -> Result:
    """The Result of an attempt that raised `exc`."""
    remote = type(exc)
    return Result(
        False,
        exc_type=f"{remote.__module__}.{remote.__qualname__}",
        exc_message=str(exc),
        traceback="".join(traceback.format_exception(exc)),
        retryable=retryable,
        countdown=exc.countdown if isinstance(exc, Retry) else None,
    )


def timed_out(limit: float | None) -> Result:
    """The Result of an attempt stopped at its time limit."""
    return Result(
        False,
        exc_type="leek.exceptions.TaskTimeout",
        exc_message=f"timed out after {limit or 0:g} s",
    )


def cancelled() -> Result:
    """The Result of an attempt whose worker process was killed by a cancel."""
    return Result(
        False,
        exc_type="leek.exceptions.TaskCancelled",
        exc_message="cancelled while it ran: its worker process was killed",
        retryable=False,
    )


def short_repr(value: Any, limit: int = REPR_LIMIT) -> str:
    try:
        text = repr(value)
    except Exception as exc:
        text = f"<unrepresentable {type(value).__name__}: {exc}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"
