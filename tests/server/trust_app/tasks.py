"""Tasks of an installed app: brokers register `tick` by importing this module."""

from __future__ import annotations

from leek.client import task
from tests.server.periodic_tasks import stamp


@task
def tick(path: str, label: str = "") -> float:
    """A registered task: stamp the file (tests.server.periodic_tasks.stamp)."""
    return stamp(path, label)


def untick(path: str, label: str = "") -> float:
    """Not registered: runs only when LEEK["SCHEDULE"] names it."""
    return stamp(path, label)
