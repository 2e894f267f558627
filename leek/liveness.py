"""Whether a broker is alive, by the database's clock.

Every heartbeat is written with the database's clock (leek/server/store/sql.py),
so a broker's silence is measured against that clock too, never against the
clock of the machine that asks: a machine whose clock is off would count live
brokers dead, or dead ones live.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from .models import BrokerNode


def database_now() -> datetime:
    """The database's clock now; this machine's when no broker row exists
    (then no heartbeat has an age to measure)."""
    found = BrokerNode.objects.annotate(db_now=Now()).values_list("db_now", flat=True)[:1]
    for moment in found:
        return moment
    return timezone.now()


def alive(dead_after: float) -> Q:
    """The brokers not stopped whose heartbeat is within `dead_after` seconds."""
    return Q(stopped=False, heartbeat_at__gte=Now() - timedelta(seconds=dead_after))
