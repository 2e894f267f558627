"""The task dashboard.

Routed by the Task admin (`admin:leek_task_dashboard`) behind
`admin_site.admin_view`, so it needs a staff login, and view permission on tasks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.db.models.functions import TruncMinute
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from .. import cluster, conf, queues, ratelimit
from ..models import BrokerNode, FailedTask, QueueState, RateLimit, Status, SuccessTask, Task

#: Minutes the throughput chart covers, one bar each.
CHART_MINUTES = 60
#: The chart's height and each bar's width, in SVG units.
CHART_HEIGHT = 100
BAR_WIDTH = 10
#: Rate limits the dashboard lists, by key.
RATE_LIMITS_SHOWN = 50


@dataclass
class Node:
    """A broker as the dashboard shows it: its row, state and tasks owned
    (cluster.py), and whether it runs code other than this site's."""

    broker: cluster.Broker
    drift: bool

    @property
    def row(self) -> BrokerNode:
        return self.broker.row

    @property
    def alive(self) -> bool:
        return self.broker.alive

    @property
    def seen(self) -> str:
        return cluster.age_text(self.broker.heartbeat_age)

    @property
    def uptime(self) -> str:
        return cluster.age_text(self.broker.uptime)

    @property
    def lanes(self) -> str:
        """The broker's lanes in a line: "pdfs: 2 processes, other queues: 4 threads"."""
        return lanes(self.row)


def lanes(row: BrokerNode) -> str:
    """A broker's lanes in a line: "pdfs: 2 processes, other queues: 4 threads"."""
    return ", ".join(
        f"{'other queues' if name == '*' else name}: {lane.get('workers', 0)} "
        f"{lane.get('pool', 'threads')}"
        for name, lane in (row.queues or {}).items()
    )


def broker_nodes(brokers: cluster.Cluster) -> list[Node]:
    """Every broker that ever sent a heartbeat, alive ones first."""
    ours = str(conf.get("CODE_VERSION"))
    nodes = [Node(b, b.alive and b.row.code_version != ours) for b in brokers.brokers]
    return sorted(nodes, key=lambda n: not n.alive)


def unserved(nodes: list[Node], waiting: list[str]) -> list[str]:
    """The queues with tasks waiting that no live broker serves."""
    live = [n.row for n in nodes if n.alive]
    return sorted(q for q in waiting if live and not any(row.serves(q) for row in live))


def problems(nodes: list[Node], waiting: Sequence[str] = ()) -> list[str]:
    """What the red banner says: no live broker, code drift, sick workers,
    queues with waiting tasks that no live broker serves."""
    found = []
    timeout = float(conf.get("HEARTBEAT_TIMEOUT"))
    if not any(n.alive for n in nodes):
        found.append(
            f"No broker has sent a heartbeat in the last {timeout:g} seconds: tasks "
            "are kept, but nothing runs them. Start one with `leek start`."
        )
    ours = str(conf.get("CODE_VERSION")) or "unknown"
    for node in nodes:
        if node.drift:
            found.append(
                f"Broker {node.row.name} runs code version "
                f"{node.row.code_version or 'unknown'}, this site runs {ours}: "
                "reload the broker after a deploy (`leek reload`, or SIGHUP), or let it "
                "reload itself (LEEK['RELOAD_ON_NEW_CODE'])."
            )
        if node.alive and not node.row.healthy:
            found.append(f"Broker {node.row.name} is unhealthy: {node.row.note}")
    for queue in unserved(nodes, list(waiting)):
        found.append(
            f"Tasks wait in queue {queue}, and no live broker serves it: start one "
            f"that does (`leek start --queues {queue}`, or LEEK['QUEUES'])."
        )
    return found


def status_counts() -> dict[str, Any]:
    """Tasks per queue and status, with totals."""
    statuses = [str(s) for s in Status]
    per_queue: dict[str, dict[str, int]] = {}
    # Grouped in the order of the (status, queue) index: a sorted aggregate, no hashing.
    rows = Task.objects.order_by().values("status", "queue").annotate(n=Count("*"))
    for row in rows:
        per_queue.setdefault(row["queue"], {})[row["status"]] = row["n"]
    table = [
        (queue, [counts.get(s, 0) for s in statuses], sum(counts.values()))
        for queue, counts in sorted(per_queue.items())
    ]
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
        row = (
            Task.objects.filter(due, status=Status.QUEUED, queue=queue)
            .order_by("queued_at")
            .values("id", "name", "queue", "queued_at")
            .first()
        )
        if row is not None and (found is None or row["queued_at"] < found["queued_at"]):
            found = row
    if found is None:
        return None
    return {**found, "age": cluster.age_text((now - found["queued_at"]).total_seconds())}


