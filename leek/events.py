"""The event log: one-line business events (a booking, a log-in, an admin's
action on the queue) that people read and search in the admin."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from django.core.serializers.json import DjangoJSONEncoder

if TYPE_CHECKING:
    from .models import Event

logger = logging.getLogger(__name__)


def log_event(kind: str, message: str, actor: str = "", **data: Any) -> Event:
    """Record an event and return it. `kind` is a short stable word or dotted
    name ("booking.created"); `data` is stored as JSON, with dates, decimals and
    UUIDs written as text. Overlong kind, message or actor are cut to fit."""
    from .models import Event

    if not kind:
        raise ValueError("an event needs a kind, such as 'booking.created'; got an empty one")
    stored = json.loads(json.dumps(data, cls=DjangoJSONEncoder))
    event = Event.objects.create(
        kind=kind[:64], message=str(message)[:1024], actor=str(actor)[:255], data=stored
    )
    logger.info(
        "event kind=%s actor=%s message=%s",
        event.kind,
        event.actor,
        event.message,
        extra={"action": "event_logged"},
    )
    return event
