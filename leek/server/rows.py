"""What the broker's parts hand each other, and how values look on each database.

A client's task arrives as a `NewTask`; once inserted it is a `Ready` in the
in-memory queues, holding the `Job` a worker runs while its payload is kept;
each attempt ends in an `Outcome`. `Dialect` turns ids, times and placeholders
into what SQLite or PostgreSQL take, and back.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(slots=True)
class NewTask:
    """A task as a client sends it, before its insert."""

    id: uuid.UUID
    name: str
    payload: bytes
    args_repr: str
    queue: str
    priority: int
    max_retries: int
    timeout: float | None
    run_after: float | None
    code_version: str
    key: str | None = None
    key_running: bool = False
    expires: float | None = None
    rate_limit: str = ""  # "" for none (leek/ratelimit.py)
    #: Set by the insert for a task not inserted because another task holds
    #: its key: that task's id, which the push's reply carries instead.
    holder: uuid.UUID | None = None


@dataclass(slots=True)
class Job:
    """What a worker needs to run a task."""

    payload: bytes
    name: str
    attempts: int
    max_retries: int
    timeout: float | None
    #: A Unix time: a task not started by then expires instead (None: never).
    expires: float | None = None
    rate_limit: str = ""  # "" for none (leek/ratelimit.py)


@dataclass(slots=True)
class Ready:
    """A task the broker owns and must run: what the in-memory queues hold."""

    id: uuid.UUID
    priority: int
    queue: str
    run_after: float | None
    job: Job | None = None
    #: Inserted unowned, for whichever broker claims it (server/share.py):
    #: not for this broker's queues.
    shared: bool = False


@dataclass(slots=True)
class Outcome:
    """The end of one attempt: a success, a failure to retry, or a final failure."""

    task_id: uuid.UUID
    name: str
    attempt: int
    started: float
    finished: float
    succeeded: bool
    result: bytes | None = None
    result_repr: str = ""
    stdout: str = ""
    stderr: str = ""
    exc_type: str = ""
    exc_message: str = ""
    traceback: str = ""
    final: bool = True
    retry_at: float | None = None
    #: The epoch of the claim the attempt started under (Store.epoch): its
    #: outcome is written only while that claim still holds the task.
    epoch: int = 0


class Dialect:
    """How values and placeholders look on this connection's database."""

    def __init__(self, vendor: str) -> None:
        self.vendor = vendor
        self.sqlite = vendor == "sqlite"
        self.ph = "?" if self.sqlite else "%s"

    def pk(self, value: uuid.UUID) -> Any:
        return value.hex if self.sqlite else value

    def time(self, ts: float | None) -> Any:
        if ts is None:
            return None
        moment = datetime.fromtimestamp(ts, UTC)
        return moment.replace(tzinfo=None).isoformat(" ") if self.sqlite else moment

    def read_uuid(self, value: Any) -> uuid.UUID:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))

    def read_time(self, value: Any) -> float | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value).replace(tzinfo=UTC)
        elif value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return float(value.timestamp())

    def sql(self, text: str) -> str:
        """`text` written with %s placeholders, in this database's style."""
        return text.replace("%s", self.ph)
