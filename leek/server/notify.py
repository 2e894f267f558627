"""Email the site's ADMINS when a task fails for good."""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.mail import mail_admins
from django.urls import NoReverseMatch, reverse

from .. import conf

if TYPE_CHECKING:
    from .rows import Outcome

logger = logging.getLogger(__name__)


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
            "failure mail not sent task=%s", task_id, extra={"action": "notify_failed"}
        )
        return False
    logger.info("failure mailed to admins task=%s", task_id, extra={"action": "admins_notified"})
    return True
