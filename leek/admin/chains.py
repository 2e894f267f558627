"""A chain's, group's or chord's steps on each of its tasks' pages.

The steps are listed in the order they run: a chord's members first, then
each step after the one that releases it. Each links to its own page, with
its status; the task list shows them together through its ``chain`` filter.
"""

from __future__ import annotations

from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from ..models import Task
from .display import badge

#: Steps listed on a task's page at most (a group can be large).
SHOWN_STEPS = 50


def ordered(steps: list[Task]) -> list[Task]:
    """`steps` in the order they run: those nothing releases first (in the
    order they were pushed), then each step after the ones that release it."""
    released = {s.next_step for s in steps if s.next_step is not None}
    order = [s for s in steps if s.id not in released]
    by_id = {s.id: s for s in steps}
    seen = {s.id for s in order}
    at = 0
    while at < len(order):
        after = order[at].next_step
        following = by_id.get(after) if after is not None else None
        if following is not None and following.id not in seen:
            order.append(following)
            seen.add(following.id)
        at += 1
    return order + [s for s in steps if s.id not in seen]


def steps_table(task: Task) -> SafeString | str:
    """The steps of `task`'s chain, each linked, its own marked; "-" for a lone task."""
    if task.chain is None:
        return "-"
    steps = list(
        Task.objects.filter(chain=task.chain)
        .only("id", "name", "status", "next_step", "queued_at")
        .order_by("queued_at", "id")[: SHOWN_STEPS + 1]
    )
    more = len(steps) > SHOWN_STEPS
    rows = format_html_join(
        "",
        '<tr><td>{}</td><td><a href="{}">{}</a>{}</td><td>{}</td></tr>',
        (
            (
                number,
                reverse("admin:leek_task_change", args=[step.pk]),
                step.name,
                " (this task)" if step.pk == task.pk else "",
                badge(step.status),
            )
            for number, step in enumerate(ordered(steps[:SHOWN_STEPS]), 1)
        ),
    )
    every = reverse("admin:leek_task_changelist") + f"?chain={task.chain}"
    return format_html(
        '<table class="leek-steps">{}</table><p><a href="{}">{}</a></p>',
        rows,
        every,
        "every step in the task list" if more else "these steps in the task list",
    )
