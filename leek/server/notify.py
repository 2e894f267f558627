"""Telling people a task failed for good: the ON_FAILURE hooks, and the mail to ADMINS.

A task fails for good once, wherever its last attempt ended: on a worker (an
error, a time limit, a lost worker process), or at a broker's recovery, when
the attempt its broker's death cut short was its last (recovery.py). Each of
those calls the hooks of `failure_hooks` once, through `run_hooks`.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.mail import mail_admins
from django.db import connections
from django.urls import NoReverseMatch, reverse
from django.utils.module_loading import import_string

from .. import conf
from ..logs import task_extra
from ..threads import Named

if TYPE_CHECKING:
    from .rows import Outcome

logger = logging.getLogger(__name__)

#: A failure hook: hook(task_id, name, outcome), as ON_FAILURE documents.
Hook = Callable[[uuid.UUID, str, "Outcome"], object]


def failure_hooks() -> list[Hook]:
    """The ON_FAILURE hooks, then `notify_admins` when NOTIFY_ADMINS_ON_FAILURE."""
    values = conf.get_settings()
    hooks: list[Hook] = [import_string(path) for path in values["ON_FAILURE"]]
    if values["NOTIFY_ADMINS_ON_FAILURE"]:
        hooks.append(notify_admins)
    return hooks


def run_hooks(hooks: list[Hook], outcome: Outcome) -> None:
    """Run each hook for the final failure `outcome`; one that raises is
    logged, and the others run all the same."""
    for hook in hooks:
        try:
            hook(outcome.task_id, outcome.name, outcome)
        except Exception:
            logger.exception(
                "failure hook raised hook=%s task=%s",
                hook,
                outcome.task_id,
                extra=task_extra(
                    "hook_failed", outcome.task_id, outcome.name, attempt=outcome.attempt
                ),
            )


def run_hooks_later(outcomes: list[Outcome]) -> threading.Thread | None:
    """Run the failure hooks for `outcomes` on a thread of their own, so a slow
    mail server holds up no start or sweep; the thread, or None for no outcome."""
    if not outcomes:
        return None
    hooks = failure_hooks()

    def run() -> None:
        try:
            for outcome in outcomes:
                run_hooks(hooks, outcome)
        finally:
            connections.close_all()  # this thread's own, which ends here

    thread = Named(target=run, name="leek-failure-hooks", daemon=True)
    thread.start()
    return thread


def admin_path(task_id: uuid.UUID | str) -> str:
    """The path of the task's page in the admin, or "" when the admin is not routed."""
    try:
        return reverse("admin:leek_task_change", args=[str(task_id)])
    except NoReverseMatch:
        return ""


def notify_admins(task_id: uuid.UUID | str, name: str, outcome: Outcome) -> bool:
    """Email ADMINS (django.core.mail.mail_admins) about a task that failed for
    good, when LEEK["NOTIFY_ADMINS_ON_FAILURE"] is true and ADMINS is set.

    Returns True when a mail was sent. A mail that cannot be sent is logged,
    never raised, so a broken mail server does not stop a worker."""
    if not conf.get("NOTIFY_ADMINS_ON_FAILURE") or not settings.ADMINS:
        return False
    subject = " ".join(f"leek: task {name} failed: {outcome.exc_type or 'error'}".split())
    lines = [
        f"Task {name} ({task_id}) failed for good on attempt {outcome.attempt}.",
        "",
        f"{outcome.exc_type}: {outcome.exc_message}",
    ]
    path = admin_path(task_id)
    if path:
        lines += ["", f"In the admin: {path}"]
    if outcome.traceback:
        lines += ["", outcome.traceback.rstrip()]
    if outcome.stderr:
        lines += ["", "stderr:", outcome.stderr.rstrip()]
    try:
        mail_admins(subject[:200], "\n".join(lines) + "\n")
    except Exception:
        logger.exception(
            "failure mail not sent task=%s",
            task_id,
            extra=task_extra("notify_failed", task_id, name, attempt=outcome.attempt),
        )
        return False
    logger.info(
        "failure mailed to admins task=%s",
        task_id,
        extra=task_extra("admins_notified", task_id, name, attempt=outcome.attempt),
    )
    return True
