"""Rows stored before a move name the old paths: they still load and run."""

from __future__ import annotations

import pickle
import warnings

import pytest
from django.utils import timezone

import leek
from leek.calls import run_command, run_path
from leek.models import Task
from leek.protocol.payload import TASK_MAGIC, dump_task, load_task, signed
from tests.conftest import BrokerProcess


def _global(module: str, name: str) -> bytes:
    """A pickle of nothing but a reference to `module.name` (protocol 0's GLOBAL)."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n."


def _old_command_payload() -> bytes:
    """A payload of run_command("check") as stored while it lived in leek.commands_task
    (signed, as migration 0008 signs the rows stored before it)."""
    body = b"(" + _global("leek.commands_task", "run_command")[:-1] + b"(Vcheck\ntp0\n(dp1\ntp2\n."
    return signed(TASK_MAGIC, body)


def test_a_payload_naming_leek_commands_task_runs_the_command() -> None:
    fn, args, kwargs = load_task(_old_command_payload())
    assert fn is run_command and args == ("check",) and kwargs == {}


def test_a_payload_naming_leek_server_periodic_run_path_runs_the_path() -> None:
    blob = _global("leek.server.periodic", "run_path")
    assert pickle.loads(blob) is run_path


def test_the_migrations_default_is_still_at_leek_protocol() -> None:
    from leek.ids import new_task_id

    assert pickle.loads(_global("leek.protocol", "new_task_id")) is new_task_id


def test_new_payloads_name_the_new_paths() -> None:
    assert b"leek.calls" in dump_task(run_command, ("check",), {})
    assert b"commands_task" not in dump_task(run_command, ("check",), {})


def test_leek_notify_warns_and_still_gives_notify_admins() -> None:
    import sys

    sys.modules.pop("leek.notify", None)
    with pytest.warns(DeprecationWarning, match="leek.server.notify"):
        from leek.notify import notify_admins
    from leek.server.notify import notify_admins as moved

    assert notify_admins is moved
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from leek.server import notify  # noqa: F401 - the new path never warns


def test_a_broker_runs_a_task_stored_under_the_old_path(broker: BrokerProcess) -> None:
    task = Task.objects.create(
        name="leek.commands_task.run_command",
        payload=_old_command_payload(),
        queued_at=timezone.now(),
        spooled=True,
        max_retries=0,
    )
    assert "no issues" in leek.TaskHandle(task.id).result(timeout=20)


def test_a_task_handle_pickled_under_leek_client_api_loads() -> None:
    from leek.client.handle import TaskHandle

    assert pickle.loads(_global("leek.client.api", "TaskHandle")) is TaskHandle
    handle = TaskHandle("0190b2b0-0000-7000-8000-000000000001")
    old = pickle.dumps(handle, protocol=0).replace(b"leek.client.handle", b"leek.client.api")
    assert b"leek.client.api" in old
    assert pickle.loads(old) == handle
