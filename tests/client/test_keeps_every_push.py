"""A push no broker commits is kept in the database, or raised; never lost quietly.

The brokers here fail their commits for real: a trigger on the task table
fails the inserts it matches, as a full disk or a broken table would.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import connection as db
from django.db import transaction

import leek
from leek.client import connection
from leek.models import Task
from tests import tasks
from tests.conftest import BrokerProcess, wait_for

#: The inserts of the brokers: a client's database fallback writes spooled rows.
BROKER_INSERTS = "NOT NEW.spooled"
#: Every insert, the fallback's included.
EVERY_INSERT = "NEW.name <> ''"


@contextmanager
def failing_inserts(when: str) -> Iterator[None]:
    """Fail every insert into the task table whose new row matches `when`."""
    with db.cursor() as cursor:
        if db.vendor == "sqlite":
            cursor.execute(
                f"CREATE TRIGGER leek_test_fault BEFORE INSERT ON leek_task WHEN {when} "
                "BEGIN SELECT RAISE(ABORT, 'commit failed'); END"
            )
        else:
            cursor.execute(
                "CREATE OR REPLACE FUNCTION leek_test_fault() RETURNS trigger LANGUAGE plpgsql "
                "AS $$ BEGIN RAISE EXCEPTION 'commit failed'; END $$"
            )
            cursor.execute(
                "CREATE TRIGGER leek_test_fault BEFORE INSERT ON leek_task FOR EACH ROW "
                f"WHEN ({when}) EXECUTE FUNCTION leek_test_fault()"
            )
    try:
        yield
    finally:
        with db.cursor() as cursor:
            on = "" if db.vendor == "sqlite" else " ON leek_task"
            cursor.execute(f"DROP TRIGGER leek_test_fault{on}")


def spooled(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "action", "") == "task_spooled"]


def test_a_push_the_broker_cannot_commit_is_spooled_and_runs(
    broker: BrokerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    with failing_inserts(BROKER_INSERTS):
        handle = leek.push_task_to_queue(tasks.add, 2, 3)
        assert Task.objects.filter(pk=handle.id).exists()
    [record] = spooled(caplog)
    assert record.levelno == logging.WARNING
    assert re.search(
        f"127.0.0.1:{broker.port} could not commit enqueue: \\w+: commit failed",
        record.getMessage(),
    )
    assert str(handle.id) in record.getMessage()
    assert handle.result(timeout=10) == 5
    # The broker logged the fault: a refused write (SQLite's trigger raises an
    # IntegrityError), or a failed one (PostgreSQL's RAISE is no data error).
    assert re.search("write refused kind=insert|database write failed", broker.output())


def test_a_batch_the_broker_cannot_commit_is_spooled_and_runs(broker: BrokerProcess) -> None:
    with failing_inserts(BROKER_INSERTS):
        handles = leek.enqueue_many([(tasks.add, (i, i)) for i in range(5)], priority=3)
    assert [h.result(timeout=10) for h in handles] == [0, 2, 4, 6, 8]
    assert set(Task.objects.values_list("priority", flat=True)) == {3}


def test_a_push_goes_on_to_the_next_broker_when_one_cannot_commit_it(
    broker_factory: Any, leek_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    faulty: BrokerProcess = broker_factory(LEEK_NODE_NAME="faulty")
    healthy: BrokerProcess = broker_factory(LEEK_NODE_NAME="healthy")
    leek_settings(PORT=faulty.port, BROKERS=[f"127.0.0.1:{healthy.port}"])
    connection.close()
    with failing_inserts("NEW.broker = 'faulty'"):
        first = leek.push_task_to_queue(tasks.add, 1, 1)
        second = leek.push_task_to_queue(tasks.add, 2, 2)
    assert (first.result(timeout=10), second.result(timeout=10)) == (2, 4)
    assert set(Task.objects.values_list("broker", flat=True)) == {"healthy"}
    assert not spooled(caplog)


def test_with_fallback_raise_a_push_no_broker_commits_raises_commit_failed(
    broker: BrokerProcess, leek_settings: Any
) -> None:
    leek_settings(FALLBACK="raise")
    with failing_inserts(BROKER_INSERTS), pytest.raises(leek.CommitFailed) as caught:
        leek.push_task_to_queue(tasks.add, 1, 1)
    assert f"broker 127.0.0.1:{broker.port} could not commit enqueue" in str(caught.value)
    assert "commit failed" in str(caught.value)
    assert not Task.objects.exists()


def test_a_push_the_broker_refuses_for_its_contents_still_raises(broker: BrokerProcess) -> None:
    message = leek.client.api.message(tasks.add, (1, 1))
    message["priority"] = "high"  # a client with other checks than the broker's
    with pytest.raises(leek.LeekError, match="refused enqueue: ValueError") as caught:
        connection.call("enqueue", message, push=True)
    assert not isinstance(caught.value, leek.CommitFailed)
    assert not Task.objects.exists()


def test_a_reply_that_cannot_be_verified_spools_the_push_and_logs_an_error(
    broker: BrokerProcess, leek_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    connection.close()
    leek_settings(SECRET="a-different-secret")
    handle = leek.push_task_to_queue(tasks.add, 1, 1)
    assert Task.objects.filter(pk=handle.id).exists()
    [record] = spooled(caplog)
    assert record.levelno == logging.ERROR
    assert "LEEK_SECRET" in record.getMessage()


def test_a_push_goes_on_to_the_next_broker_when_one_answers_with_another_secret(
    broker_factory: Any, leek_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    stranger: BrokerProcess = broker_factory(wait=False, LEEK_SECRET="not-this-clients-secret")
    healthy: BrokerProcess = broker_factory(LEEK_NODE_NAME="healthy")
    wait_for(lambda: "broker listening" in stranger.output())
    leek_settings(PORT=stranger.port, BROKERS=[f"127.0.0.1:{healthy.port}"])
    connection.close()
    handle = leek.push_task_to_queue(tasks.add, 1, 1)
    assert handle.result(timeout=10) == 2
    assert Task.objects.get(pk=handle.id).broker == "healthy"
    assert not spooled(caplog)


def test_a_push_that_fails_after_the_commit_never_raises_into_the_caller(
    broker: BrokerProcess, leek_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    leek_settings(FALLBACK="raise")  # nothing can be raised once the rows are committed
    after: list[str] = []
    with failing_inserts(BROKER_INSERTS):
        with transaction.atomic():
            Group.objects.create(name="customers")
            handle = leek.push_task_to_queue(tasks.add, 4, 4)
            transaction.on_commit(lambda: after.append("second hook"))
        assert after == ["second hook"]
        assert Group.objects.filter(name="customers").exists()
        assert Task.objects.filter(pk=handle.id).exists()
    assert len(spooled(caplog)) == 1
    assert handle.result(timeout=10) == 8


def test_a_push_lost_after_the_commit_is_logged_with_its_id_and_traceback(
    broker: BrokerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    after: list[str] = []
    with failing_inserts(EVERY_INSERT):
        with transaction.atomic():
            Group.objects.create(name="customers")
            handle = leek.push_task_to_queue(tasks.add, 4, 4)
            transaction.on_commit(lambda: after.append("second hook"))
        assert after == ["second hook"]
    assert Group.objects.filter(name="customers").exists()
    assert not Task.objects.exists()
    [lost] = [r for r in caplog.records if getattr(r, "action", "") == "task_lost"]
    assert lost.levelno == logging.ERROR
    assert str(handle.id) in lost.getMessage()
    assert lost.exc_info is not None
    assert "the database fallback failed" in str(lost.exc_info[1])
