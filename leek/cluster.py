"""The brokers sharing the database, as their rows and the task table show them.

`leek cluster` and the admin dashboard read it; no broker needs to answer.
Each broker's row is what its last heartbeat wrote; the age of that heartbeat
is measured by the database's clock, read in the same query (liveness.py says
why). The tasks a broker owns are the unfinished ones naming it, queued or
running, counted in one grouped read of the task table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from . import conf
from .models import BrokerNode, Status, Task

#: What a broker's row says of it: heartbeat within HEARTBEAT_TIMEOUT, not
#: within it, or stopped gracefully (its last heartbeat said so).
LIVE, SILENT, STOPPED = "live", "silent", "stopped"


@dataclass(frozen=True, slots=True)
class Broker:
    """One broker's row, read at `now` (the database's clock), with the
    unfinished tasks it owns."""

    row: BrokerNode
    now: datetime
    state: str
    queued: int = 0
    running: int = 0

    @property
    def name(self) -> str:
        return self.row.name

    @property
    def address(self) -> str:
        return f"{self.row.host}:{self.row.port}"

    @property
    def lanes(self) -> list[str]:
        """The queues of its lanes; "*" stands for every queue without a lane."""
        return list(self.row.queues or {})

    @property
    def heartbeat_age(self) -> float:
        """Seconds since its last heartbeat, by the database's clock."""
        return (self.now - self.row.heartbeat_at).total_seconds()

    @property
    def uptime(self) -> float:
        """Seconds since it started, by the database's clock."""
        return (self.now - self.row.started_at).total_seconds()

    @property
    def alive(self) -> bool:
        return self.state == LIVE

    @property
    def owned(self) -> int:
        """Its unfinished tasks, queued or running."""
        return self.queued + self.running

    def as_dict(self) -> dict[str, Any]:
        """What `leek cluster --json` prints of it."""
        row = self.row
        return {
            "node": row.name,
            "hostname": row.hostname,
            "address": self.address,
            "pid": row.pid,
            "state": self.state,
            "healthy": row.healthy,
            "note": row.note,
            "queues": self.lanes,
            "workers": row.workers,
            "workers_alive": row.workers_alive,
            "workers_busy": row.workers_busy,
            "heartbeat_age": round(self.heartbeat_age, 3),
            "uptime": round(self.uptime, 3),
            "version": row.version,
            "code_version": row.code_version,
            "handled": row.handled,
            "owned": {"queued": self.queued, "running": self.running},
        }


@dataclass(frozen=True, slots=True)
class Cluster:
    """Every broker with a row, by name, and the unfinished tasks owned by no
    broker with a row (spooled ones, or those of a row purged since)."""

    brokers: list[Broker]
    unowned: int
    heartbeat_timeout: float

    @property
    def live(self) -> list[Broker]:
        return [b for b in self.brokers if b.alive]


def read(timeout: float | None = None) -> Cluster:
    """The brokers as their rows say now; a heartbeat older than `timeout`
    seconds (default HEARTBEAT_TIMEOUT) makes a broker silent."""
    from django.db.models import Count
    from django.db.models.functions import Now

    if timeout is None:
        timeout = float(conf.get("HEARTBEAT_TIMEOUT"))
    owned: dict[str, dict[str, int]] = {}
    counts = (
        Task.objects.filter(status__in=(Status.QUEUED, Status.RUNNING))
        .order_by()
        .values("broker", "status")
        .annotate(n=Count("*"))
    )
    for count in counts:
        owned.setdefault(count["broker"], {})[count["status"]] = count["n"]
    brokers = []
    for row in BrokerNode.objects.annotate(db_now=Now()).order_by("name"):
        now: datetime = row.db_now
        tasks = owned.pop(row.name, {})
        brokers.append(
            Broker(
                row,
                now,
                _state(row, now, timeout),
                tasks.get(Status.QUEUED, 0),
                tasks.get(Status.RUNNING, 0),
            )
        )
    unowned = sum(n for tasks in owned.values() for n in tasks.values())
    return Cluster(brokers, unowned, timeout)


def _state(row: BrokerNode, now: datetime, timeout: float) -> str:
    if row.stopped:
        return STOPPED
    if now - row.heartbeat_at > timedelta(seconds=timeout):
        return SILENT
    return LIVE


def age_text(seconds: float) -> str:
    """A time span in whole units: 4 s, 3 min 13 s, 5 h 2 min, 3 d 4 h."""
    total = int(max(seconds, 0.0))
    if total < 60:
        return f"{total} s"
    if total < 3600:
        return f"{total // 60} min {total % 60} s"
    if total < 2 * 86400:
        return f"{total // 3600} h {total % 3600 // 60} min"
    return f"{total // 86400} d {total % 86400 // 3600} h"
