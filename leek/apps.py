from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.backends.signals import connection_created

from . import conf


def _tune_sqlite(sender: Any, connection: Any, **kwargs: Any) -> None:
    """WAL and leek's synchronous mode on every SQLite connection; NORMAL
    while the setting is not a mode (the system check leek.E003 says so)."""
    if connection.vendor != "sqlite":
        return
    mode = conf.sqlite_synchronous() or "NORMAL"
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={mode}")


class LeekConfig(AppConfig):
    name = "leek"
    verbose_name = "leek tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        connection_created.connect(_tune_sqlite, dispatch_uid="leek.tune_sqlite")
