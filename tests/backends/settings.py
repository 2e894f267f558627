"""The test settings with leek as the tasks framework's backend (brokers of these tests use it)."""

from tests.settings import *  # noqa: F403

TASKS = {
    "default": {
        "BACKEND": "leek.backends.LeekBackend",
        "QUEUES": ["default", "emails"],
        "OPTIONS": {"max_retries": 1},
    }
}
