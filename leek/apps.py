from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.backends.signals import connection_created

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")


def _tune_sqlite(sender: Any, connection: Any, **kwargs: Any) -> None:
    """WAL and leek's synchronous mode on every SQLite connection."""
    if connection.vendor != "sqlite":
        return
    from . import conf

    mode = str(conf.get("SQLITE_SYNCHRONOUS")).upper()
    if mode not in SYNCHRONOUS_MODES:
        mode = "NORMAL"  # the system check leek.E003 reports the bad value
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={mode}")


class LeekConfig(AppConfig):
    name = "leek"
    verbose_name = "leek tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the system checks

        connection_created.connect(_tune_sqlite, dispatch_uid="leek.tune_sqlite")
