"""What the broker's parts hand each other, and how values look on each database.

A client's task arrives as a `NewTask`; once inserted it is a `Ready` in the
in-memory queues, holding the `Job` a worker runs while its payload is kept;
each attempt ends in an `Outcome`. `Dialect` turns ids, times and placeholders
into what SQLite or PostgreSQL take, and back.
"""

from __future__ import annotations

import math
import time
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


#: The first second after the last year a datetime holds.
END_OF_9999 = 253_402_300_800
#: The last whole second sqlite_time wrote, and its text.
_second: tuple[int, str] = (-1, "")


def sqlite_time(ts: float) -> str:
    """Unix time `ts` as Django stores a naive UTC datetime on SQLite:
    ``datetime.fromtimestamp(ts, UTC).replace(tzinfo=None).isoformat(" ")``,
    rounded to the microsecond as that rounds, at a quarter of its cost (it is
    written several times for each task). The text of the second is kept from
    one call to the next."""
    global _second
    fraction, whole = math.modf(ts)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        whole, micro = whole + 1, micro - 1_000_000
    elif micro < 0:
        whole, micro = whole - 1, micro + 1_000_000
    second = int(whole)
    known, text = _second
    if known != second:
        if not 0 <= second < END_OF_9999:  # never a task's: datetime says why
            return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None).isoformat(" ")
        text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
        if len(text) < 19:  # a year below 1000: strftime does not pad it
            text = text.zfill(19)
        _second = (second, text)
    return f"{text}.{micro:06d}" if micro else text


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
        if self.sqlite:
            return sqlite_time(ts)
        return datetime.fromtimestamp(ts, UTC)

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
