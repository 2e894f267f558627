"""System checks for the LEEK settings and the app (`manage.py check`).

`import leek` registers them, so they run whether or not INSTALLED_APPS lists
leek: a project that imports leek while Django sets up (from its models, an
AppConfig.ready or its settings) is told when the app is missing. One that
imports leek later, from a view, is told by its first push (AppNotInstalled).
The checks of the settings' values are in values.py; those of what a broker,
its metrics page and the admin expose, in exposure.py.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core import checks

from .exposure import check_admin_trust, check_metrics
from .values import check_settings

__all__ = ["check_admin_trust", "check_installed", "check_metrics", "check_settings"]


@checks.register()
def check_installed(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """leek.E008 when leek is imported and INSTALLED_APPS lacks it."""
    if apps.is_installed("leek"):
        return []
    return [
        checks.Error(
            'INSTALLED_APPS lacks "leek", and this project imports leek.',
            hint='Add "leek" to INSTALLED_APPS, then run `manage.py migrate`: pushes, '
            "their results and the admin need leek's tables.",
            id="leek.E008",
        )
    ]
