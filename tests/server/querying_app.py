"""An app whose ready() runs a query, as some projects' apps do at start."""

from django.apps import AppConfig
from django.db import connection


class QueryingConfig(AppConfig):
    name = "tests.server"
    label = "leek_test_querying"

    def ready(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
