"""Fixtures: leek as the tasks framework's backend, here and in the brokers."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import BrokerProcess, wait_for

SETTINGS = "tests.backends.settings"


@pytest.fixture
def jobs(settings: Any) -> ModuleType:
    """The framework tasks of tests/backends/tasks.py, with TASKS set as the brokers
    have it (the @task decorator checks its options against the backend)."""
    from . import settings as backend_settings

    settings.TASKS = backend_settings.TASKS
    from . import tasks

    return tasks


@pytest.fixture
def framework_broker(
    broker_factory: Callable[..., BrokerProcess], jobs: ModuleType
) -> BrokerProcess:
    return broker_factory(DJANGO_SETTINGS_MODULE=SETTINGS)


def finished(result: Any, timeout: float = 15) -> Any:
    """`result`, refreshed until its task has finished."""

    def done() -> bool:
        result.refresh()
        return bool(result.is_finished)

    wait_for(done, timeout=timeout)
    return result
