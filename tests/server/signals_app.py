"""An app whose ready() connects the receivers of signal_receivers.py."""

from django.apps import AppConfig


class SignalsConfig(AppConfig):
    name = "tests.server"
    label = "leek_test_signals"

    def ready(self) -> None:
        from .signal_receivers import connect

        connect()
