"""The rows of chains, groups and chords: their push, and what each outcome does to them.

A push of steps writes every task in one transaction, the first steps queued
and the others waiting (`insert_steps`). Each outcome written in a batch is
followed here in that batch's transaction (`follow`, called by
Writes.write_outcomes), so a step's success and the release of the step after
it commit together, or neither does:

* a success releases its next step once every task that releases it has
  succeeded: a chain's next step at once, a chord's callback with its last
  member. On PostgreSQL the waiting row is locked first, so of two members'
  outcomes committed side by side the second sees the first and releases it;
  SQLite has one writer. The update takes only a waiting row, so a step is
  released once.
* a final failure fails its next step and every step after it, each with a
  FailedTask row naming the step that failed; they never run.

A step whose predecessor ended without an outcome (cancelled, or failed for
good as its broker died on its last attempt) is failed the same way by
`settle`, a broker duty.

The broker then dispatches what the batch released (Writes.committed).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..rows import Dialect, NewTask, Outcome, Ready
from .sql import STAMP, by_list

if TYPE_CHECKING:
    from ..links import Link
    from .batch import Writes

#: The exc_type of a step failed because a step before it failed for good.
EARLIER_STEP_FAILED = "leek.EarlierStepFailed"


def insert_steps(
    writes: Writes, cursor: Any, d: Dialect, tasks: Sequence[NewTask], links: Sequence[Link]
) -> list[Ready]:
    """Insert a push of steps with their links; the steps to run now, as Ready.

    A replayed push inserts nothing and links nothing: its steps may have run."""
    fresh = writes.insert_tasks(cursor, tasks)
    new = {r.id for r in fresh}
    rows = [
        (
            "waiting" if link.waiting else "queued",
            None if link.next_step is None else d.pk(link.next_step),
            None if link.chain is None else d.pk(link.chain),
            d.pk(task.id),
        )
        for task, link in zip(tasks, links, strict=True)
        if task.id in new
    ]
    if rows:
        cursor.executemany(
            d.sql("UPDATE leek_task SET status = %s, next_step = %s, chain = %s WHERE id = %s"),
            rows,
        )
    waiting = {t.id for t, link in zip(tasks, links, strict=True) if link.waiting}
    return [r for r in fresh if r.id not in waiting]


def follow(
    cursor: Any, d: Dialect, outcomes: Sequence[Outcome], owner: tuple[str, int]
) -> list[Ready]:
    """Release or fail the next steps of the tasks whose `outcomes` were just
    written; the steps released, claimed with `owner` (sql.stamp), to
    dispatch after the commit."""
    node = owner[0]
    ended = [o for o in outcomes if o.succeeded or o.final]
    if not ended:
        return []
    # Only a waiting row can be released or failed: while none waits (no
    # chain in flight), a probe of the status index, the same statement
    # whatever the batch, spares the lookup of every task's next step.
    cursor.execute("SELECT 1 FROM leek_task WHERE status = 'waiting' LIMIT 1")
    if cursor.fetchone() is None:
        return []
    keys = [d.pk(o.task_id) for o in ended]
    marks = ", ".join([d.ph] * len(keys))
    by_list(
        d,
        cursor,
        f"SELECT id, next_step FROM leek_task WHERE next_step IS NOT NULL AND id IN ({marks})",
        keys,
    )
    nexts = {d.read_uuid(i): d.read_uuid(n) for i, n in cursor.fetchall()}
    if not nexts:
        return []
    steps = sorted({nexts[o.task_id] for o in ended if o.succeeded and o.task_id in nexts})
    released = _release(cursor, d, steps, owner)
    for o in ended:
        if not o.succeeded and o.task_id in nexts:
            reason = _failed(o.task_id, o.exc_type, o.exc_message)
            _fail_after(cursor, d, reason, nexts[o.task_id], node)
    return released


def released_before(
    cursor: Any, d: Dialect, outcomes: Sequence[Outcome], owner: tuple[str, int]
) -> list[Ready]:
    """The steps that `outcomes`, written by an earlier try of their batch
    whose commit's answer was lost (outcomes.refuse), released then: queued
    under `owner` and never dispatched, as that try's commit was never seen
    (the writer writes in order, so no later batch has released them)."""
    keys = [d.pk(o.task_id) for o in outcomes if o.succeeded]
    if not keys:
        return []
    marks = ", ".join([d.ph] * len(keys))
    by_list(
        d,
        cursor,
        d.sql(
            "SELECT s.id, s.priority, s.queue, s.run_after FROM leek_task t "
            f"JOIN leek_task s ON s.id = t.next_step WHERE t.id IN ({marks}) "
            "AND s.status = 'queued' AND s.broker = %s AND s.epoch = %s"
        ),
        (*keys, *owner),
    )
    return [Ready(d.read_uuid(r[0]), r[1], r[2], d.read_time(r[3])) for r in cursor.fetchall()]


def _release(
    cursor: Any, d: Dialect, steps: list[uuid.UUID], owner: tuple[str, int]
) -> list[Ready]:
    """Queue each waiting step of `steps` whose every predecessor has
    succeeded, claimed by `owner` (a broker's stamp), which dispatches it (whichever broker
    took the push: a chord's members may end on several). A step the client
    spooled is no longer spooled, so no sweep claims it a second time."""
    if not steps:
        return []
    keys = [d.pk(s) for s in steps]
    marks = ", ".join(["%s"] * len(keys))
    if not d.sqlite:
        # Ordered, so two writers locking the same steps cannot deadlock.
        by_list(
            d,
            cursor,
            d.sql(f"SELECT id FROM leek_task WHERE id IN ({marks}) ORDER BY id FOR UPDATE"),
            keys,
        )
        cursor.fetchall()
    by_list(
        d,
        cursor,
        d.sql(
            f"UPDATE leek_task SET status = 'queued', {STAMP}, spooled = FALSE "
            f"WHERE id IN ({marks}) "
            "AND status = 'waiting' AND NOT EXISTS (SELECT 1 FROM leek_task p "
            "WHERE p.next_step = leek_task.id AND p.status <> 'succeeded') "
            "RETURNING id, priority, queue, run_after"
        ),
        (*owner, *keys),
    )
    return [Ready(d.read_uuid(r[0]), r[1], r[2], d.read_time(r[3])) for r in cursor.fetchall()]


def settle(cursor: Any, d: Dialect, node: str) -> int:
    """Fail the waiting steps whose predecessor ended without an outcome
    written here: cancelled, or failed for good as its broker died on its
    last attempt (recovery's cut); and give a waiting step whose
    predecessors have all succeeded, which a requeue can leave (`leek
    retry-failed` racing the success it waits for), to the brokers' sweep.
    How many steps were failed or given."""
    cursor.execute(
        "UPDATE leek_task SET status = 'queued', spooled = TRUE, broker = '' "
        "WHERE status = 'waiting' "
        "AND EXISTS (SELECT 1 FROM leek_task p WHERE p.next_step = leek_task.id) "
        "AND NOT EXISTS (SELECT 1 FROM leek_task p WHERE p.next_step = leek_task.id "
        "AND p.status <> 'succeeded')"
    )
    given = max(int(cursor.rowcount), 0)
    cursor.execute(
        "SELECT p.id, p.status, w.id FROM leek_task w JOIN leek_task p ON p.next_step = w.id "
        "WHERE w.status = 'waiting' AND p.status IN ('failed', 'cancelled')"
    )
    found = cursor.fetchall()
    failed = 0
    for before, status, step in found:
        before = d.read_uuid(before)
        if status == "cancelled":
            reason = f"an earlier step was cancelled: {before}"
        else:
            cursor.execute(
                d.sql(
                    "SELECT exc_type, exc_message FROM leek_failedtask WHERE task_id = %s "
                    "ORDER BY id DESC LIMIT 1"
                ),
                (d.pk(before),),
            )
            row = cursor.fetchone()
            reason = _failed(before, *(row or ("", "")))
        failed += _fail_after(cursor, d, reason, d.read_uuid(step), node)
    return failed + given


def _failed(task_id: uuid.UUID, exc_type: str, exc_message: str) -> str:
    """What a step says when `task_id`, a step before it, failed for good."""
    return f"an earlier step failed: {task_id} ({exc_type}: {exc_message})"


def _fail_after(cursor: Any, d: Dialect, reason: str, step: uuid.UUID, node: str) -> int:
    """Fail `step` and the steps after it, which wait: they will never run.
    How many were failed."""
    now = time.time()
    seen: set[uuid.UUID] = set()
    count = 0
    at: uuid.UUID | None = step
    while at is not None and at not in seen:
        seen.add(at)
        cursor.execute(
            d.sql(
                "UPDATE leek_task SET status = 'failed', finished_at = %s "
                "WHERE id = %s AND status = 'waiting' RETURNING name, next_step"
            ),
            (d.time(now), d.pk(at)),
        )
        row = cursor.fetchone()
        if row is None:
            break  # failed already, by another member of its chord
        cursor.execute(
            d.sql(
                "INSERT INTO leek_failedtask (task_id, name, attempt, started_at, failed_at, "
                "exc_type, exc_message, traceback, final, requeued_at, stdout, stderr, broker) "
                "VALUES (%s, %s, 0, NULL, %s, %s, %s, '', TRUE, NULL, '', '', %s)"
            ),
            (d.pk(at), row[0], d.time(now), EARLIER_STEP_FAILED, reason, node),
        )
        count += 1
        at = None if row[1] is None else d.read_uuid(row[1])
    return count
