"""Repairing the queue: requeue failed tasks, purge old ones.

`leek retry-failed` and `leek purge` call the functions below, as the admin's
actions call `requeue`. They work with or without a running broker: requeued
tasks go through the broker when one answers, and otherwise are written back as
spooled rows that the next broker adopts.

Each requeue counts on the task (Task.requeues), and `retry-failed` requeues
a task at most `--max-requeues` times: a task that fails at every run, from
cron every quarter of an hour, is left failed then, and said to be.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.db import transaction
from django.db.models import Exists, F, OuterRef, QuerySet
from django.db.models.functions import Now
from django.utils import timezone

from ..exceptions import BrokerUnavailable, LeekError
from .broker import add_queue_argument
from .output import OK, UNHEALTHY, emit

if TYPE_CHECKING:
    from ..models import FailedTask

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
BATCH = 1000
#: Times `retry-failed` requeues one task, unless told otherwise (--max-requeues).
MAX_REQUEUES = 3


def parse_age(text: str) -> timedelta:
    """'90m', '12h', '30d', '2w' as a timedelta; ValueError names the format."""
    match = _AGE.match(text or "")
    if not match:
        raise ValueError(f"age {text!r} is not a number and a unit (s, m, h, d or w), like 30d")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


def parse_since(text: str) -> datetime:
    """An age ('2h') or an ISO date or datetime, as an aware datetime."""
    if _AGE.match(text or ""):
        return timezone.now() - parse_age(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(
            f"--since {text!r} is neither an age like 2h nor a date like 2026-01-31"
        ) from exc
    return timezone.make_aware(moment) if timezone.is_naive(moment) else moment


def retry_failed(
    queue: str | None = None,
    since: str | None = None,
    dry_run: bool = False,
    max_requeues: int = MAX_REQUEUES,
) -> int:
    """Requeue every task that failed for good and has not been requeued since,
    unless it was requeued `max_requeues` times already (see `left_failed`);
    mark its final failure requeued. Returns how many tasks."""
    _check_max_requeues(max_requeues)
    failures = _failed(queue, since).filter(task__requeues__lt=max_requeues)
    ids = sorted({str(i) for i in failures.values_list("task_id", flat=True)})
    if dry_run or not ids:
        return len(ids)
    return requeue([uuid.UUID(i) for i in ids])


def left_failed(
    queue: str | None = None, since: str | None = None, max_requeues: int = MAX_REQUEUES
) -> int:
    """How many tasks that failed for good `retry_failed` leaves failed, as
    they were requeued `max_requeues` times already."""
    _check_max_requeues(max_requeues)
    failures = _failed(queue, since).filter(task__requeues__gte=max_requeues)
    return failures.values("task_id").distinct().count()


def _failed(queue: str | None, since: str | None) -> QuerySet[FailedTask]:
    """The final failures of failed tasks not requeued since (of `queue`, since `since`)."""
    from ..models import FailedTask

    failures = FailedTask.objects.filter(
        final=True, requeued_at__isnull=True, task__status="failed"
    )
    if queue:
        failures = failures.filter(task__queue=queue)
    if since:
        failures = failures.filter(failed_at__gte=parse_since(since))
    return failures


def _check_max_requeues(value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"--max-requeues must be a whole number, 0 or more, got {value!r}")


def requeue(ids: list[uuid.UUID]) -> int:
    """Run these finished tasks again (attempts start over, requeues counts
    one more); returns how many.

    A broker that answers adopts them at once; otherwise the next broker to
    start does."""
    from ..client import connection
    from ..models import FailedTask, Task

    done = 0
    for start in range(0, len(ids), BATCH):
        chunk = ids[start : start + BATCH]
        with transaction.atomic():
            rows = Task.objects.filter(pk__in=chunk).exclude(status__in=["queued", "running"])
            count = rows.update(
                status="queued",
                attempts=0,
                run_after=None,
                expires_at=None,  # a person ran it again: it runs, whenever it starts
                finished_at=None,
                started_at=None,
                spooled=True,
                broker="",
                requeues=F("requeues") + 1,
            )
            FailedTask.objects.filter(
                task_id__in=chunk, final=True, requeued_at__isnull=True
            ).update(requeued_at=timezone.now())
            # A step of a chain waits again for the steps before it that have
            # not succeeded (they may be requeued too), as at its push.
            before = Task.objects.filter(next_step=OuterRef("pk")).exclude(status="succeeded")
            Task.objects.filter(pk__in=chunk, status="queued").filter(Exists(before)).update(
                status="waiting", spooled=False
            )
        done += count
    with contextlib.suppress(BrokerUnavailable):
        connection.call("sweep", {})
    return done


def purge(older_than: str, statuses: list[str] | None = None, dry_run: bool = False) -> int:
    """Delete finished tasks (and their outcomes) that finished before now minus
    `older_than`, in batches. Returns how many tasks."""
    from ..models import FINISHED, FailedTask, SuccessTask, Task

    allowed = [str(s) for s in FINISHED]
    chosen = statuses or allowed
    unknown = sorted(set(chosen) - set(allowed))
    if unknown:
        raise ValueError(
            f"cannot purge status {', '.join(unknown)}: only finished tasks "
            f"({', '.join(allowed)}) can be purged"
        )
    cutoff = timezone.now() - parse_age(older_than)
    old = Task.objects.filter(status__in=chosen, finished_at__lt=cutoff)
    if dry_run:
        return old.count()
    deleted = 0
    while True:
        batch = list(old.values_list("pk", flat=True)[:BATCH])
        if not batch:
            return deleted
        with transaction.atomic():
            SuccessTask.objects.filter(task_id__in=batch).delete()
            FailedTask.objects.filter(task_id__in=batch).delete()
            Task.objects.filter(pk__in=batch).delete()
        deleted += len(batch)


def forget_brokers(older_than: str, dry_run: bool = False) -> int:
    """Delete the rows of brokers silent since before now minus `older_than`
    (stopped or gone) that own no unfinished task. Returns how many.

    A gone broker's row is what leads the others to adopt its tasks, so a row
    that still owns any stays until they have. A broker that turns out to be
    alive writes its row again at its next heartbeat."""
    from ..models import BrokerNode, Status, Task

    cutoff = Now() - parse_age(older_than)  # the database's clock, as every heartbeat's
    owners = Task.objects.filter(status__in=[Status.QUEUED, Status.RUNNING]).values("broker")
    old = BrokerNode.objects.filter(heartbeat_at__lt=cutoff).exclude(name__in=owners)
    if dry_run:
        return old.count()
    return int(old.delete()[0])


def add_retry_arguments(parser: argparse.ArgumentParser) -> None:
    """--queue, --since, --max-requeues and --dry-run of `leek retry-failed`."""
    add_queue_argument(parser)
    parser.add_argument("--since", help="only failures newer than this: 2h, 3d, 2026-01-31")
    parser.add_argument(
        "--max-requeues",
        type=_requeues,
        default=MAX_REQUEUES,
        metavar="N",
        help=f"leave failed a task requeued N times already (default {MAX_REQUEUES})",
    )
    parser.add_argument("--dry-run", action="store_true", help="say what would run, change nothing")


def _requeues(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number, 0 or more, got {text!r}")
    return value


def add_purge_arguments(parser: argparse.ArgumentParser) -> None:
    """--older-than (required), --status and --dry-run of `leek purge`."""
    parser.add_argument("--older-than", required=True, help="age such as 30d, 12h, 90m")
    parser.add_argument(
        "--status",
        action="append",
        help="only this status (repeatable); default: every finished status",
    )
    parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")


def run_retry_failed(options: argparse.Namespace) -> int:
    """Print how many failed tasks were requeued; UNHEALTHY on a bad option or a failure."""
    limit = options.max_requeues
    try:
        # Those left are counted first: a task requeued now may fail again at
        # once, and must not be counted as one left alone.
        left = left_failed(options.queue, options.since, limit)
        count = retry_failed(options.queue, options.since, options.dry_run, limit)
    except (LeekError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return UNHEALTHY
    text = f"{'would requeue' if options.dry_run else 'requeued'} {count} failed tasks"
    if left:
        text += (
            f"\n{'would leave' if options.dry_run else 'left'} {left} failed tasks alone: "
            f"each was requeued {limit} times already (--max-requeues {limit})"
        )
    data = {"ok": True, "count": count, "left": left, "max_requeues": limit}
    emit(options, text, {**data, "dry_run": options.dry_run})
    return OK


def run_purge(options: argparse.Namespace) -> int:
    """Print how many tasks and broker rows were deleted; UNHEALTHY on a bad option or a failure."""
    try:
        count = purge(options.older_than, statuses=options.status, dry_run=options.dry_run)
        brokers = forget_brokers(options.older_than, dry_run=options.dry_run)
    except (LeekError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return UNHEALTHY
    verb = "would delete" if options.dry_run else "deleted"
    emit(
        options,
        f"{verb} {count} tasks and {brokers} rows of gone brokers",
        {"ok": True, "count": count, "brokers": brokers, "dry_run": options.dry_run},
    )
    return OK
