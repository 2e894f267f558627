"""The queue in the Django admin: tasks, their runs, brokers, schedules, events.

This module registers the ModelAdmins; Django's admin autodiscovery imports it.
Tasks are read-only here except through the actions (cancel, retry, run again)
and the "Create a task" page; the dashboard and that page hang off the Task
admin's URLs (`admin:leek_task_dashboard`, `admin:leek_task_create`). The
payload is never shown. A task is deleted only once it has finished: a queued
or running one may be running on a broker, whose outcome needs the row. The
package's other modules:

* `actions`: cancel, retry and run again, each after a confirmation page;
* `dashboard`: the task dashboard;
* `create`: the "Create a task" page;
* `periodic`: the periodic task form, which takes only allowed tasks;
* `runs`: the successes and failed attempts of tasks, as lists and inlines;
* `paging`: lists that never run a full COUNT(*) on tables of millions of rows;
* `chains`: the steps of a chain, group or chord on each of its tasks' pages;
* `display`: status badges, compact times, durations, text.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.db.models.functions import Now
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from .. import conf, queues
from ..events import log_event
from ..models import (
    FINISHED,
    BrokerNode,
    Event,
    FailedTask,
    PeriodicTask,
    QueueState,
    SuccessTask,
    Task,
)
from . import create, dashboard
from .actions import SHOWN, cancel_tasks, plural, requeue_tasks, retry_tasks
from .chains import steps_table
from .display import badge, between, pre, time_column
from .paging import BigList, RecentValuesFilter
from .periodic import PeriodicTaskForm
from .runs import FailureInline, ReadOnly, SuccessInline

if TYPE_CHECKING:
    ModelAdmin = admin.ModelAdmin[Any]
else:
    ModelAdmin = admin.ModelAdmin

TASK_FIELDS = (
    "id",
    "name",
    "status_badge",
    "queue",
    "priority",
    "broker",
    "code_version",
    "spooled",
    "key",
    "key_running",
)
TIMING_FIELDS = (
    "queued_at",
    "run_after",
    "expires_at",
    "started_at",
    "finished_at",
    "duration",
    "attempts",
    "max_retries",
    "timeout",
    "rate_limit",
)

if admin.site.index_template is None:
    admin.site.index_template = "admin/leek/index.html"


@admin.register(Task)
class TaskAdmin(ReadOnly, BigList):
    list_display = [
        "short_id",
        "name",
        "queue",
        "status_badge",
        "attempts",
        "queued",
        "started",
        "finished",
        "duration",
        "broker",
    ]
    list_display_links = ["short_id", "name"]
    list_filter = [
        ("status", admin.ChoicesFieldListFilter),
        ("queue", RecentValuesFilter),
        ("name", RecentValuesFilter),
        ("queued_at", admin.DateFieldListFilter),
    ]
    search_fields = ["name", "args_repr"]
    search_help_text = (
        "A task id, or words of its name or arguments (among the latest "
        "100,000 tasks unless a date is chosen)."
    )
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
        ("Chain", {"fields": ["steps"]}),
        ("Outcome", {"fields": ["result", "error", "stdout", "stderr"]}),
        ("Timing", {"fields": TIMING_FIELDS}),
    ]
    readonly_fields = [
        *TASK_FIELDS,
        "arguments",
        "progress_bar",
        "steps",
        "result",
        "error",
        "stdout",
        "stderr",
        *TIMING_FIELDS,
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Task]:
        return super().get_queryset(request).defer("payload")

    def get_deleted_objects(
        self, objs: Any, request: HttpRequest
    ) -> tuple[list[Any], dict[str, int], set[str], list[Any]]:
        """Django's list of what a deletion removes, with every unfinished task
        among `objs` listed as protected: the delete action and the delete
        page then refuse, and say why."""
        deleted, counts, perms, protected = super().get_deleted_objects(objs, request)
        if isinstance(objs, QuerySet):
            pending = objs.exclude(status__in=FINISHED)
            count = pending.count()
            unfinished = list(pending.only("id", "name", "status")[:SHOWN]) if count else []
        else:
            unfinished = [task for task in objs if task.status not in FINISHED]
            count = len(unfinished)
        if count:
            messages.error(
                request,
                f"{plural(count)} {'has' if count == 1 else 'have'} not "
                "finished and cannot be deleted: a queued or running task may be running on a "
                "broker, which records its outcome against the row. Cancel queued tasks first, "
                "or wait until they finish.",
            )
            protected = [*protected, *(f"{task} is {task.status}" for task in unfinished)]
        return deleted, counts, perms, protected

    def delete_model(self, request: HttpRequest, obj: Task) -> None:
        """Delete the task if it is still finished (a requeue may have come between)."""
        Task.objects.filter(pk=obj.pk, status__in=FINISHED).delete()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        """Delete the selected tasks that are still finished."""
        queryset.filter(status__in=FINISHED).delete()

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("dashboard/", view(self.dashboard_view), name="leek_task_dashboard"),
            path("create/", view(self.create_view), name="leek_task_create"),
            path("dashboard/queue/", view(self.queue_view), name="leek_task_queue"),
            *super().get_urls(),
        ]

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        return dashboard.dashboard(request, self.admin_site)

    def queue_view(self, request: HttpRequest) -> HttpResponse:
        return dashboard.pause_or_resume(request)

    def create_view(self, request: HttpRequest) -> HttpResponse:
        return create.create_task(request, self.admin_site)

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
        """The task's last run, successful or failed: the highest attempt, the
        later end among runs of the same attempt; None before any run."""
        runs: list[SuccessTask | FailedTask] = [
            *obj.successes.order_by("-id")[:1],
            *obj.failures.order_by("-id")[:1],
        ]
        return max(
            runs,
            key=lambda r: (r.attempt, r.finished_at if isinstance(r, SuccessTask) else r.failed_at),
            default=None,
        )

    @admin.display(description="steps")
    def steps(self, obj: Task) -> SafeString | str:
        return steps_table(obj)

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
        return pre(f"attempt {failure.attempt}{retried}: {failure.exc_type}: {failure.exc_message}")

    @admin.display(description="stdout (last run)")
    def stdout(self, obj: Task) -> SafeString | str:
        run = self._last_run(obj)
        return pre(run.stdout) if run else "-"

    @admin.display(description="stderr (last run)")
    def stderr(self, obj: Task) -> SafeString | str:
        run = self._last_run(obj)
        return pre(run.stderr) if run else "-"


@admin.register(BrokerNode)
class BrokerNodeAdmin(ReadOnly, ModelAdmin):
    list_display = [
        "name",
        "hostname",
        "alive",
        "healthy",
        "workers_text",
        "lanes",
        "handled",
        "heartbeat_at",
        "started_at",
        "version",
        "code_version",
        "pid",
        "note",
    ]
    ordering = ["name"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[BrokerNode]:
        rows: QuerySet[BrokerNode] = super().get_queryset(request)
        return rows.annotate(db_now=Now())

    @admin.display(description="alive", boolean=True)
    def alive(self, obj: BrokerNode) -> bool:
        now = getattr(obj, "db_now", None) or timezone.now()  # the database's clock
        age = (now - obj.heartbeat_at).total_seconds()
        return not obj.stopped and age <= float(conf.get("HEARTBEAT_TIMEOUT"))

    @admin.display(description="workers alive")
    def workers_text(self, obj: BrokerNode) -> str:
        return f"{obj.workers_alive}/{obj.workers}"

    @admin.display(description="queues")
    def lanes(self, obj: BrokerNode) -> str:
        """Each queue's workers and pool; "other queues" is the default lane."""
        return dashboard.lanes(obj)


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(ModelAdmin):
    list_display = [
        "name",
        "task",
        "cron",
        "every",
        "queue",
        "enabled",
        "last_run_at",
        "next_run_at",
    ]
    list_filter = ["enabled", "queue"]
    search_fields = ["name", "task"]
    readonly_fields = ["from_settings", "last_run_at", "next_run_at"]
    form = PeriodicTaskForm

    def save_model(self, request: HttpRequest, obj: PeriodicTask, form: Any, change: bool) -> None:
        """Save the row and write an Event naming the user."""
        super().save_model(request, obj, form, change)
        log_event(
            "admin.periodic_task",
            f"{'changed' if change else 'added'} periodic task {obj.name} ({obj.task}) "
            "from the admin",
            actor=request.user.get_username(),
            periodic_task=obj.pk,
            task=obj.task,
            args=obj.args,
            kwargs=obj.kwargs,
            cron=obj.cron,
            every=obj.every,
        )


