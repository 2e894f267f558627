"""The admin's own pages: the dashboard and "Create a task".

Both are routed by the Task admin (`admin:leek_task_dashboard`,
`admin:leek_task_create`) behind `admin_site.admin_view`, so they need a staff
login; the dashboard needs view permission on tasks, creating one add permission.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.management import get_commands
from django.db.models import Count, Q
from django.db.models.functions import TruncMinute
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.module_loading import autodiscover_modules

from . import conf
from .admin_actions import broker_calls
from .client import TaskHandle, enqueue
from .client.decorator import registry
from .calls import run_command
from .events import log_event
from .exceptions import LeekError
from .models import BrokerNode, FailedTask, Status, SuccessTask, Task

logger = logging.getLogger(__name__)

CHART_MINUTES = 60
CHART_HEIGHT = 100
BAR_WIDTH = 10


@dataclass
class Node:
    """A broker as the dashboard shows it."""

    row: BrokerNode
    alive: bool
    drift: bool
    seen: str
    uptime: str


def _age(delta: timedelta) -> str:
    """A time span in whole units: 4 s, 3 min 13 s, 5 h 2 min, 3 d 4 h."""
    total = int(max(delta.total_seconds(), 0.0))
    if total < 60:
        return f"{total} s"
    if total < 3600:
        return f"{total // 60} min {total % 60} s"
    if total < 2 * 86400:
        return f"{total // 3600} h {total % 3600 // 60} min"
    return f"{total // 86400} d {total % 86400 // 3600} h"


def broker_nodes(now: datetime) -> list[Node]:
    """Every broker that ever sent a heartbeat, alive ones first."""
    timeout = float(conf.get("HEARTBEAT_TIMEOUT"))
    ours = str(conf.get("CODE_VERSION"))
    nodes = []
    for row in BrokerNode.objects.order_by("name"):
        alive = not row.stopped and (now - row.heartbeat_at).total_seconds() <= timeout
        nodes.append(Node(row, alive, alive and row.code_version != ours,
                          _age(now - row.heartbeat_at), _age(now - row.started_at)))  # fmt: skip
    return sorted(nodes, key=lambda n: not n.alive)


def problems(nodes: list[Node]) -> list[str]:
    """What the red banner says: no live broker, code drift, sick workers."""
    found = []
    timeout = float(conf.get("HEARTBEAT_TIMEOUT"))
    if not any(n.alive for n in nodes):
        found.append(f"No broker has sent a heartbeat in the last {timeout:g} seconds: tasks "
                     "are kept, but nothing runs them. Start one with `leek start`.")  # fmt: skip
    ours = str(conf.get("CODE_VERSION")) or "unknown"
    for node in nodes:
        if node.drift:
            found.append(f"Broker {node.row.name} runs code version "
                         f"{node.row.code_version or 'unknown'}, this site runs {ours}: "
                         "restart the broker after a deploy.")  # fmt: skip
        if node.alive and not node.row.healthy:
            found.append(f"Broker {node.row.name} is unhealthy: {node.row.note}")
    return found


def status_counts() -> dict[str, Any]:
    """Tasks per queue and status, with totals."""
    statuses = [str(s) for s in Status]
    per_queue: dict[str, dict[str, int]] = {}
    # Grouped in the order of the (status, queue) index: a sorted aggregate, no hashing.
    rows = Task.objects.order_by().values("status", "queue").annotate(n=Count("*"))
    for row in rows:
        per_queue.setdefault(row["queue"], {})[row["status"]] = row["n"]
    table = [(queue, [counts.get(s, 0) for s in statuses], sum(counts.values()))
             for queue, counts in sorted(per_queue.items())]  # fmt: skip
    totals = [sum(row[1][i] for row in table) for i in range(len(statuses))]
    return {
        "statuses": statuses,
        "rows": table,
        "totals": list(zip(statuses, totals, strict=True)),
        "total": sum(totals),
        "waiting_queues": [q for q, c in per_queue.items() if c.get(Status.QUEUED)],
    }


def oldest_waiting(now: datetime, queues: list[str]) -> dict[str, Any] | None:
    """The queued task that is due and has waited longest: one short walk of the
    (status, queue, queued_at) index per queue that has tasks waiting."""
    found = None
    for queue in queues:
        due = Q(run_after__isnull=True) | Q(run_after__lte=now)
        row = (Task.objects.filter(due, status=Status.QUEUED, queue=queue).order_by("queued_at")
               .values("id", "name", "queue", "queued_at").first())  # fmt: skip
        if row is not None and (found is None or row["queued_at"] < found["queued_at"]):
            found = row
    return None if found is None else {**found, "age": _age(now - found["queued_at"])}


def _per_minute(rows: Any) -> dict[int, int]:
    return {int(r["minute"].timestamp()) // 60: r["n"] for r in rows}


def throughput(now: datetime) -> dict[str, Any]:
    """Runs finished per minute over the last hour, as bars of an SVG chart."""
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=CHART_MINUTES - 1)
    ok = _per_minute(SuccessTask.objects.filter(finished_at__gte=start).order_by()
                     .annotate(minute=TruncMinute("finished_at"))
                     .values("minute").annotate(n=Count("*")))  # fmt: skip
    failed = _per_minute(FailedTask.objects.filter(failed_at__gte=start).order_by()
                         .annotate(minute=TruncMinute("failed_at"))
                         .values("minute").annotate(n=Count("*")))  # fmt: skip
    first = int(start.timestamp()) // 60
    counts = [(ok.get(first + i, 0), failed.get(first + i, 0)) for i in range(CHART_MINUTES)]
    peak = max([a + b for a, b in counts] + [1])
    bars = []
    for i, (good, bad) in enumerate(counts):
        good_h = round(good / peak * CHART_HEIGHT, 1)
        bad_h = round(bad / peak * CHART_HEIGHT, 1)
        minute = timezone.localtime(start + timedelta(minutes=i)).strftime("%H:%M")
        bars.append({"x": i * BAR_WIDTH, "ok_y": CHART_HEIGHT - good_h, "ok_h": good_h,
                     "bad_y": CHART_HEIGHT - good_h - bad_h, "bad_h": bad_h,
                     "title": f"{minute}: {good} succeeded, {bad} failed"})  # fmt: skip
    return {"bars": bars, "peak": peak, "width": CHART_MINUTES * BAR_WIDTH,
            "height": CHART_HEIGHT, "succeeded": sum(a for a, _ in counts),
            "failed": sum(b for _, b in counts)}  # fmt: skip


def dashboard(request: HttpRequest, site: admin.AdminSite) -> HttpResponse:
    """Brokers, counts, the oldest waiting task, the last hour, the latest failures."""
    if not request.user.has_perm("leek.view_task"):
        raise PermissionDenied
    now = timezone.now()
    nodes = broker_nodes(now)
    counts = status_counts()
    failures = (FailedTask.objects.order_by("-failed_at")
                .only("id", "task_id", "name", "attempt", "exc_type", "exc_message",
                      "failed_at", "final")[:10])  # fmt: skip
    context = {
        **site.each_context(request), "title": "Task dashboard", "opts": Task._meta,
        "nodes": nodes, "problems": problems(nodes), "counts": counts,
        "oldest": oldest_waiting(now, counts["waiting_queues"]), "chart": throughput(now),
        "failures": failures,
        "code_version": conf.get("CODE_VERSION"),
        "heartbeat_timeout": conf.get("HEARTBEAT_TIMEOUT"),
    }  # fmt: skip
    return TemplateResponse(request, "admin/leek/dashboard.html", context)


def _choices() -> list[tuple[str, list[tuple[str, str]]]]:
    autodiscover_modules("tasks")
    tasks = [(f"task:{name}", name) for name in sorted(registry)]
    commands = [(f"command:{name}", f"manage.py {name}") for name in sorted(get_commands())]
    return [("Tasks (@leek.task)", tasks), ("Management commands", commands)]


class CreateTaskForm(forms.Form):
    target = forms.ChoiceField(label="Task or command")
    args = forms.CharField(label="Arguments", initial="[]", required=False,
                           widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
                           help_text='A JSON list, e.g. [1, "two"]. For a command: its '
                                     'positional arguments.')  # fmt: skip
    kwargs = forms.CharField(label="Keyword arguments", initial="{}", required=False,
                             widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
                             help_text='A JSON object, e.g. {"send": true}. For a command: its '
                                       'options by name, e.g. {"verbosity": 2}.')  # fmt: skip
    queue = forms.CharField(required=False, max_length=64,
                            help_text="Blank: the task's own queue, or default.")  # fmt: skip
    priority = forms.IntegerField(required=False, help_text="Higher runs first. Blank: the "
                                                            "task's own, or 0.")  # fmt: skip
    delay = forms.FloatField(required=False, min_value=0, help_text="Seconds before it runs.")
    max_retries = forms.IntegerField(
        required=False, min_value=0, help_text="Blank: the task's own (commands: 0, run once)."
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["target"].choices = _choices()  # type: ignore[attr-defined]

    def clean_args(self) -> list[Any]:
        value = _json(self.cleaned_data["args"] or "[]", "arguments")
        if not isinstance(value, list):
            raise forms.ValidationError(
                f"must be a JSON list like [1, 2], got {type(value).__name__}"
            )
        return value

    def clean_kwargs(self) -> dict[str, Any]:
        value = _json(self.cleaned_data["kwargs"] or "{}", "keyword arguments")
        if not isinstance(value, dict):
            raise forms.ValidationError('must be a JSON object like {"name": "value"}, '
                                        f"got {type(value).__name__}")  # fmt: skip
        return value

    def push(self) -> TaskHandle:
        """Push the chosen task through the broker (or the database fallback)."""
        data = self.cleaned_data
        kind, _, name = data["target"].partition(":")
        args, kwargs = tuple(data["args"]), data["kwargs"]
        if kind == "task":
            return registry[name].enqueue(args, kwargs, queue=data["queue"] or None,
                                          priority=data["priority"], delay=data["delay"],
                                          max_retries=data["max_retries"])  # fmt: skip
        retries = data["max_retries"]
        return enqueue(run_command, (name, *args), kwargs, queue=data["queue"] or "default",
                       priority=data["priority"] or 0, delay=data["delay"],
                       max_retries=0 if retries is None else retries)  # fmt: skip


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise forms.ValidationError(f"{what} are not valid JSON: {exc}") from exc


def create_task(request: HttpRequest, site: admin.AdminSite) -> HttpResponse:
    """Pick a task or a command, give its arguments as JSON, push it."""
    if not request.user.has_perm("leek.add_task"):
        raise PermissionDenied
    form = CreateTaskForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            with broker_calls():
                handle = form.push()
        except (LeekError, TypeError, ValueError) as exc:
            form.add_error(None, f"The task was not pushed: {type(exc).__name__}: {exc}")
        else:
            target = form.cleaned_data["target"].partition(":")[2]
            log_event("admin.create_task", f"pushed {target} from the admin",
                      actor=request.user.get_username(), task=str(handle.id))  # fmt: skip
            messages.success(request, f"Pushed {target} as task {handle.id}.")
            return HttpResponseRedirect(reverse("admin:leek_task_change", args=[handle.id]))
    context = {**site.each_context(request), "title": "Create a task", "form": form,
               "opts": Task._meta}  # fmt: skip
    return TemplateResponse(request, "admin/leek/create_task.html", context)
