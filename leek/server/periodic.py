"""Periodic tasks: PeriodicTask rows pushed on a cron expression or a fixed interval.

Rows come from ``LEEK["SCHEDULE"]`` (synced at broker start, ``from_settings``)
and from the admin. Every broker reads the rows about once a second and keeps
``next_run_at`` right: it is computed for a new row, recomputed when a row's
schedule changes, and cleared while a row is disabled.

A run is claimed with a conditional update of its row (`Store.periodic.claim`):
last_run_at and next_run_at move on only while next_run_at is still the due
time and the schedule is as read, in one transaction of the store's together
with the insert of its task. So when several brokers share a database exactly
one of them wins each run, and a claimed run always has its task committed.
Runs are claimed up to LOOKAHEAD seconds before they are due and wait in the
delayed heap, so they start on time.

Runs missed while no broker was up follow the row's ``catch_up``: run once,
or skip to the next time in the future. Schedules themselves (cron
expressions, read in Django's TIME_ZONE, and intervals) are schedules.py's.

A row runs only a task that leek.allowlist allows (its own SCHEDULE entry, a
registered ``@leek.task``, a path of PERIODIC_ALLOWED), checked before
anything of the path is imported: any other row, however it was written, is
refused, logged to ``leek.security``, recorded as a ``periodic.refused`` Event
once per broker, and gets no next run until its task is changed.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db import connection
from django.utils.module_loading import import_string

from .. import conf
from ..allowlist import discover_tasks, periodic_refusal
from ..calls import run_path  # also importable here: stored rows name this path
from ..ids import new_task_id
from ..logs import task_extra
from ..protocol.payload import dump_task
from ..schedules import Schedule, parse_entries
from .groupcommit import DATABASE_ERRORS
from .rows import Dialect, NewTask, Ready
from .store import Store
from .store.sql import PERIODIC_COLUMNS

logger = logging.getLogger(__name__)
security = logging.getLogger("leek.security")

#: Seconds before its time a run is claimed and handed to the delayed heap.
LOOKAHEAD = 1.0
#: Seconds between reads of the PeriodicTask rows.
RELOAD = 1.0
#: A run claimed more than this many seconds late was missed (catch_up decides).
MISSED_AFTER = 5.0

#: What pauses the periodic tasks until the database answers again.
TICK_ERRORS: tuple[type[BaseException], ...] = (*DATABASE_ERRORS, TimeoutError)
#: Seconds a write of the periodic tasks waits for its commit.
WRITE_TIMEOUT = 30.0


@dataclass(slots=True)
class Row:
    """A PeriodicTask row as last read; `*_raw` are the values as the database has them."""

    id: int
    name: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    cron: str
    every: float | None
    queue: str
    priority: int
    enabled: bool
    catch_up: bool
    last_run_at: float | None
    next_run_at: float | None
    next_raw: Any = None
    schedule: Schedule | None = field(default=None)

    @property
    def fingerprint(self) -> tuple[str, float | None, bool]:
        return self.cron, self.every, self.enabled


class Periodic:
    """Keeps the PeriodicTask rows' times right and pushes their runs (a broker duty)."""

    def __init__(self, store: Store, route: Callable[[list[Ready]], None]) -> None:
        settings = conf.get_settings()
        self.store = store
        self.route = route
        self.schedule: Mapping[str, Any] = settings["SCHEDULE"] or {}
        self.max_retries = int(settings["MAX_RETRIES"])
        self.code_version = str(settings["CODE_VERSION"])[:64]
        self.rows: dict[int, Row] = {}
        self.fired = 0
        self._synced = False
        self._read_at = -math.inf
        self._stale = True
        self._seen: dict[int, tuple[str, float | None, bool]] = {}
        self._reported: set[tuple[int, str]] = set()
        self._refused: set[tuple[int, str]] = set()
        self._scheduled: dict[str, str] = {}
        self._last_error = ""

    def tick(self) -> None:
        """Sync the settings once, re-read the rows every RELOAD seconds, claim due runs."""
        try:
            if not self._synced:
                self.sync()
                self._synced = True
            now = time.time()
            if self._stale or now - self._read_at >= RELOAD:
                self.reload(now)
            for row in list(self.rows.values()):
                self._fire_due(row, now)
        except TICK_ERRORS as exc:
            message = f"{type(exc).__name__}: {exc}"
            if message != self._last_error:
                logger.error(
                    "periodic tasks paused error=%s", message, extra={"action": "periodic_failed"}
                )
            self._last_error = message
            self._stale = True
            connection.close()
            return
        self._last_error = ""

    # -- settings -----------------------------------------------------------

    def sync(self) -> None:
        """Write LEEK["SCHEDULE"] into PeriodicTask rows marked from_settings;
        delete the from_settings rows whose name left the settings."""
        self._discover()
        entries, errors = parse_entries(self.schedule)
        self._scheduled = {name: values["task"] for name, values in entries.items()}
        for message in errors:
            logger.error("%s; it is not scheduled", message, extra={"action": "schedule_invalid"})
        for name, values in entries.items():
            try:
                import_string(values["task"])
            except ImportError as exc:
                logger.warning(
                    "periodic task %s: cannot import %s now: %s",
                    name,
                    values["task"],
                    exc,
                    extra={"action": "schedule_import"},
                )
        keep = list(entries) + [str(n) for n in self.schedule if str(n) not in entries]

        self.store.periodic.sync(entries, keep).wait(WRITE_TIMEOUT)
        self._stale = True
        if entries or errors:
            logger.info(
                "periodic tasks synced from settings count=%s invalid=%s",
                len(entries),
                len(errors),
                extra={"action": "schedule_synced"},
            )

    def _discover(self) -> None:
        """Register the @leek.task functions of the installed apps' tasks modules."""
        try:
            discover_tasks()
        except Exception as exc:  # a site's tasks module that fails to import
            logger.error(
                "the tasks modules of the installed apps did not import: %s: %s; periodic "
                "tasks naming their tasks are refused",
                type(exc).__name__,
                exc,
                extra={"action": "periodic_discovery_failed"},
            )

    # -- rows ---------------------------------------------------------------

    def reload(self, now: float) -> None:
        """Read every row; give new, changed and re-enabled rows their next time."""
        d = self.store.dialect
        fetched = self.store.periodic.rows()
        rows: dict[int, Row] = {}
        fixes: list[tuple[Row, float | None]] = []
        for raw in fetched:
            row = _row(raw, d)
            rows[row.id] = row
            changed = self._seen.get(row.id, row.fingerprint) != row.fingerprint
            self._seen[row.id] = row.fingerprint
            if not row.enabled:
                if row.next_run_at is not None:
                    fixes.append((row, None))
                continue
            refusal = periodic_refusal(row.name, row.task, row.args, self._scheduled)
            if refusal:
                self._refuse(row, refusal)
                if row.next_run_at is not None:
                    fixes.append((row, None))
                continue
            try:
                row.schedule = Schedule.parse(row.cron, row.every)
            except ValueError as exc:
                self._report(row, str(exc))
                continue
            if changed or not self._consistent(row, now):
                nxt = row.schedule.after(now)
                if changed or nxt != row.next_run_at:
                    fixes.append((row, nxt))
        self.rows = rows
        for gone in set(self._seen) - set(rows):
            del self._seen[gone]
        self._read_at, self._stale = now, False
        if fixes:
            self._set_next(fixes)

    def _consistent(self, row: Row, now: float) -> bool:
        """Whether next_run_at is the next time of the row's schedule as it is now."""
        nxt, schedule = row.next_run_at, row.schedule
        if nxt is None or schedule is None:
            return False
        since = max(now, row.last_run_at or now)
        if schedule.every is not None:
            return nxt <= since + schedule.every + 0.001
        if schedule.after(nxt - 0.5) != nxt:
            return False  # not a time of this cron expression
        return nxt <= now or nxt == schedule.after(since)

    def _report(self, row: Row, message: str) -> None:
        key = (row.id, f"{row.cron}|{row.every}")
        if key not in self._reported:
            self._reported.add(key)
            logger.error(
                "periodic task %s has a bad schedule: %s",
                row.name,
                message,
                extra={"action": "schedule_invalid"},
            )

    def _refuse(self, row: Row, reason: str) -> None:
        """Log and record, once per row and task, that `row` does not run."""
        key = (row.id, row.task)
        if key in self._refused:
            return
        security.error(
            "periodic task refused name=%s task=%s reason=%s",
            row.name,
            row.task,
            reason,
            extra={"action": "periodic_refused"},
        )
        self.store.periodic.refused(row.id, row.name, row.task, reason).wait(WRITE_TIMEOUT)
        self._refused.add(key)

    def _set_next(self, fixes: list[tuple[Row, float | None]]) -> None:
        changes = [(row.id, row.next_raw, nxt) for row, nxt in fixes]
        written = self.store.periodic.set_next(changes).wait(WRITE_TIMEOUT)
        for (row, nxt), ok in zip(fixes, written, strict=True):
            if ok:
                row.next_run_at, row.next_raw = nxt, self.store.dialect.time(nxt)
            else:
                self._stale = True

    # -- runs ---------------------------------------------------------------

    def _fire_due(self, row: Row, now: float) -> None:
        for _ in range(100):  # bounded: a short interval can have a few runs in LOOKAHEAD
            if (
                row.schedule is None
                or not row.enabled
                or row.next_run_at is None
                or row.next_run_at > now + LOOKAHEAD
            ):
                return
            if not self._claim(row, now):
                self._stale = True
                return

    def _claim(self, row: Row, now: float) -> bool:
        """Claim the run due at row.next_run_at and insert its task; False when
        another broker claimed it first or the row changed."""
        due, schedule = row.next_run_at, row.schedule
        if due is None or schedule is None:
            return False
        nxt = schedule.after(due, anchor=due)
        if nxt is not None and nxt <= now:  # runs were missed: resume in the future
            nxt = schedule.after(now, anchor=due)
        missed = due < now - MISSED_AFTER
        run = row.catch_up or not missed
        task = self._task(row, due, now) if run else None
        d = self.store.dialect
        claim = self.store.periodic.claim(
            row.id, (row.next_raw, row.cron, row.every), due, nxt, task
        )

        def late(ready: list[Ready] | None, error: BaseException | None) -> None:
            if ready:  # committed after the wait below gave up: its task is ours to run
                logger.info(
                    "periodic task pushed after the claim's wait name=%s task=%s due=%s",
                    row.name,
                    row.task,
                    _iso(due),
                    extra=task_extra("periodic_pushed", ready[0].id, row.task, row.queue),
                )
                self.route(ready)

        ready = claim.wait(float(conf.get("WRITE_WAIT")), late=late)
        if ready is None:
            return False
        row.next_run_at, row.next_raw = nxt, d.time(nxt)
        if run:
            row.last_run_at = due
            self.fired += 1
            logger.info(
                "periodic task pushed name=%s task=%s due=%s late=%.3fs",
                row.name,
                row.task,
                _iso(due),
                max(0.0, now - due),
                extra=task_extra("periodic_pushed", task.id if task else None, row.task, row.queue),
            )
            self.route(ready)
        else:
            logger.info(
                "periodic run skipped name=%s due=%s (catch_up is off)",
                row.name,
                _iso(due),
                extra={"action": "periodic_skipped"},
            )
        return True

    def _task(self, row: Row, due: float, now: float) -> NewTask:
        return NewTask(
            id=new_task_id(),
            name=row.task[:255],
            queue=row.queue[:64],
            priority=row.priority,
            payload=dump_task(run_path, (row.task, *row.args), dict(row.kwargs)),
            args_repr=_describe(tuple(row.args), row.kwargs),
            max_retries=self.max_retries,
            timeout=None,
            run_after=due if due > now else None,
            code_version=self.code_version,
        )


def _row(raw: tuple[Any, ...], d: Dialect) -> Row:
    values = dict(zip(PERIODIC_COLUMNS, raw, strict=True))
    args, kwargs = (
        json.loads(v) if isinstance(v, str | bytes) else v
        for v in (values["args"], values["kwargs"])
    )
    return Row(
        id=int(values["id"]),
        name=str(values["name"]),
        task=str(values["task"]),
        args=list(args or []),
        kwargs=dict(kwargs or {}),
        cron=str(values["cron"] or ""),
        every=None if values["every"] is None else float(values["every"]),
        queue=str(values["queue"]),
        priority=int(values["priority"]),
        enabled=bool(values["enabled"]),
        catch_up=bool(values["catch_up"]),
        last_run_at=d.read_time(values["last_run_at"]),
        next_run_at=d.read_time(values["next_run_at"]),
        next_raw=values["next_run_at"],
    )


def _describe(args: tuple[Any, ...], kwargs: dict[str, Any], limit: int = 2000) -> str:
    text = ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()
