"""The queue in the Django admin: tasks, their runs, brokers, schedules, events.

Tasks are read-only here except through the actions (cancel, retry, run again)
and the "Create a task" page; the dashboard and that page hang off the Task
admin's URLs (`admin:leek_task_dashboard`, `admin:leek_task_create`). Lists
never run a full COUNT(*) (see admin_paging.py), and the payload is never shown.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from . import admin_views, conf
from .admin_actions import cancel_tasks, requeue_tasks, retry_tasks
from .admin_display import badge, between, pre, seconds, task_link, time_column
from .admin_paging import (
    SEARCH_WINDOW,
    EstimatedPaginator,
    OneReadChangeList,
    RecentValuesFilter,
    latest,
    search_by_id,
)
from .models import BrokerNode, Event, FailedTask, PeriodicTask, SuccessTask, Task

if TYPE_CHECKING:
    ModelAdmin = admin.ModelAdmin[Any]
    StackedInline = admin.StackedInline[Any, Any]
else:
    ModelAdmin, StackedInline = admin.ModelAdmin, admin.StackedInline

TASK_FIELDS = ("id", "name", "status_badge", "queue", "priority", "broker", "code_version",
               "spooled")  # fmt: skip
TIMING_FIELDS = ("queued_at", "run_after", "started_at", "finished_at", "duration", "attempts",
                 "max_retries", "timeout")  # fmt: skip

if admin.site.index_template is None:
    admin.site.index_template = "admin/leek/index.html"


class ReadOnly:
    """Rows written by brokers: viewable, never edited by hand."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_steer_permission(self, request: HttpRequest) -> bool:
        """May cancel, retry and requeue tasks."""
        return bool(request.user.has_perm("leek.change_task"))


class BigList(ModelAdmin):
    """Lists of millions of rows: no full COUNT(*), no facets, and a search that
    reads a task id as one, and looks for words among the latest rows by
    `date_field` unless the list is filtered by that date."""

    paginator = EstimatedPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 50
    date_field = "queued_at"
    id_field: str | None = "task_id"
    search_window = SEARCH_WINDOW

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[OneReadChangeList]:
        return OneReadChangeList

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Any],
                           search_term: str) -> tuple[QuerySet[Any], bool]:  # fmt: skip
        found = search_by_id(queryset, search_term, self.id_field) if self.id_field else None
        if found is not None:
            return found, False
        if search_term.strip() and not any(k.startswith(self.date_field) for k in request.GET):
            queryset = latest(queryset, self.date_field, self.search_window)
        return super().get_search_results(request, queryset, search_term)


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
    fields = readonly_fields = ("attempt", "started_at", "finished_at", "duration_text",
                                "result_text", "stdout_text", "stderr_text")  # fmt: skip

    @admin.display(description="duration")
    def duration_text(self, obj: SuccessTask) -> str:
        return seconds(obj.duration)

    @admin.display(description="return value")
    def result_text(self, obj: SuccessTask) -> SafeString | str:
        return pre(obj.result_repr)


class FailureInline(RunInline):
    model = FailedTask
    verbose_name_plural = "failed attempts"
    fields = readonly_fields = ("attempt", "started_at", "failed_at", "error", "traceback_text",
                                "stdout_text", "stderr_text", "final", "requeued_at")  # fmt: skip

    @admin.display(description="error")
    def error(self, obj: FailedTask) -> str:
        return f"{obj.exc_type}: {obj.exc_message}"

    @admin.display(description="traceback")
    def traceback_text(self, obj: FailedTask) -> SafeString | str:
        return pre(obj.traceback)


@admin.register(Task)
class TaskAdmin(ReadOnly, BigList):
    list_display = ["short_id", "name", "queue", "status_badge", "attempts", "queued",
                    "started", "finished", "duration", "broker"]  # fmt: skip
    list_display_links = ["short_id", "name"]
    list_filter = [
        ("status", admin.ChoicesFieldListFilter), ("queue", RecentValuesFilter),
        ("name", RecentValuesFilter), ("queued_at", admin.DateFieldListFilter),
    ]  # fmt: skip
    search_fields = ["name", "args_repr"]
    search_help_text = ("A task id, or words of its name or arguments (among the latest "
                        "100,000 tasks unless a date is chosen).")  # fmt: skip
    ordering = ["-queued_at"]
    id_field = "pk"
    sortable_by = ["queued"]
    actions = [cancel_tasks, retry_tasks, requeue_tasks]
    inlines = [SuccessInline, FailureInline]
    change_list_template = "admin/leek/task/change_list.html"
    change_form_template = "admin/leek/task/change_form.html"
    fieldsets = [
        (None, {"fields": TASK_FIELDS}),
        ("Arguments", {"fields": ["arguments"]}),
        ("Progress", {"fields": ["progress_bar"]}),
        ("Outcome", {"fields": ["result", "error", "stdout", "stderr"]}),
        ("Timing", {"fields": TIMING_FIELDS}),
    ]
    readonly_fields = [*TASK_FIELDS, "arguments", "progress_bar", "result", "error", "stdout",
                       "stderr", *TIMING_FIELDS]  # fmt: skip

    def get_queryset(self, request: HttpRequest) -> QuerySet[Task]:
        return super().get_queryset(request).defer("payload")

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("dashboard/", view(self.dashboard_view), name="leek_task_dashboard"),
            path("create/", view(self.create_view), name="leek_task_create"),
            *super().get_urls(),
        ]

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        return admin_views.dashboard(request, self.admin_site)

    def create_view(self, request: HttpRequest) -> HttpResponse:
        return admin_views.create_task(request, self.admin_site)

    queued = time_column("queued_at", "queued")
    started = time_column("started_at", "started", day_of="queued_at")
    finished = time_column("finished_at", "finished", day_of="queued_at")

    @admin.display(description="id")
    def short_id(self, obj: Task) -> str:
        return str(obj.id)[:8]

    @admin.display(description="status")
    def status_badge(self, obj: Task) -> SafeString:
        return badge(obj.status)

    @admin.display(description="duration")
    def duration(self, obj: Task) -> str:
        return between(obj.started_at, obj.finished_at)

    @admin.display(description="arguments")
    def arguments(self, obj: Task) -> SafeString | str:
        return pre(obj.args_repr)

    @admin.display(description="progress")
    def progress_bar(self, obj: Task) -> SafeString | str:
        if obj.progress is None:
            return obj.progress_note or "-"
        return format_html(
            '<progress max="100" value="{}" style="width:16em"></progress> {}% {}',
            obj.progress,
            f"{obj.progress:g}",
            obj.progress_note,
        )

    def _last_run(self, obj: Task) -> SuccessTask | FailedTask | None:
        runs: list[SuccessTask | FailedTask] = [
            *obj.successes.order_by("-id")[:1],
            *obj.failures.order_by("-id")[:1],
        ]
        return max(runs, key=lambda r: (r.attempt, r.finished_at if isinstance(r, SuccessTask)
                                        else r.failed_at), default=None)  # fmt: skip

    @admin.display(description="return value")
    def result(self, obj: Task) -> SafeString | str:
        run = obj.successes.order_by("-id").first()
        return pre(run.result_repr) if run else "-"

    @admin.display(description="error")
    def error(self, obj: Task) -> SafeString | str:
        failure = obj.failures.order_by("-id").first()
        if failure is None:
            return "-"
        retried = " (retried)" if obj.status != "failed" else ""
        return pre(f"attempt {failure.attempt}{retried}: {failure.exc_type}: "
                   f"{failure.exc_message}")  # fmt: skip

    @admin.display(description="stdout (last run)")
    def stdout(self, obj: Task) -> SafeString | str:
        run = self._last_run(obj)
        return pre(run.stdout) if run else "-"

    @admin.display(description="stderr (last run)")
    def stderr(self, obj: Task) -> SafeString | str:
        run = self._last_run(obj)
        return pre(run.stderr) if run else "-"


