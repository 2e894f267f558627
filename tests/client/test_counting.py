"""A web process counts its pushes by outcome in prometheus_client's default registry."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction
from prometheus_client import REGISTRY

import leek
from leek.exceptions import BrokerUnavailable
from tests import tasks
from tests.conftest import BrokerProcess, free_port


def counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("leek_client_pushes_total", {"outcome": outcome}) or 0.0


def test_tasks_a_broker_commits_count_as_sent(broker: BrokerProcess) -> None:
    before = counted("sent")
    leek.push_task_to_queue(tasks.add, 1, 2).result(timeout=10)
    leek.enqueue_many([(tasks.add, (1, 2)), (tasks.add, (3, 4)), (tasks.add, (5, 6))])
    assert counted("sent") - before == 4


def test_tasks_sent_after_their_transaction_commits_count_as_sent(broker: BrokerProcess) -> None:
    before = counted("sent")
    with transaction.atomic():
        leek.push_task_to_queue(tasks.add, 1, 2)
        assert counted("sent") == before  # not before the commit
    assert counted("sent") - before == 1


def test_tasks_written_to_the_database_without_a_broker_count_as_spooled(
    transactional_db: None, leek_settings: Any
) -> None:
    leek_settings(PORT=free_port())
    before, sent = counted("spooled"), counted("sent")
    leek.push_task_to_queue(tasks.add, 1, 2)
    assert counted("spooled") - before == 1
    assert counted("sent") == sent


def test_a_push_raised_to_its_caller_counts_as_failed(
    transactional_db: None, leek_settings: Any
) -> None:
    leek_settings(PORT=free_port(), FALLBACK="raise")
    before = counted("failed")
    with pytest.raises(BrokerUnavailable):
        leek.push_task_to_queue(tasks.add, 1, 2)
    assert counted("failed") - before == 1


def test_an_outbox_push_counts_as_outbox(transactional_db: None, leek_settings: Any) -> None:
    leek_settings(PORT=free_port(), ATOMIC_PUSH="outbox")
    before = counted("outbox")
    with transaction.atomic():
        leek.push_task_to_queue(tasks.add, 1, 2)
    assert counted("outbox") - before == 1
