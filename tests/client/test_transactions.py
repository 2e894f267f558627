"""Pushes inside transaction.atomic() wait for the commit."""

from __future__ import annotations

import pytest
from django.db import transaction

import leek
from leek.exceptions import PayloadError
from leek.models import Task
from tests import tasks
from tests.conftest import BrokerProcess


def test_a_rolled_back_push_never_runs(broker: BrokerProcess) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        handle = leek.push_task_to_queue(tasks.add, 1, 2)
        assert handle.id  # the handle exists at once
        raise RuntimeError("roll back")
    other = leek.push_task_to_queue(tasks.add, 2, 2)
    assert other.result(timeout=10) == 4
    assert handle.status() is None
    assert not Task.objects.filter(pk=handle.id).exists()


def test_a_committed_push_is_sent_after_the_commit(broker: BrokerProcess) -> None:
    with transaction.atomic():
        handle = leek.push_task_to_queue(tasks.add, 1, 2)
        assert leek.waiting() == (True, 0)
        assert handle.status() is None  # not sent yet
    assert handle.result(timeout=10) == 3


def test_on_commit_off_sends_at_once(broker: BrokerProcess, leek_settings: object) -> None:
    from django.db import connection

    if connection.vendor == "sqlite":
        pytest.skip("SQLite has one writer: the broker's insert waits for this transaction")
    leek_settings(ON_COMMIT=False)  # type: ignore[operator]
    with transaction.atomic():
        handle = leek.push_task_to_queue(tasks.add, 1, 2)
        assert handle.result(timeout=10) == 3


def test_options_are_checked_before_sending() -> None:
    from datetime import datetime

    with pytest.raises(ValueError, match="timezone-aware"):
        leek.enqueue(tasks.noop, run_at=datetime(2030, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="max_retries must be between 0"):
        leek.enqueue(tasks.noop, max_retries=-1)
    with pytest.raises(ValueError, match="priority must be between"):
        leek.enqueue(tasks.noop, priority=2**40)
    with pytest.raises(ValueError, match="timeout must be a finite number"):
        leek.enqueue(tasks.noop, timeout=float("inf"))
    with pytest.raises(TypeError, match="must be callable"):
        leek.enqueue("tests.tasks.noop")


def test_a_batch_with_one_bad_call_sends_none_of_it(transactional_db: object) -> None:
    import threading

    # No broker answers here, so a batch that went out would be spooled as rows.
    with pytest.raises(PayloadError, match="cannot pickle task tests.tasks.add"):
        leek.enqueue_many([(tasks.add, (1, 2)), (tasks.add, (threading.Lock(), 1))])
    with pytest.raises(TypeError, match="must be callable"):
        leek.enqueue_many([(tasks.add, (1, 2)), ("tests.tasks.noop", ())])
    with pytest.raises(TypeError, match="must be callable, got NoneType"):
        leek.enqueue_many([(None, ())])
    assert Task.objects.count() == 0
