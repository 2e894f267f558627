"""Old home of `notify_admins`, which moved to leek/server/notify.py: the
broker's workers call it. Importing this module warns; settings that name
``leek.notify.notify_admins`` (in ON_FAILURE) keep working meanwhile."""

import warnings

from .server.notify import admin_path, notify_admins

__all__ = ["admin_path", "notify_admins"]

warnings.warn(
    "leek.notify moved to leek.server.notify; import notify_admins from there",
    DeprecationWarning,
    stacklevel=2,
)
