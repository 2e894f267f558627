"""What `leek top` shows, gathered in one go: the brokers, the queues, the
tasks running now and the last failures.

`gather` asks each broker the client knows for its `stats` (probe.py), then
reads the database with plain SELECTs in autocommit: no lock, no write, no
transaction of its own. A broker that does not answer is listed in
`Snapshot.answers` with the reason; every other figure is the database's
view all the same. Drawing it is frame.py's concern.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .. import conf
from .output import OK, UNHEALTHY, UNREACHABLE
from .probe import Answer, Probe

#: Seconds of finished runs the rate per second is taken over.
RATE_WINDOW = 60.0
#: Seconds after its last heartbeat that a stopped broker's row drops out of view.
STOPPED_SHOWN = 600.0


@dataclass(frozen=True, slots=True)
class BrokerRow:
    """One broker: its row's heartbeat, and its own reply when it gave one.

    `health` is "ok" or "unhealthy" (as it says, else as its row last said),
    "no answer" (its heartbeat is recent, but its address did not answer),
    "dead" (no heartbeat within HEARTBEAT_TIMEOUT) or "stopped"."""

    name: str
    address: str
    health: str
    note: str
    heartbeat_age: float | None
    workers: int
    alive: int
    busy: int
    code_version: str
    answered: bool


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One queue: tasks due and waiting, waiting for a later time, running;
    runs finished per second over RATE_WINDOW; the age of its oldest due task;
    whether it is paused (`leek pause`)."""

    name: str
    waiting: int = 0
    later: int = 0
    running: int = 0
    rate: float = 0.0
    oldest_age: float | None = None
    paused: bool = False


@dataclass(frozen=True, slots=True)
class RunningRow:
    """A task whose row says it runs, with the progress it last set."""

    id: str
    name: str
    queue: str
    broker: str
    runtime: float | None
    progress: float | None
    note: str


@dataclass(frozen=True, slots=True)
class FailureRow:
    """One failed attempt; `final` when it will not be retried."""

    at: datetime
    name: str
    exc_type: str
    message: str
    final: bool


@dataclass(frozen=True)
class Snapshot:
    """Everything one frame of `leek top` shows, taken at `taken_at`."""

    taken_at: datetime
    answers: list[Answer]
    brokers: list[BrokerRow] = field(default_factory=list)
    queues: list[QueueRow] = field(default_factory=list)
    running: list[RunningRow] = field(default_factory=list)
    running_total: int = 0
    failures: list[FailureRow] = field(default_factory=list)
    database_error: str = ""

    @property
    def status(self) -> int:
        """The exit status `leek stats` would give: UNREACHABLE when no broker
        answered, UNHEALTHY when one refused or said it is unhealthy, else OK."""
        reached = [a for a in self.answers if a.reachable]
        if not reached:
            return UNREACHABLE
        if any(a.stats is None or not a.stats.get("healthy") for a in reached):
            return UNHEALTHY
        return OK


def gather(probe: Probe, running_rows: int = 10, failure_rows: int = 10) -> Snapshot:
    """One snapshot: the brokers' replies, then the database's rows. A database
    that fails is named in `database_error` and leaves only the brokers that
    answered. The connection stays open from one snapshot to the next, and is
    closed after a database error."""
    from django.db import DatabaseError, connection
    from django.utils import timezone

    from ..liveness import database_now

    answers = probe.ask()
    now = timezone.now()
    try:
        return Snapshot(
            now,
            answers,
            _brokers(database_now(), answers),
            _queues(now),
            *_running(now, running_rows),
            _failures(failure_rows),
        )
    except DatabaseError as exc:
        connection.close()  # the next snapshot connects anew
        first = (str(exc).strip().splitlines() or [""])[0]
        brokers = [_replied(a.stats, a.address) for a in answers if a.stats is not None]
        return Snapshot(now, answers, brokers, database_error=f"{type(exc).__name__}: {first}")


