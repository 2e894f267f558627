"""leek.log_event and the event log in the admin."""

from __future__ import annotations

import datetime
import decimal
import uuid

import pytest
from django.test import Client
from django.urls import reverse

import leek
from leek.models import Event

pytestmark = pytest.mark.django_db


def test_log_event_writes_a_row_with_json_data() -> None:
    key = uuid.uuid4()
    event = leek.log_event("booking.created", "Room 4 booked for Ada", actor="ada",
                           room=4, price=decimal.Decimal("12.50"), booking=key,
                           day=datetime.date(2026, 3, 1))  # fmt: skip
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


def test_the_event_log_is_searchable_and_filterable(admin_client: Client) -> None:
    leek.log_event("login", "Ada logged in", actor="ada")
    leek.log_event("booking.created", "Room 4 booked", actor="bob", room=4)
    url = reverse("admin:leek_event_changelist")
    page = admin_client.get(url).content.decode()
    assert "Ada logged in" in page and "Room 4 booked" in page and "?kind=login" in page

    def rows(query: dict[str, str]) -> str:
        text = admin_client.get(url, query).content.decode()
        return text.split('id="result_list"')[1].split("</table>")[0]

    assert "Room 4" not in rows({"kind": "login"}) and "Ada" in rows({"kind": "login"})
    assert "Ada" not in rows({"q": "bob"}) and "Room 4" in rows({"q": "bob"})
    event = Event.objects.get(kind="booking.created")
    detail = admin_client.get(reverse("admin:leek_event_change", args=[event.pk]))
    assert "&quot;room&quot;: 4" in detail.content.decode()
