"""Connects the signal receivers of these tests in the brokers (tests.backends.settings)."""

from django.apps import AppConfig


class ReceiversConfig(AppConfig):
    name = "tests.backends"
    label = "leek_test_backends"

    def ready(self) -> None:
        from . import receivers  # noqa: F401 - connects them