def _brokers(now: datetime, answers: list[Answer]) -> list[BrokerRow]:
    """The brokers alive or not long stopped, with the replies merged in."""
    from ..models import BrokerNode

    timeout = float(conf.get("HEARTBEAT_TIMEOUT"))
    replies = {a.stats["node"]: a for a in answers if a.stats is not None}
    silent = {a.address for a in answers if not a.reachable}
    rows = []
    for node in BrokerNode.objects.order_by("name"):
        age = (now - node.heartbeat_at).total_seconds()
        answer = replies.pop(node.name, None)
        if answer is not None and answer.stats is not None:
            rows.append(_replied(answer.stats, f"{node.host}:{node.port}", age))
            continue
        if node.stopped and age > STOPPED_SHOWN:
            continue
        if node.stopped:
            health = "stopped"
        elif age > timeout:
            health = "dead"
        elif f"{node.host}:{node.port}" in silent:
            health = "no answer"
        else:
            health = "ok" if node.healthy else "unhealthy"
        rows.append(
            BrokerRow(
                node.name,
                f"{node.host}:{node.port}",
                health,
                node.note if health == "unhealthy" else "",
                age,
                node.workers,
                node.workers_alive,
                node.workers_busy,
                node.code_version,
                False,
            )
        )
    rows.extend(_replied(a.stats, a.address) for a in replies.values() if a.stats is not None)
    return rows


def _replied(stats: dict[str, Any], address: str = "", age: float | None = None) -> BrokerRow:
    """A broker as its own `stats` reply describes it."""
    healthy = bool(stats.get("healthy"))
    return BrokerRow(
        str(stats.get("node", "")),
        address,
        "ok" if healthy else "unhealthy",
        "" if healthy else str(stats.get("message", "")),
        age,
        int(stats.get("workers", 0)),
        int(stats.get("workers_alive", 0)),
        int(stats.get("running", 0)),
        str(stats.get("code_version", "")),
        True,
    )


def _queues(now: datetime) -> list[QueueRow]:
    """Every queue with tasks waiting or running, or runs finished of late,
    and every paused queue."""
    from django.db.models import Count, Q

    from .. import queues
    from ..models import FailedTask, Status, SuccessTask, Task

    found: dict[str, dict[str, Any]] = {}
    later = Q(run_after__gt=now)
    counts = (
        Task.objects.filter(status__in=(Status.QUEUED, Status.RUNNING))
        .order_by()
        .values("status", "queue")
        .annotate(n=Count("id"), later=Count("id", filter=later))
    )
    for row in counts:
        figures = found.setdefault(row["queue"], {})
        if row["status"] == Status.RUNNING:
            figures["running"] = row["n"]
        else:
            figures["waiting"] = row["n"] - row["later"]
            figures["later"] = row["later"]
    since = now - timedelta(seconds=RATE_WINDOW)
    finished = [
        SuccessTask.objects.filter(finished_at__gte=since),
        FailedTask.objects.filter(failed_at__gte=since),
    ]
    for rows in finished:
        for row in rows.order_by().values("task__queue").annotate(n=Count("id")):
            figures = found.setdefault(row["task__queue"], {})
            figures["rate"] = figures.get("rate", 0.0) + row["n"] / RATE_WINDOW
    for queue, figures in found.items():
        if figures.get("waiting"):
            figures["oldest_age"] = _oldest(now, queue)
    for queue in queues.paused():
        found.setdefault(queue, {})["paused"] = True
    return [QueueRow(queue, **found[queue]) for queue in sorted(found)]


def _oldest(now: datetime, queue: str) -> float | None:
    """Seconds the oldest due task of `queue` has waited since it was queued."""
    from django.db.models import Q

    from ..models import Status, Task

    due = Q(run_after__isnull=True) | Q(run_after__lte=now)
    first = (
        Task.objects.filter(due, status=Status.QUEUED, queue=queue)
        .order_by("queued_at")
        .values_list("queued_at", flat=True)
        .first()
    )
    return None if first is None else (now - first).total_seconds()


def _running(now: datetime, limit: int) -> tuple[list[RunningRow], int]:
    """The longest-running tasks, up to `limit`, and how many run in all."""
    from ..models import Status, Task

    running = Task.objects.filter(status=Status.RUNNING)
    rows = running.order_by("started_at").values(
        "id", "name", "queue", "broker", "started_at", "progress", "progress_note"
    )[:limit]
    found = [
        RunningRow(
            str(row["id"]),
            row["name"],
            row["queue"],
            row["broker"],
            None if row["started_at"] is None else (now - row["started_at"]).total_seconds(),
            row["progress"],
            row["progress_note"],
        )
        for row in rows
    ]
    total = len(found) if len(found) < limit else running.count()
    return found, total


def _failures(limit: int) -> list[FailureRow]:
    """The last failed attempts, newest first."""
    from ..models import FailedTask

    rows = FailedTask.objects.order_by("-failed_at").values(
        "failed_at", "name", "exc_type", "exc_message", "final"
    )[:limit]
    return [
        FailureRow(
            row["failed_at"],
            row["name"],
            row["exc_type"],
            (row["exc_message"].strip().splitlines() or [""])[0],
            row["final"],
        )
        for row in rows
    ]
