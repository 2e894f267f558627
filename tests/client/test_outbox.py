"""ATOMIC_PUSH "outbox": a push inside atomic() is written in its transaction."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

import leek
from leek.client import delivery, spool
from leek.models import Task
from tests import tasks
from tests.conftest import REPO, BrokerProcess, broker_env, free_port


@pytest.fixture
def outbox(leek_settings: Any) -> None:
    leek_settings(ATOMIC_PUSH="outbox")


def test_an_outbox_push_is_written_in_its_transaction(broker: BrokerProcess, outbox: None) -> None:
    with transaction.atomic():
        Group.objects.create(name="customers")
        handle = leek.push_task_to_queue(tasks.add, 1, 2)
        assert Task.objects.get(pk=handle.id).spooled  # in the transaction, not sent
    assert handle.result(timeout=10) == 3


def test_a_rolled_back_outbox_push_leaves_no_task(broker: BrokerProcess, outbox: None) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        Group.objects.create(name="customers")
        gone = leek.push_task_to_queue(tasks.add, 1, 1)
        raise RuntimeError("roll back")
    with transaction.atomic():
        kept = leek.push_task_to_queue(tasks.add, 2, 2)
        with pytest.raises(RuntimeError), transaction.atomic():  # a savepoint
            gone_too = leek.enqueue_many([(tasks.add, (3, 3))])[0]
            raise RuntimeError("roll back the savepoint")
    assert kept.result(timeout=10) == 4
    assert not Group.objects.exists()
    assert list(Task.objects.values_list("id", flat=True)) == [kept.id]
    assert gone.status() is None and gone_too.status() is None


def test_an_outbox_push_needs_no_broker_until_a_broker_sweeps(
    broker_factory: Any, leek_settings: Any, outbox: None
) -> None:
    port = free_port()
    leek_settings(PORT=port, FALLBACK="raise")
    with transaction.atomic():
        handle = leek.push_task_to_queue(tasks.add, 5, 5)
    assert Task.objects.get(pk=handle.id).status == "queued"
    broker_factory(port=port)
    assert handle.result(timeout=10) == 10


def test_outside_atomic_an_outbox_push_is_sent_at_once(
    transactional_db: None, leek_settings: Any, outbox: None
) -> None:
    leek_settings(PORT=free_port(), FALLBACK="raise")
    with pytest.raises(leek.BrokerUnavailable):
        leek.push_task_to_queue(tasks.noop)
    assert not Task.objects.exists()


def test_the_commit_wakes_a_broker_for_its_outbox_pushes(broker_factory: Any, outbox: None) -> None:
    broker_factory(LEEK_SWEEP_INTERVAL="600")  # only its start sweeps on its own
    with transaction.atomic():
        handles = [leek.push_task_to_queue(tasks.add, i, 1) for i in range(3)]
        hooks = transaction.get_connection().run_on_commit
        assert sum(hook[1] is spool.wake for hook in hooks) == 1
    assert [h.result(timeout=10) for h in handles] == [1, 2, 3]


@pytest.mark.parametrize(("atomic_push", "kept"), [("outbox", True), ("on_commit", False)])
def test_a_web_process_killed_right_after_its_commit_keeps_an_outbox_push(
    broker: BrokerProcess, tmp_path: Path, atomic_push: str, kept: bool
) -> None:
    marks = tmp_path / "marks"
    group = f"order-{uuid.uuid4()}"
    web = subprocess.run(
        [sys.executable, "-m", "tests.client.web_process", group, str(marks)],
        cwd=REPO,
        env=broker_env(broker.port, {"LEEK_ATOMIC_PUSH": atomic_push}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert web.returncode == -signal.SIGKILL, web.stderr
    rolled_back, committed = (uuid.UUID(line) for line in web.stdout.split())
    assert Group.objects.filter(name=group).exists()
    assert not Group.objects.filter(name=f"{group}-rolled-back").exists()
    if kept:
        assert leek.TaskHandle(committed).result(timeout=10) == group
        assert marks.read_text() == f"{group}\n"
    else:  # the dual-write gap of a push sent after the commit
        assert not Task.objects.filter(pk=committed).exists()
    assert not Task.objects.filter(pk=rolled_back).exists()


def test_outbox_pushes_are_sent_after_the_commit_when_leek_is_on_another_database(
    broker: BrokerProcess,
    outbox: None,
    settings: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(delivery, "_warned", set())
    settings.DATABASE_ROUTERS = [f"{__name__}.TasksElsewhere"]
    with transaction.atomic():
        handle = leek.push_task_to_queue(tasks.add, 1, 1)
        leek.push_task_to_queue(tasks.noop)
        assert not Task.objects.filter(pk=handle.id).exists()  # waits for the commit
    assert handle.result(timeout=10) == 2
    [warning] = [r for r in caplog.records if getattr(r, "action", "") == "outbox_unavailable"]
    assert warning.levelno == logging.WARNING
    assert "written to database tasks while the transaction is on default" in warning.getMessage()


class TasksElsewhere:
    """Routes the writes of leek's models to a database named "tasks"."""

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return "tasks" if model._meta.app_label == "leek" else None


def test_an_unknown_atomic_push_is_a_clear_error(
    transactional_db: None, leek_settings: Any
) -> None:
    leek_settings(ATOMIC_PUSH="outboxx")
    with pytest.raises(ImproperlyConfigured, match="ATOMIC_PUSH.*'on_commit', 'outbox'.*'outboxx'"):
        with transaction.atomic():
            leek.push_task_to_queue(tasks.noop)