@admin.register(QueueState)
class QueueStateAdmin(ModelAdmin):
    """The queues' pauses: add a queue's row to pause it, or use the actions
    (and the dashboard's buttons); every broker obeys within about a second."""

    list_display = ["queue", "paused", "paused_at", "paused_by"]
    list_filter = ["paused"]
    search_fields = ["queue"]
    fields = ["queue", "paused", "paused_at", "paused_by"]
    readonly_fields = ["paused_at", "paused_by"]
    actions = ["pause_queues", "resume_queues"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [*self.readonly_fields, "queue"] if obj is not None else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: QueueState, form: Any, change: bool) -> None:
        """Pause or resume through leek.queues, which stamps who and when."""
        user = request.user.get_username()
        if obj.paused:
            queues.pause(obj.queue, user)
        else:
            if not change:
                super().save_model(request, obj, form, change)
            queues.resume(obj.queue, user)
        obj.refresh_from_db()

    @admin.action(description="Pause the selected queues", permissions=["change"])
    def pause_queues(self, request: HttpRequest, queryset: QuerySet[QueueState]) -> None:
        user = request.user.get_username()
        done = sum(queues.pause(q, user) for q in queryset.values_list("queue", flat=True))
        self.message_user(request, f"Paused {plural(done, 'queue')}.", messages.SUCCESS)

    @admin.action(description="Resume the selected queues", permissions=["change"])
    def resume_queues(self, request: HttpRequest, queryset: QuerySet[QueueState]) -> None:
        user = request.user.get_username()
        done = sum(queues.resume(q, user) for q in queryset.values_list("queue", flat=True))
        self.message_user(request, f"Resumed {plural(done, 'queue')}.", messages.SUCCESS)


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
