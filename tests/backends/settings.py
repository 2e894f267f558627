"""The test settings with leek as the tasks framework's backend (brokers of these tests use it).

"immediate" is the framework's own ImmediateBackend, the oracle leek is compared
with; "once" is leek without retries, as a TASKS alias of its own sets options
on every Django version. The brokers connect the receivers that log the
tasks' signals (receivers.py).
"""

import importlib.util

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.backends.apps.ReceiversConfig"]

_framework = "django.tasks" if importlib.util.find_spec("django.tasks") else "django_tasks"
QUEUES = ["default", "emails"]

TASKS = {
    "default": {
        "BACKEND": "leek.backends.LeekBackend",
        "QUEUES": QUEUES,
        "OPTIONS": {"max_retries": 1},
    },
    "once": {
        "BACKEND": "leek.backends.LeekBackend",
        "QUEUES": QUEUES,
        "OPTIONS": {"max_retries": 0},
    },
    "immediate": {
        "BACKEND": f"{_framework}.backends.immediate.ImmediateBackend",
        "QUEUES": QUEUES,
    },
}
