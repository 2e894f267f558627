"""Unique keys on real brokers: one task per key while it waits, across
processes, brokers and the database fallback."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import leek
from leek.client import connection as client
from leek.models import Task
from tests.conftest import REPO, broker_env, free_port, wait_for
from tests.server import control_tasks


def hold(tmp_path: Path, name: str = "gate") -> tuple[str, Path]:
    """A gate path for control_tasks.gated, and the file that opens it."""
    gate = tmp_path / name
    return str(gate), gate


def test_fifty_pushes_with_one_key_from_four_processes_leave_one_task(
    broker_factory: Any, tmp_path: Path
) -> None:
    broker = broker_factory(LEEK_WORKERS="1")
    blocker_gate, blocker_open = hold(tmp_path, "blocker")
    blocker = leek.enqueue(control_tasks.gated, (blocker_gate,))
    wait_for(lambda: blocker.status() == "running")  # the keyed task waits behind it
    start = tmp_path / "start"
    counts = [13, 13, 12, 12]
    pushers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.server.key_pusher", "sync-user-42", str(n), str(start)],
            cwd=REPO,
            env=broker_env(broker.port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in counts
    ]
    start.touch()
    ids = []
    for pusher in pushers:
        out, err = pusher.communicate(timeout=120)
        assert pusher.returncode == 0, err
        ids += out.split()
    assert len(ids) == 50
    keyed = Task.objects.filter(key="sync-user-42")
    assert keyed.count() == 1
    only = keyed.get()
    assert only.status == "queued"
    assert set(ids) == {str(only.id)}
    blocker_open.touch()
    Path(f"{start}.open").touch()
    assert leek.TaskHandle(only.id).result(timeout=30) == f"{start}.open"


def test_a_push_after_the_keyed_task_finished_makes_a_new_task(broker: Any, tmp_path: Path) -> None:
    first = leek.enqueue(control_tasks.mark, (str(tmp_path / "m"), "one"), key="k")
    assert first.result(timeout=20) == "one"
    second = leek.enqueue(control_tasks.mark, (str(tmp_path / "m"), "two"), key="k")
    assert second.id != first.id
    assert second.result(timeout=20) == "two"
    assert Task.objects.filter(key="k", lock_key=None).count() == 2


def test_a_running_task_frees_its_key_unless_key_running(broker: Any, tmp_path: Path) -> None:
    gate, opened = hold(tmp_path)
    plain = leek.enqueue(control_tasks.gated, (gate,), key="plain")
    held = leek.enqueue(control_tasks.gated, (gate,), key="held", key_running=True)
    wait_for(lambda: plain.status() == "running" and held.status() == "running")
    # The running marks reach the database once the tasks have run a moment.
    wait_for(lambda: not Task.objects.filter(pk=plain.id).exclude(lock_key=None).exists())
    again_plain = leek.enqueue(control_tasks.mark, (str(tmp_path / "m"), "p"), key="plain")
    again_held = leek.enqueue(control_tasks.mark, (str(tmp_path / "m"), "h"), key="held")
    assert again_plain.id != plain.id
    assert again_held.id == held.id
    opened.touch()
    assert held.result(timeout=20) == gate
    after = leek.enqueue(control_tasks.mark, (str(tmp_path / "m"), "h2"), key="held")
    assert after.id != held.id
    assert after.result(timeout=20) == "h2"


def test_a_key_running_task_keeps_its_key_while_it_waits_for_a_retry(
    broker_factory: Any, tmp_path: Path
) -> None:
    broker_factory(LEEK_RETRY_BACKOFF="1")
    path = str(tmp_path / "fixed")
    flaky = leek.enqueue(
        control_tasks.fail_while_missing, (path,), key="retry", key_running=True, max_retries=5
    )
    wait_for(lambda: Task.objects.get(pk=flaky.id).attempts >= 1)
    assert leek.enqueue(control_tasks.fail_while_missing, (path,), key="retry").id == flaky.id
    Path(path).touch()
    assert flaky.result(timeout=30) == path
    assert Task.objects.get(pk=flaky.id).lock_key is None


def test_a_cancelled_task_frees_its_key(broker_factory: Any, tmp_path: Path) -> None:
    broker_factory(LEEK_WORKERS="1")
    gate, opened = hold(tmp_path)
    blocker = leek.enqueue(control_tasks.gated, (gate,))
    wait_for(lambda: blocker.status() == "running")
    first = leek.enqueue(control_tasks.mark, (str(tmp_path / "m"), "1"), key="c")
    assert first.cancel()
    second = leek.enqueue(control_tasks.mark, (str(tmp_path / "m"), "2"), key="c")
    assert second.id != first.id
    opened.touch()
    assert second.result(timeout=20) == "2"


def test_a_task_decorator_key_is_computed_from_the_arguments(
    broker_factory: Any, tmp_path: Path
) -> None:
    broker_factory(LEEK_WORKERS="1")
    gate, opened = hold(tmp_path)
    blocker = leek.enqueue(control_tasks.gated, (gate,))
    wait_for(lambda: blocker.status() == "running")
    marker = leek.task(key=lambda path, text: f"mark-{text}")(control_tasks.mark)
    path = str(tmp_path / "m")
    a1, a2, b = marker.delay(path, "a"), marker.delay(path, "a"), marker.delay(path, "b")
    assert a1.id == a2.id != b.id
    assert Task.objects.get(pk=a1.id).key == "mark-a"
    opened.touch()
    assert (a1.result(timeout=20), b.result(timeout=20)) == ("a", "b")


def test_keyed_pushes_spooled_without_a_broker_are_deduplicated(
    broker_factory: Any, leek_settings: Any, tmp_path: Path
) -> None:
    port = free_port()
    leek_settings(PORT=port, CONNECT_TIMEOUT=0.5)
    path = str(tmp_path / "m")
    handles = [leek.enqueue(control_tasks.mark, (path, "once"), key="spooled") for _ in range(5)]
    assert len({h.id for h in handles}) == 1
    assert Task.objects.filter(key="spooled", spooled=True).count() == 1
    broker_factory(port=port)
    assert handles[0].result(timeout=20) == "once"
    # A broker's push of the same key, now that the spooled task finished, is new.
    assert leek.enqueue(control_tasks.mark, (path, "twice"), key="spooled").id != handles[0].id


def test_keyed_pushes_of_a_broker_and_the_spool_share_one_key(
    broker_factory: Any, leek_settings: Any, tmp_path: Path
) -> None:
    broker = broker_factory(LEEK_WORKERS="1")
    gate, opened = hold(tmp_path)
    blocker = leek.enqueue(control_tasks.gated, (gate,))
    wait_for(lambda: blocker.status() == "running")
    path = str(tmp_path / "m")
    by_broker = leek.enqueue(control_tasks.mark, (path, "x"), key="shared")
    client.close()
    leek_settings(PORT=free_port(), CONNECT_TIMEOUT=0.5)  # no broker there: the spool
    by_spool = leek.enqueue(control_tasks.mark, (path, "x"), key="shared")
    assert by_spool.id == by_broker.id
    leek_settings(PORT=broker.port)
    opened.touch()
    assert by_broker.result(timeout=20) == "x"
    assert Task.objects.filter(key="shared").count() == 1


def test_a_batch_of_many_keyed_pushes_keeps_the_others(broker: Any, tmp_path: Path) -> None:
    """One push whose key is held does not lose the tasks beside it in the same commit."""
    from leek.client.api import message

    path = str(tmp_path / "m")
    first = message(control_tasks.mark, (path, "k"), key="batch")
    second = message(control_tasks.mark, (path, "k"), key="batch")
    plain = message(control_tasks.mark, (path, "plain"))
    ids = client.call("enqueue_many", [first, second, plain], push=True)
    assert ids == [first["id"], first["id"], plain["id"]]
    assert leek.TaskHandle(plain["id"]).result(timeout=20) == "plain"
    assert leek.TaskHandle(first["id"]).result(timeout=20) == "k"
    assert not Task.objects.filter(pk=second["id"]).exists()


@pytest.mark.parametrize(
    ("key", "error"),
    [("", "1 to 255 characters"), ("x" * 256, "1 to 255 characters"), ("a\x00b", "NUL")],
)
def test_a_bad_key_is_refused_at_the_call(key: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        leek.enqueue(control_tasks.mark, ("p", "t"), key=key)


def test_key_running_without_a_key_is_refused() -> None:
    with pytest.raises(ValueError, match="key_running needs a key"):
        leek.enqueue(control_tasks.mark, ("p", "t"), key_running=True)


def test_an_outbox_push_whose_key_is_held_gets_the_holders_handle(
    broker_factory: Any, leek_settings: Any, tmp_path: Path
) -> None:
    from django.db import transaction

    broker_factory(LEEK_WORKERS="1")
    gate, opened = hold(tmp_path)
    blocker = leek.enqueue(control_tasks.gated, (gate,))
    wait_for(lambda: blocker.status() == "running")
    path = str(tmp_path / "m")
    first = leek.enqueue(control_tasks.mark, (path, "x"), key="outbox")
    leek_settings(ATOMIC_PUSH="outbox")
    with transaction.atomic():
        inside = leek.enqueue(control_tasks.mark, (path, "x"), key="outbox")
        fresh = leek.enqueue(control_tasks.mark, (path, "y"), key="outbox-new")
    assert inside.id == first.id
    assert Task.objects.filter(key="outbox").count() == 1
    opened.touch()
    assert (first.result(timeout=20), fresh.result(timeout=20)) == ("x", "y")


def test_a_task_function_enqueue_overrides_the_decorator_key(
    broker_factory: Any, tmp_path: Path
) -> None:
    broker_factory(LEEK_WORKERS="1")
    gate, opened = hold(tmp_path)
    blocker = leek.enqueue(control_tasks.gated, (gate,))
    wait_for(lambda: blocker.status() == "running")
    marker = leek.task(key="fixed")(control_tasks.mark)
    path = str(tmp_path / "m")
    one = marker.delay(path, "a")
    same = marker.delay(path, "b")
    other = marker.enqueue((path, "c"), key=lambda p, text: f"own-{text}")
    assert one.id == same.id != other.id
    assert Task.objects.get(pk=other.id).key == "own-c"
    opened.touch()
    assert (one.result(timeout=20), other.result(timeout=20)) == ("a", "c")


def test_a_delayed_task_holds_its_key_until_it_starts(broker: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "m")
    later = leek.enqueue(control_tasks.mark, (path, "x"), key="d", delay=timedelta(seconds=1))
    assert leek.enqueue(control_tasks.mark, (path, "x"), key="d").id == later.id
    assert later.result(timeout=20) == "x"
    assert Task.objects.filter(key="d").count() == 1


def test_a_task_waiting_for_a_retry_holds_no_key_without_key_running(
    broker_factory: Any, tmp_path: Path
) -> None:
    broker_factory(LEEK_RETRY_BACKOFF="1")
    path = str(tmp_path / "fixed")
    flaky = leek.enqueue(control_tasks.fail_while_missing, (path,), key="r", max_retries=5)
    wait_for(lambda: Task.objects.get(pk=flaky.id).attempts >= 1)
    again = leek.enqueue(control_tasks.fail_while_missing, (path,), key="r")
    assert again.id != flaky.id
    Path(path).touch()
    assert (flaky.result(timeout=30), again.result(timeout=30)) == (path, path)
