"""The cursor the store's reads run on."""

from __future__ import annotations

from typing import Any

from django.db import connection


def raw_cursor() -> Any:
    """A DB-API cursor on this thread's Django connection."""
    connection.ensure_connection()
    return connection.connection.cursor()
