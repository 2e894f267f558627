"""Pausing and resuming a queue: the rows every broker sharing the database obeys.

A paused queue's tasks are accepted and committed as usual, and wait: each
broker reads the paused queues every half second (server/controls.py) and
starts none of theirs until the queue is resumed. `leek pause`, `leek resume`
and the admin call these; each change is an Event naming who made it.
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

#: A queue name's most characters (Task.queue's column).
QUEUE_LENGTH = 64


def _checked(queue: str) -> str:
    name = (queue or "").strip()
    if not 1 <= len(name) <= QUEUE_LENGTH:
        raise ValueError(f"a queue name is 1 to {QUEUE_LENGTH} characters, got {queue!r}")
    return name


def pause(queue: str, by: str = "") -> bool:
    """Pause `queue`; False when it was paused already. ValueError for a
    name no queue can have."""
    from .models import Event, QueueState

    name = _checked(queue)
    with transaction.atomic():
        state, _ = QueueState.objects.select_for_update().get_or_create(queue=name)
        if state.paused:
            return False
        state.paused, state.paused_at, state.paused_by = True, timezone.now(), by[:255]
        state.save()
        Event.objects.create(kind="queue_paused", message=f"queue {name} paused", actor=by[:255])
    return True


def resume(queue: str, by: str = "") -> bool:
    """Resume `queue`; False when it was not paused."""
    from .models import Event, QueueState

    name = _checked(queue)
    with transaction.atomic():
        changed = QueueState.objects.filter(queue=name, paused=True).update(paused=False)
        if changed:
            Event.objects.create(
                kind="queue_resumed", message=f"queue {name} resumed", actor=by[:255]
            )
    return bool(changed)


def paused() -> list[str]:
    """The paused queues, by name."""
    from .models import QueueState

    return sorted(QueueState.objects.filter(paused=True).values_list("queue", flat=True))