def _per_minute(rows: Any) -> dict[int, int]:
    """Rows of (`minute`, `n`) as counts by minute since the epoch."""
    return {int(r["minute"].timestamp()) // 60: r["n"] for r in rows}


def throughput(now: datetime) -> dict[str, Any]:
    """Runs finished per minute over the last hour, as bars of an SVG chart."""
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=CHART_MINUTES - 1)
    ok = _per_minute(
        SuccessTask.objects.filter(finished_at__gte=start)
        .order_by()
        .annotate(minute=TruncMinute("finished_at"))
        .values("minute")
        .annotate(n=Count("*"))
    )
    failed = _per_minute(
        FailedTask.objects.filter(failed_at__gte=start)
        .order_by()
        .annotate(minute=TruncMinute("failed_at"))
        .values("minute")
        .annotate(n=Count("*"))
    )
    first = int(start.timestamp()) // 60
    counts = [(ok.get(first + i, 0), failed.get(first + i, 0)) for i in range(CHART_MINUTES)]
    peak = max([a + b for a, b in counts] + [1])
    bars = []
    for i, (good, bad) in enumerate(counts):
        good_h = round(good / peak * CHART_HEIGHT, 1)
        bad_h = round(bad / peak * CHART_HEIGHT, 1)
        minute = timezone.localtime(start + timedelta(minutes=i)).strftime("%H:%M")
        bars.append(
            {
                "x": i * BAR_WIDTH,
                "ok_y": CHART_HEIGHT - good_h,
                "ok_h": good_h,
                "bad_y": CHART_HEIGHT - good_h - bad_h,
                "bad_h": bad_h,
                "title": f"{minute}: {good} succeeded, {bad} failed",
            }
        )
    return {
        "bars": bars,
        "peak": peak,
        "width": CHART_MINUTES * BAR_WIDTH,
        "height": CHART_HEIGHT,
        "succeeded": sum(a for a, _ in counts),
        "failed": sum(b for _, b in counts),
    }


def rate_limits() -> list[dict[str, Any]]:
    """Each rate limit's bucket with about the tokens it holds now (by this
    process's clock; the brokers count by the database's)."""
    now = time.time()
    return [
        {
            "key": bucket.key,
            "rate": ratelimit.text(bucket.rate),
            "burst": f"{bucket.burst:g}",
            "tokens": f"{_tokens(bucket, now):.2f}",
        }
        for bucket in RateLimit.objects.order_by("key")[:RATE_LIMITS_SHOWN]
    ]


def _tokens(bucket: RateLimit, now: float) -> float:
    elapsed = max(0.0, now - bucket.updated_at)
    return min(bucket.burst, bucket.tokens + elapsed * bucket.rate)


def dashboard(request: HttpRequest, site: admin.AdminSite) -> HttpResponse:
    """Brokers, counts, the oldest waiting task, the last hour, the latest failures."""
    if not request.user.has_perm("leek.view_task"):
        raise PermissionDenied
    now = timezone.now()
    brokers = cluster.read()
    nodes = broker_nodes(brokers)
    counts = status_counts()
    failures = FailedTask.objects.order_by("-failed_at").only(
        "id", "task_id", "name", "attempt", "exc_type", "exc_message", "failed_at", "final"
    )[:10]
    context = {
        **site.each_context(request),
        "title": "Task dashboard",
        "opts": Task._meta,
        "nodes": nodes,
        "problems": problems(nodes, counts["waiting_queues"]),
        "counts": counts,
        "oldest": oldest_waiting(now, counts["waiting_queues"]),
        "chart": throughput(now),
        "failures": failures,
        "unowned": brokers.unowned,
        "rate_limits": rate_limits(),
        "code_version": conf.get("CODE_VERSION"),
        "heartbeat_timeout": conf.get("HEARTBEAT_TIMEOUT"),
        "paused": paused_queues(),
        "can_pause": request.user.has_perm("leek.change_queuestate"),
    }
    return TemplateResponse(request, "admin/leek/dashboard.html", context)


def paused_queues() -> dict[str, QueueState]:
    """The paused queues' rows, by queue."""
    return {row.queue: row for row in QueueState.objects.filter(paused=True).order_by("queue")}


def pause_or_resume(request: HttpRequest) -> HttpResponse:
    """Pause or resume the queue a dashboard button names (POST: queue, and
    action "pause" or "resume"); back to the dashboard with a message."""
    if not request.user.has_perm("leek.change_queuestate"):
        raise PermissionDenied
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    queue = request.POST.get("queue", "")
    action = request.POST.get("action", "")
    user = request.user.get_username()
    try:
        if action == "pause":
            changed = queues.pause(queue, user)
            said = "paused" if changed else "was paused already"
        elif action == "resume":
            changed = queues.resume(queue, user)
            said = "resumed" if changed else "was not paused"
        else:
            raise ValueError(f"action must be pause or resume, got {action!r}")
    except ValueError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Queue {queue} {said}.")
    return HttpResponseRedirect(reverse("admin:leek_task_dashboard"))
