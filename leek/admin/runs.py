"""Runs of a task in the admin: its successes and failed attempts, as lists and inlines.

`ReadOnly` is the permission rule of every row a broker writes: viewable,
never added or edited by hand; "steer" (cancel, retry, run again) needs
``leek.change_task``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.safestring import SafeString

from ..models import FailedTask, SuccessTask
from .actions import requeue_tasks, retry_tasks
from .display import pre, seconds, task_link, time_column
from .paging import BigList, RecentValuesFilter

if TYPE_CHECKING:
    StackedInline = admin.StackedInline[Any, Any]
else:
    StackedInline = admin.StackedInline


class ReadOnly:
    """Rows written by brokers: viewable, never edited by hand."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_steer_permission(self, request: HttpRequest) -> bool:
        """May cancel, retry and requeue tasks."""
        return bool(request.user.has_perm("leek.change_task"))


class RunInline(ReadOnly, StackedInline):
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ["attempt", "id"]

    @admin.display(description="stdout")
    def stdout_text(self, obj: SuccessTask | FailedTask) -> SafeString | str:
        return pre(obj.stdout)

    @admin.display(description="stderr")
    def stderr_text(self, obj: SuccessTask | FailedTask) -> SafeString | str:
        return pre(obj.stderr)


class SuccessInline(RunInline):
    model = SuccessTask
    verbose_name_plural = "successful runs"
    fields = readonly_fields = (
        "attempt",
        "started_at",
        "finished_at",
        "duration_text",
        "result_text",
        "stdout_text",
        "stderr_text",
    )

    @admin.display(description="duration")
    def duration_text(self, obj: SuccessTask) -> str:
        return seconds(obj.duration)

    @admin.display(description="return value")
    def result_text(self, obj: SuccessTask) -> SafeString | str:
        return pre(obj.result_repr)


class FailureInline(RunInline):
    model = FailedTask
    verbose_name_plural = "failed attempts"
    fields = readonly_fields = (
        "attempt",
        "started_at",
        "failed_at",
        "error",
        "traceback_text",
        "stdout_text",
        "stderr_text",
        "final",
        "requeued_at",
    )

    @admin.display(description="error")
    def error(self, obj: FailedTask) -> str:
        return f"{obj.exc_type}: {obj.exc_message}"

    @admin.display(description="traceback")
    def traceback_text(self, obj: FailedTask) -> SafeString | str:
        return pre(obj.traceback)


@admin.register(SuccessTask)
class SuccessTaskAdmin(ReadOnly, BigList):
    list_display = [
        "id",
        "task_column",
        "name",
        "queue",
        "attempt",
        "started",
        "finished",
        "duration_text",
        "result_short",
    ]
    list_filter = [("name", RecentValuesFilter), ("finished_at", admin.DateFieldListFilter)]
    list_select_related = ["task"]
    search_fields = ["name", "result_repr"]
    search_help_text = "A task id, or words of the task's name or return value."
    ordering = ["-finished_at"]
    date_field = "finished_at"
    sortable_by = ["finished"]
    actions = [requeue_tasks]
    fields = readonly_fields = (
        "task_column",
        "name",
        "attempt",
        "started_at",
        "finished_at",
        "duration_text",
        "result_text",
        "stdout_text",
        "stderr_text",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[SuccessTask]:
        return super().get_queryset(request).defer("result", "task__payload")

    started = time_column("started_at", "started")
    finished = time_column("finished_at", "finished", day_of="started_at")

    @admin.display(description="task")
    def task_column(self, obj: SuccessTask) -> SafeString:
        return task_link(obj.task_id, str(obj.task_id)[:8])

    @admin.display(description="queue")
    def queue(self, obj: SuccessTask) -> str:
        return obj.task.queue

    @admin.display(description="duration")
    def duration_text(self, obj: SuccessTask) -> str:
        return seconds(obj.duration)

    @admin.display(description="return value")
    def result_short(self, obj: SuccessTask) -> str:
        text = obj.result_repr
        return text if len(text) <= 60 else text[:59] + "…"

    @admin.display(description="return value")
    def result_text(self, obj: SuccessTask) -> SafeString | str:
        return pre(obj.result_repr)

    stdout_text = RunInline.stdout_text
    stderr_text = RunInline.stderr_text


@admin.register(FailedTask)
class FailedTaskAdmin(ReadOnly, BigList):
    list_display = [
        "id",
        "task_column",
        "name",
        "queue",
        "attempt",
        "exc_type",
        "message",
        "failed",
        "final",
        "requeued",
    ]
    list_filter = [
        "final",
        ("name", RecentValuesFilter),
        ("exc_type", RecentValuesFilter),
        ("failed_at", admin.DateFieldListFilter),
    ]
    list_select_related = ["task"]
    search_fields = ["name", "exc_type", "exc_message"]
    search_help_text = "A task id, or words of the task's name or error."
    ordering = ["-failed_at"]
    date_field = "failed_at"
    sortable_by = ["failed"]
    actions = [retry_tasks, requeue_tasks]
    fields = readonly_fields = (
        "task_column",
        "name",
        "attempt",
        "started_at",
        "failed_at",
        "exc_type",
        "exc_message",
        "traceback_text",
        "stdout_text",
        "stderr_text",
        "final",
        "requeued_at",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[FailedTask]:
        return super().get_queryset(request).defer("task__payload")

    task_column = SuccessTaskAdmin.task_column
    failed = time_column("failed_at", "failed")
    requeued = time_column("requeued_at", "requeued", day_of="failed_at")
    queue = SuccessTaskAdmin.queue
    stdout_text = RunInline.stdout_text
    stderr_text = RunInline.stderr_text
    traceback_text = FailureInline.traceback_text

    @admin.display(description="message")
    def message(self, obj: FailedTask) -> str:
        text = obj.exc_message
        return text if len(text) <= 60 else text[:59] + "…"
