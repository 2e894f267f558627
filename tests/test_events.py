"""leek.log_event: the rows it writes to the event log."""

from __future__ import annotations

import datetime
import decimal
import uuid

import pytest

import leek
from leek.models import Event

pytestmark = pytest.mark.django_db


def test_log_event_writes_a_row_with_json_data() -> None:
    key = uuid.uuid4()
    event = leek.log_event(
        "booking.created",
        "Room 4 booked for Ada",
        actor="ada",
        room=4,
        price=decimal.Decimal("12.50"),
        booking=key,
        day=datetime.date(2026, 3, 1),
    )
    stored = Event.objects.get(pk=event.pk)
    assert (stored.kind, stored.message, stored.actor) == (
        "booking.created",
        "Room 4 booked for Ada",
        "ada",
    )
    assert stored.data == {"room": 4, "price": "12.50", "booking": str(key), "day": "2026-03-01"}
    assert stored.created_at is not None


def test_overlong_fields_are_cut_and_an_empty_kind_is_refused() -> None:
    event = leek.log_event("k" * 100, "m" * 2000, actor="a" * 300)
    assert (len(event.kind), len(event.message), len(event.actor)) == (64, 1024, 255)
    with pytest.raises(ValueError, match="an event needs a kind"):
        leek.log_event("", "nothing")
