"""The admin's actions on the queue: cancel, retry, run again.

Each asks for confirmation on a page listing what it will touch, then acts
through the same calls as code does (`leek.client.cancel`, `leek.cli.repair.requeue`),
says how many tasks it changed, and writes an Event for the log.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse

from ..events import log_event
from ..models import FINISHED, Status, Task

#: Most tasks a confirmation page lists by name.
SHOWN = 100


def plural(count: int, word: str = "task") -> str:
    """`count` and `word`, plural unless the count is one: "1 task", "3 tasks"."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _confirm(
    modeladmin: admin.ModelAdmin[Any],
    request: HttpRequest,
    tasks: QuerySet[Any],
    *,
    action: str,
    title: str,
    verb: str,
    question: str,
    skipped: int,
    run: Callable[[list[uuid.UUID]], int],
) -> TemplateResponse | None:
    """The confirmation page, or, once confirmed, the action itself (None: back
    to the list with a message)."""
    ids = list(tasks.order_by().values_list("pk", flat=True))
    if request.POST.get("confirmed") == "yes":
        done = run(ids) if ids else 0
        note = f" ({plural(len(ids) - done)} had already moved on)" if done < len(ids) else ""
        modeladmin.message_user(
            request, f"{verb} {plural(done)}{note}.", messages.SUCCESS if done else messages.WARNING
        )
        if done:
            user = request.user.get_username() if request.user.is_authenticated else ""
            log_event(
                f"admin.{action}",
                f"{verb} {plural(done)} from the admin",
                actor=user,
                tasks=[str(i) for i in ids[:SHOWN]],
                count=done,
            )
        return None
    shown = list(
        tasks.order_by("-queued_at").only("id", "name", "queue", "status", "queued_at")[:SHOWN]
    )
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "opts": modeladmin.model._meta,
        "action": action,
        "verb": verb,
        "question": question.format(count=plural(len(ids))),
        "tasks": shown,
        "count": len(ids),
        "more": max(0, len(ids) - len(shown)),
        "skipped": skipped,
        "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
        "select_across": request.POST.get("select_across", "0"),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, "admin/leek/confirm_action.html", context)


@contextmanager
def broker_calls() -> Iterator[None]:
    """Close this thread's broker connection afterwards: the admin calls the
    broker rarely, often from a thread made for one request."""
    from ..client import connection

    try:
        yield
    finally:
        connection.close()


def _task_ids(queryset: QuerySet[Any]) -> QuerySet[Any]:
    """The Task rows a selection of tasks, successes or failures stands for."""
    if queryset.model is Task:
        return queryset
    return Task.objects.filter(pk__in=queryset.order_by().values("task_id"))


def _cancel(ids: list[uuid.UUID]) -> int:
    from ..client import cancel

    with broker_calls():
        return sum(1 for task_id in ids if cancel(task_id))


def _requeue(ids: list[uuid.UUID]) -> int:
    from ..cli.repair import requeue

    with broker_calls():
        return requeue(ids)


@admin.action(description="Cancel selected pending tasks", permissions=["steer"])
def cancel_tasks(
    modeladmin: admin.ModelAdmin[Any], request: HttpRequest, queryset: QuerySet[Any]
) -> TemplateResponse | None:
    tasks = _task_ids(queryset)
    pending = tasks.filter(status=Status.QUEUED)
    return _confirm(
        modeladmin,
        request,
        pending,
        action="cancel_tasks",
        title="Cancel pending tasks",
        verb="Cancelled",
        question="Cancel {count} waiting to run? Cancelled tasks never run.",
        skipped=tasks.count() - pending.count(),
        run=_cancel,
    )


@admin.action(description="Retry selected failed tasks", permissions=["steer"])
def retry_tasks(
    modeladmin: admin.ModelAdmin[Any], request: HttpRequest, queryset: QuerySet[Any]
) -> TemplateResponse | None:
    tasks = _task_ids(queryset)
    failed = tasks.filter(status=Status.FAILED)
    return _confirm(
        modeladmin,
        request,
        failed,
        action="retry_tasks",
        title="Retry failed tasks",
        verb="Requeued",
        question="Retry {count} that failed? Each runs again, its attempts counted from one.",
        skipped=tasks.count() - failed.count(),
        run=_requeue,
    )


@admin.action(description="Run selected finished tasks again", permissions=["steer"])
def requeue_tasks(
    modeladmin: admin.ModelAdmin[Any], request: HttpRequest, queryset: QuerySet[Any]
) -> TemplateResponse | None:
    tasks = _task_ids(queryset)
    finished = tasks.filter(status__in=FINISHED)
    return _confirm(
        modeladmin,
        request,
        finished,
        action="requeue_tasks",
        title="Run finished tasks again",
        verb="Requeued",
        question=(
            "Run {count} again? Each runs once more with the same arguments, its attempts "
            "counted from one."
        ),
        skipped=tasks.count() - finished.count(),
        run=_requeue,
    )
