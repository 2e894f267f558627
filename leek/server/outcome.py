"""What follows an attempt: its Outcome for the store, and for a failure to retry,
the task's next turn after a backoff.

Both pools end an attempt here, on the worker thread in the broker, so a task
is retried, and fails for good, alike wherever it ran.
"""

from __future__ import annotations

import random
import time

from .. import conf
from .attempt import Result, final
from .rows import Job, Outcome, Ready


def outcome_of(
    ready: Ready, job: Job, number: int, started: float, r: Result
) -> tuple[Outcome, Ready | None]:
    """The Outcome of attempt `number` of a task, and, for a failure that is
    retried, the task as it waits for its next attempt (at its backoff, or a
    Retry's own countdown)."""
    finished = time.time()
    if r.succeeded:
        done = Outcome(
            ready.id,
            job.name,
            number,
            started,
            finished,
            True,
            result=r.result,
            result_repr=r.result_repr,
            stdout=r.stdout,
            stderr=r.stderr,
        )
        return done, None
    last = final(number, job.max_retries, r.retryable)
    retry_at = None
    retry = None
    if not last:
        retry_at = finished + (r.countdown if r.countdown is not None else backoff(number))
        again = Job(job.payload, job.name, number, job.max_retries, job.timeout)
        retry = Ready(ready.id, ready.priority, ready.queue, retry_at, again)
    failed = Outcome(
        ready.id,
        job.name,
        number,
        started,
        finished,
        False,
        stdout=r.stdout,
        stderr=r.stderr,
        exc_type=r.exc_type,
        exc_message=r.exc_message,
        traceback=r.traceback,
        final=last,
        retry_at=retry_at,
    )
    return failed, retry


def backoff(attempt: int) -> float:
    """Seconds before retry number `attempt`: exponential, capped, with jitter."""
    settings = conf.get_settings()
    base = min(
        float(settings["RETRY_BACKOFF"]) * 2 ** (attempt - 1), float(settings["RETRY_BACKOFF_MAX"])
    )
    jitter = float(settings["RETRY_JITTER"]) * random.random()  # noqa: S311 - not for secrets
    return float(base * (1 + jitter))
