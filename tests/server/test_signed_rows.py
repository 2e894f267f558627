"""Payloads and results at rest are signed: a row written around leek never reaches pickle.

A real broker adopts rows written straight into the database, as a reporting
user with write access or an SQL injection elsewhere in the site would write
them, in each worker pool; the client and the tasks framework's backend read
result blobs written the same way.
"""

from __future__ import annotations

import importlib
import os
import pickle
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

import leek
from leek.exceptions import AuthenticationFailed
from leek.models import Event, FailedTask, SuccessTask, Task
from leek.protocol.payload import (
    SIGNED_PREFIX,
    TASK_MAGIC,
    VALUE_MAGIC,
    dump_task,
    dump_value,
    is_signed,
    load_task,
    load_value,
    signed,
)
from tests import tasks
from tests.conftest import BOTH_POOLS, BrokerProcess, free_port, wait_for

REFUSED = "leek.exceptions.AuthenticationFailed"


class Touch:
    """Unpickling this runs a shell command that creates a file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.path}",))


def flipped(blob: bytes, at: int) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 0x01]) + blob[at + 1 :]


def write_row(payload: bytes, **fields: Any) -> uuid.UUID:
    """A queued task row written straight into the table, spooled for a broker to adopt."""
    values: dict[str, Any] = {
        "name": "tests.tasks.append_line",
        "payload": payload,
        "queued_at": timezone.now(),
        "spooled": True,
        "max_retries": 3,
        **fields,
    }
    return Task.objects.create(**values).id


def ended(task_id: uuid.UUID) -> Task:
    row: Task = wait_for(
        lambda: Task.objects.filter(pk=task_id, status__in=["succeeded", "failed"]).first()
    )
    return row


def stored(blob: bytes | memoryview | None) -> bytes:
    assert blob is not None
    return bytes(blob)


@BOTH_POOLS
def test_a_tampered_payload_fails_its_task_for_good_unread(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    genuine = dump_task(tasks.append_line, (str(tmp_path / "flipped"), "ran"), {})
    rows = {
        # a byte of its pickle changed: the function would write the file
        "flipped": write_row(flipped(genuine, len(genuine) - 5)),
        # a bare pickle whose loading runs a shell command
        "unsigned": write_row(pickle.dumps(Touch(tmp_path / "unsigned"))),
        # the same behind the magic and tag of a genuine payload
        "stolen-tag": write_row(genuine[:SIGNED_PREFIX] + pickle.dumps(Touch(tmp_path / "stolen"))),
        # a signed return value that looks like a call, in the payload column
        "a-value": write_row(dump_value((os.system, (f"touch {tmp_path / 'value'}",), {}))),
    }
    control = write_row(dump_task(tasks.append_line, (str(tmp_path / "control"), "ran"), {}))
    assert ended(control).status == "succeeded"  # the broker adopts and runs written rows
    for kind, task_id in rows.items():
        row = ended(task_id)
        assert (row.status, row.attempts) == ("failed", 1), kind  # never retried
        (failure,) = FailedTask.objects.filter(task_id=task_id)
        assert failure.exc_type == REFUSED and failure.final, kind
        assert str(task_id) in failure.exc_message and "refused unread" in failure.exc_message
        with pytest.raises(leek.TaskFailed, match="refused unread") as caught:
            leek.TaskHandle(task_id).result(timeout=5)
        assert caught.value.remote_type == REFUSED
        event = Event.objects.get(data__task=str(task_id))  # written before the outcome
        assert event.kind == "security.payload_refused" and str(task_id) in event.message
        assert event.data["broker"] and event.data["attempt"] == 1
    # (the test brokers keep their file of starts in tmp_path/state)
    ran = sorted(p.name for p in tmp_path.iterdir() if not p.suffix and p.name != "state")
    assert ran == ["control"]


def test_a_task_spooled_without_a_broker_is_signed_and_runs_once_one_is_up(
    broker_factory: Any, leek_settings: Any
) -> None:
    port = free_port()
    leek_settings(PORT=port, CONNECT_TIMEOUT=0.5, FALLBACK="database")
    handle = leek.push_task_to_queue(tasks.add, 20, 22)
    row = Task.objects.get(pk=handle.id)
    assert row.spooled and is_signed(bytes(row.payload))
    assert load_task(bytes(row.payload), handle.id)[1] == (20, 22)
    broker_factory(port=port)
    assert handle.result(timeout=20) == 42


def test_a_tampered_result_is_refused_by_the_client_unread(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    handle = leek.push_task_to_queue(tasks.add, 2, 3)
    assert handle.result(timeout=10) == 5
    results = SuccessTask.objects.filter(task_id=handle.id)
    blob = stored(results.get().result)
    assert blob.startswith(VALUE_MAGIC)
    for tampered in (
        flipped(blob, len(blob) - 2),
        pickle.dumps(Touch(tmp_path / "ran")),
        blob[:SIGNED_PREFIX] + pickle.dumps(Touch(tmp_path / "ran")),
        dump_task(os.system, (f"touch {tmp_path / 'ran'}",), {}),
    ):
        results.update(result=tampered)
        with pytest.raises(AuthenticationFailed, match="refused unread"):
            handle.result(timeout=5)
    assert not (tmp_path / "ran").exists()
    results.update(result=blob)
    assert handle.result(timeout=5) == 5


def test_a_requeued_task_keeps_its_signed_payload_and_runs_again(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    from leek.cli.repair import requeue

    handle = leek.enqueue(tasks.flaky, args=(str(tmp_path / "runs"), 1), max_retries=0)
    with pytest.raises(leek.TaskFailed, match="flaky run 1"):
        handle.result(timeout=10)
    payload = bytes(Task.objects.get(pk=handle.id).payload)
    assert requeue([handle.id]) == 1
    assert handle.result(timeout=10) == 2
    assert bytes(Task.objects.get(pk=handle.id).payload) == payload


@pytest.fixture
def jobs(settings: Any) -> ModuleType:
    """The framework tasks of tests/backends, with TASKS as their brokers have it."""
    from tests.backends import settings as backend_settings

    settings.TASKS = backend_settings.TASKS
    from tests.backends import tasks as framework_tasks

    return framework_tasks


def test_a_tampered_row_is_refused_by_the_backends_get_result_unread(
    broker_factory: Any, jobs: ModuleType, tmp_path: Path
) -> None:
    from tests.backends.framework import TaskResultStatus, task_backends

    broker_factory(DJANGO_SETTINGS_MODULE="tests.backends.settings")
    result = jobs.add.enqueue(2, 3)
    backend = task_backends["default"]
    wait_for(lambda: backend.get_result(result.id).status == TaskResultStatus.SUCCESSFUL)
    assert backend.get_result(result.id).return_value == 5
    results = SuccessTask.objects.filter(task_id=result.id)
    blob = stored(results.get().result)
    for tampered in (flipped(blob, SIGNED_PREFIX + 1), pickle.dumps(Touch(tmp_path / "ran"))):
        results.update(result=tampered)
        with pytest.raises(AuthenticationFailed, match=f"task {result.id}'s result"):
            backend.get_result(result.id)
    results.update(result=blob)
    row = Task.objects.filter(pk=result.id)
    payload = bytes(row.get().payload)
    for tampered in (flipped(payload, 8), pickle.dumps(Touch(tmp_path / "ran"))):
        row.update(payload=tampered)
        with pytest.raises(AuthenticationFailed, match=f"task {result.id}'s payload"):
            backend.get_result(result.id)
    assert not (tmp_path / "ran").exists()
    row.update(payload=payload)
    assert backend.get_result(result.id).return_value == 5


# -- rows stored before leek signed them ---------------------------------------------

MIGRATION = "0008_signed_payloads"


def test_the_migration_signs_old_rows_and_its_reverse_strips_them(
    broker_factory: Any, leek_settings: Any
) -> None:
    from django.db.migrations.executor import MigrationExecutor

    module = importlib.import_module(f"leek.migrations.{MIGRATION}")
    before = [d for d in module.Migration.dependencies if d[0] == "leek"]
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes("leek")
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    OldTask, OldSuccess = old.get_model("leek", "Task"), old.get_model("leek", "SuccessTask")
    now = timezone.now()
    queued = OldTask.objects.create(
        name="tests.tasks.add",
        payload=pickle.dumps((tasks.add, (20, 22), {}), protocol=5),
        queued_at=now,
        spooled=True,
    )
    done = OldTask.objects.create(
        name="tests.tasks.add", payload=pickle.dumps((tasks.add, (1, 1), {})), queued_at=now
    )
    done.status, done.finished_at = "succeeded", now
    done.save()
    ran = {"attempt": 1, "started_at": now, "finished_at": now, "duration": 0.0}
    OldSuccess.objects.create(task=done, name="tests.tasks.add", result=pickle.dumps(2), **ran)
    nothing = OldTask.objects.create(name="t", payload=b"", queued_at=now, status="cancelled")
    OldSuccess.objects.create(task=nothing, name="t", result=None, **ran)
    with pytest.raises(AuthenticationFailed, match="no signature"):
        load_task(bytes(Task.objects.values_list("payload", flat=True).get(pk=queued.pk)))

    executor = MigrationExecutor(connection)
    executor.migrate([("leek", MIGRATION)])
    signed_payload = bytes(Task.objects.values_list("payload", flat=True).get(pk=queued.pk))
    assert load_task(signed_payload)[1] == (20, 22)
    assert is_signed(bytes(Task.objects.values_list("payload", flat=True).get(pk=nothing.pk)))
    assert load_value(SuccessTask.objects.get(task_id=done.pk).result) == 2
    assert SuccessTask.objects.get(task_id=nothing.pk).result is None

    # Applied again, it signs nothing twice.
    module.sign_rows(executor.loader.project_state([("leek", MIGRATION)]).apps, None)
    assert bytes(Task.objects.values_list("payload", flat=True).get(pk=queued.pk)) == signed_payload

    executor = MigrationExecutor(connection)
    executor.migrate(before)  # back: the bare pickles an older leek reads
    assert (
        bytes(Task.objects.values_list("payload", flat=True).get(pk=queued.pk))
        == signed_payload[SIGNED_PREFIX:]
    )
    assert stored(SuccessTask.objects.get(task_id=done.pk).result) == pickle.dumps(2)

    executor = MigrationExecutor(connection)
    executor.migrate(latest)
    broker_factory()
    assert leek.TaskHandle(queued.pk).result(timeout=20) == 42
    assert leek.TaskHandle(done.pk).result(timeout=5) == 2


def test_signed_is_what_the_migration_writes() -> None:
    body = pickle.dumps((tasks.add, (1, 2), {}))
    assert load_task(signed(TASK_MAGIC, body))[1] == (1, 2)
