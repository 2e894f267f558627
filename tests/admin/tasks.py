"""@leek.task functions the admin offers in "Create a task" (the brokers under
test import them as tests.admin.tasks.<name>)."""

from __future__ import annotations

import sys

from leek.client import task


@task
def shout(text: str, times: int = 1) -> str:
    """Print the text in capitals and return it."""
    loud = " ".join([text.upper()] * times)
    sys.stdout.write(loud + "\n")
    return loud


@task(queue="reports", priority=3, max_retries=0)
def report(name: str) -> str:
    return f"report {name}"
