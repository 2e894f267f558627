"""The app's config: a label of its own beside django.contrib.admin's."""

from django.apps import AppConfig


class TrustConfig(AppConfig):
    name = "tests.server.trust_app"
    label = "leek_test_trust"
