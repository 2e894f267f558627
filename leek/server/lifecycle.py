"""What the broker tells of each task's life: a log record and a signal at each step.

Each step of a task is told here once, in the broker's process, whichever
pool ran the task: its log record (its fields in ``extra``, leek.logs) and its
signal (leek.signals, which documents when each is sent and with what).

    received   a push committed (on the committing thread, before its tasks
               reach the workers and its client the reply)
    started    an attempt begins (on its worker thread)
    finished   an attempt ended: succeeded, failed and retried, or failed
               for good (on its worker thread, once its outcome is queued
               for the store)

A task that goes well is told at DEBUG only (received, started, succeeded):
a broker draining a long queue of short tasks would otherwise spend a good
part of its time writing lines that the Task rows already hold. A failed
attempt is a WARNING when it is retried and an ERROR when it ends its task;
both carry its error and traceback. A project that wants a line per task sets
this logger (or "leek") to DEBUG in LOGGING.

Work no one asked for is skipped: a record below the logger's level is not
built, and a signal with no receiver is not sent, so the push path pays one
test of each per push. A receiver that raises is logged here, with the
step's task fields, and changes nothing else: the other receivers still run
and the task goes on as if it had not raised.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from django.dispatch import Signal

from .. import signals
from ..logs import ERROR_FIELDS, duration_ms, task_extra
from ..protocol.payload import load_value
from .rows import Outcome, Ready

logger = logging.getLogger(__name__)


def received(tasks: list[Ready]) -> None:
    """Tell of tasks just inserted: a DEBUG record and task_received, each."""
    debug = logger.isEnabledFor(logging.DEBUG)
    listened = _listened(signals.task_received)
    if not (debug or listened):
        return
    sender = _broker()
    for ready in tasks:
        name = ready.job.name if ready.job is not None else ""
        if debug:
            logger.debug(
                "task received task=%s name=%s queue=%s",
                ready.id,
                name,
                ready.queue,
                extra=task_extra("task_received", ready.id, name, ready.queue),
            )
        if listened:
            send(
                signals.task_received,
                sender,
                task_extra("task_received", ready.id, name, ready.queue),
                task_id=ready.id,
                name=name,
                queue=ready.queue,
            )


def started(task_id: uuid.UUID, name: str, queue: str, attempt: int) -> None:
    """Tell of an attempt that begins: a DEBUG record and task_started."""
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "task started task=%s name=%s queue=%s attempt=%s",
            task_id,
            name,
            queue,
            attempt,
            extra=task_extra("task_started", task_id, name, queue, attempt),
        )
    if _listened(signals.task_started):
        send(
            signals.task_started,
            _pool(),
            task_extra("task_started", task_id, name, queue, attempt),
            task_id=task_id,
            name=name,
            queue=queue,
            attempt=attempt,
        )


def finished(queue: str, outcome: Outcome) -> None:
    """Tell of an attempt that ended: a success (DEBUG, task_succeeded), a
    failure to retry (WARNING, task_failed then task_retried) or a failure
    for good (ERROR, task_failed)."""
    if outcome.succeeded:
        _succeeded(queue, outcome)
    else:
        _failed(queue, outcome)


def _succeeded(queue: str, o: Outcome) -> None:
    took = duration_ms(o.started, o.finished)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "task succeeded task=%s name=%s queue=%s attempt=%s duration_ms=%.1f",
            o.task_id,
            o.name,
            queue,
            o.attempt,
            took,
            extra=task_extra("task_succeeded", o.task_id, o.name, queue, o.attempt, took),
        )
    if _listened(signals.task_succeeded):
        extra = task_extra("task_succeeded", o.task_id, o.name, queue, o.attempt, took)
        try:
            result = load_value(o.result, o.task_id)
        except Exception:
            logger.exception(
                "a result the broker cannot load is sent as None task=%s",
                o.task_id,
                extra={**extra, "action": "signal_result_unloadable"},
            )
            result = None
        send(
            signals.task_succeeded,
            _pool(),
            extra,
            task_id=o.task_id,
            name=o.name,
            queue=queue,
            attempt=o.attempt,
            result=result,
            duration=o.finished - o.started,
        )


def _failed(queue: str, o: Outcome) -> None:
    took = duration_ms(o.started, o.finished)
    action = "task_failed" if o.final else "task_retried"
    extra = task_extra(
        action, o.task_id, o.name, queue, o.attempt, took, o.exc_type, o.exc_message, o.traceback
    )
    if o.final:
        logger.error(
            "task failed task=%s name=%s queue=%s attempt=%s duration_ms=%.1f error=%s",
            o.task_id,
            o.name,
            queue,
            o.attempt,
            took,
            o.exc_type,
            extra=extra,
        )
    else:
        logger.warning(
            "task failed, to be retried task=%s name=%s queue=%s attempt=%s duration_ms=%.1f "
            "error=%s retry_in=%.1fs",
            o.task_id,
            o.name,
            queue,
            o.attempt,
            took,
            o.exc_type,
            max(0.0, (o.retry_at or o.finished) - o.finished),
            extra=extra,
        )
    fields: dict[str, Any] = {
        "task_id": o.task_id,
        "name": o.name,
        "queue": queue,
        "attempt": o.attempt,
        "exc_type": o.exc_type,
        "exc_message": o.exc_message,
        "traceback": o.traceback,
    }
    if _listened(signals.task_failed):
        send(signals.task_failed, _pool(), extra, final=o.final, **fields)
    if not o.final and _listened(signals.task_retried):
        retry_at = datetime.fromtimestamp(o.retry_at or o.finished, UTC)
        send(signals.task_retried, _pool(), extra, retry_at=retry_at, **fields)


def broker_started(node: str, host: str, port: int) -> None:
    """broker_started, once the broker listens."""
    if _listened(signals.broker_started):
        send(
            signals.broker_started,
            _broker(),
            {"action": "broker_started"},
            node=node,
            host=host,
            port=port,
        )


def broker_stopping(node: str) -> None:
    """broker_stopping, as the broker begins its stop."""
    if _listened(signals.broker_stopping):
        send(signals.broker_stopping, _broker(), {"action": "broker_stopping"}, node=node)


def send(signal: Signal, sender: Any, extra: dict[str, Any], **arguments: Any) -> None:
    """Send `signal` with send_robust; log each receiver that raised, with
    the task's fields of `extra`, its exception and the action
    signal_receiver_failed."""
    responses = signal.send_robust(sender, **arguments)
    if not any(isinstance(response, Exception) for _, response in responses):
        return
    fields = {k: v for k, v in extra.items() if k not in ERROR_FIELDS}
    fields["action"] = "signal_receiver_failed"
    for receiver, response in responses:
        if isinstance(response, Exception):
            logger.error(
                "signal receiver raised signal=%s receiver=%s task=%s error=%s",
                signals.NAMES.get(signal, "?"),
                getattr(receiver, "__qualname__", receiver),
                extra.get("task_id", ""),
                type(response).__name__,
                exc_info=response,
                extra=fields,
            )


def _listened(signal: Signal) -> bool:
    """Whether `signal` has a receiver; an empty list of receivers answers
    without has_listeners' lock."""
    return bool(signal.receivers) and signal.has_listeners()


def _broker() -> type:
    """The sender of task_received and the broker's signals."""
    from .broker import Broker

    return Broker


def _pool() -> type:
    """The sender of the task signals, as leek.signals documents."""
    from .workers import Pool

    return Pool
