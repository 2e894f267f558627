"""Attempts cut short by their broker's end, as a restart or an adoption finds them.

A task found running under a broker that is gone has lost its attempt, and
the attempt counts: its FailedTask row says why, ``Interrupted`` when the
broker stopped gracefully and the task ran past the grace, ``WorkerLost``
when the broker's process died (or, for an adopter, went silent). The task
runs again, unless that was the last of its 1 + max_retries attempts: then it
fails for good, and the final failures go back to the caller, whose broker
tells the ON_FAILURE hooks and ADMINS (recovery.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..rows import Dialect, Outcome

INTERRUPTED = "leek.exceptions.Interrupted"
LOST = "leek.exceptions.WorkerLost"
#: Why a broker's own tasks were cut short, by whether its last life stopped gracefully.
OWN_STOPPED = "interrupted: broker stopped"
OWN_DIED = "its broker's process ended while the task ran (killed, crashed or out of memory)"
#: Why an adopted task was cut short, by whether its broker stopped gracefully.
ADOPTED_STOPPED = "interrupted: its broker stopped"
ADOPTED_DIED = "its broker stopped answering while the task ran (killed, crashed or cut off)"
#: What a final failure's message adds.
LAST = "; attempt {attempt} was its last, so it is not run again"


@dataclass(slots=True)
class Cut:
    """What a restart or an adoption found cut short: how many attempts, and
    the final failures among them (each to be told once)."""

    count: int = 0
    final: list[Outcome] = field(default_factory=list)


@dataclass(slots=True)
class CutShort:
    """A task found running under a gone broker, as its row was read."""

    key: Any  # the task's id as the database has it
    name: str
    attempt: int
    started_at: Any  # as the database has it
    broker: str  # the broker that ran the attempt
    graceful: bool  # that broker stopped gracefully (else it died or went silent)
    final: bool  # the attempt was the task's last


def record(cursor: Any, failure_sql: str, d: Dialect, rows: list[CutShort], adopted: bool) -> Cut:
    """Write a FailedTask row for each attempt in `rows`; the Cut they make."""
    now = time.time()
    cut = Cut(len(rows))
    values = []
    for r in rows:
        attempt = max(int(r.attempt), 1)
        exc_type = INTERRUPTED if r.graceful else LOST
        if adopted:
            message = ADOPTED_STOPPED if r.graceful else ADOPTED_DIED
        else:
            message = OWN_STOPPED if r.graceful else OWN_DIED
        if r.final:
            message += LAST.format(attempt=attempt)
        values.append(
            (r.key, r.name, attempt, r.started_at, d.time(now), exc_type, message)
            + ("", r.final, "", "", r.broker)  # traceback, final, stdout, stderr, broker
        )
        if r.final:
            started = d.read_time(r.started_at)
            cut.final.append(
                Outcome(
                    d.read_uuid(r.key),
                    r.name,
                    attempt,
                    now if started is None else started,
                    now,
                    False,
                    exc_type=exc_type,
                    exc_message=message,
                )
            )
    if values:
        cursor.executemany(failure_sql, values)
    return cut