@admin.register(SuccessTask)
class SuccessTaskAdmin(ReadOnly, BigList):
    list_display = ["id", "task_column", "name", "queue", "attempt", "started", "finished",
                    "duration_text", "result_short"]  # fmt: skip
    list_filter = [("name", RecentValuesFilter), ("finished_at", admin.DateFieldListFilter)]
    list_select_related = ["task"]
    search_fields = ["name", "result_repr"]
    search_help_text = "A task id, or words of the task's name or return value."
    ordering = ["-finished_at"]
    date_field = "finished_at"
    sortable_by = ["finished"]
    actions = [requeue_tasks]
    fields = readonly_fields = (
        "task_column", "name", "attempt", "started_at", "finished_at", "duration_text",
        "result_text", "stdout_text", "stderr_text",
    )  # fmt: skip

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
    list_display = ["id", "task_column", "name", "queue", "attempt", "exc_type", "message",
                    "failed", "final", "requeued"]  # fmt: skip
    list_filter = ["final", ("name", RecentValuesFilter), ("exc_type", RecentValuesFilter),
                   ("failed_at", admin.DateFieldListFilter)]  # fmt: skip
    list_select_related = ["task"]
    search_fields = ["name", "exc_type", "exc_message"]
    search_help_text = "A task id, or words of the task's name or error."
    ordering = ["-failed_at"]
    date_field = "failed_at"
    sortable_by = ["failed"]
    actions = [retry_tasks, requeue_tasks]
    fields = readonly_fields = ("task_column", "name", "attempt", "started_at", "failed_at",
                                "exc_type", "exc_message", "traceback_text", "stdout_text",
                                "stderr_text", "final", "requeued_at")  # fmt: skip

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


@admin.register(BrokerNode)
class BrokerNodeAdmin(ReadOnly, ModelAdmin):
    list_display = ["name", "hostname", "alive", "healthy", "workers_text", "handled",
                    "heartbeat_at", "started_at", "version", "code_version", "pid",
                    "note"]  # fmt: skip
    ordering = ["name"]

    @admin.display(description="alive", boolean=True)
    def alive(self, obj: BrokerNode) -> bool:
        age = (timezone.now() - obj.heartbeat_at).total_seconds()
        return not obj.stopped and age <= float(conf.get("HEARTBEAT_TIMEOUT"))

    @admin.display(description="workers alive")
    def workers_text(self, obj: BrokerNode) -> str:
        return f"{obj.workers_alive}/{obj.workers}"


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(ModelAdmin):
    list_display = ["name", "task", "cron", "every", "queue", "enabled", "last_run_at",
                    "next_run_at"]  # fmt: skip
    list_filter = ["enabled", "queue"]
    search_fields = ["name", "task"]
    readonly_fields = ["from_settings", "last_run_at", "next_run_at"]


@admin.register(Event)
class EventAdmin(ReadOnly, BigList):
    list_display = ["created", "kind", "message", "actor"]
    list_filter = [("kind", RecentValuesFilter), ("created_at", admin.DateFieldListFilter)]
    search_fields = ["kind", "message", "actor"]
    search_help_text = "Words of the event's kind, message or actor."
    ordering = ["-created_at"]
    date_field = "created_at"
    id_field = None
    sortable_by = ["created"]
    fields = readonly_fields = ("created_at", "kind", "message", "actor", "data_text")
    created = time_column("created_at", "created")

    @admin.display(description="data")
    def data_text(self, obj: Event) -> SafeString | str:
        return pre(json.dumps(obj.data, indent=2, sort_keys=True)) if obj.data else "-"
