"""No crash loops: an attempt its broker's end cut short counts, and the last one fails the task.

The brokers are real processes, killed for real: by the task itself
(os._exit), by SIGKILL, or by a graceful stop whose grace runs out.
"""

from __future__ import annotations

import signal
import socket
import struct
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import leek
from leek.models import FailedTask, Task
from leek.server.starts import FIRST_SLOTS, SLOT, Starts
from tests import tasks
from tests.conftest import BOTH_POOLS, BrokerProcess, free_port, wait_for
from tests.server.test_notify import written

#: Most restarts a crash-loop test allows before it calls the loop endless.
RESTARTS_BOUND = 5


def failures(handle: Any) -> list[tuple[int, str, bool]]:
    rows = FailedTask.objects.filter(task_id=handle.id).order_by("attempt", "id")
    return [(f.attempt, f.exc_type, f.final) for f in rows]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def settle(
    broker: BrokerProcess, restart: Callable[[], BrokerProcess], handle: Any
) -> tuple[BrokerProcess, int]:
    """Start the broker again each time it dies, as systemd would, until the
    task has finished; the broker left running and how many restarts it took."""
    restarts = 0
    while True:
        settled = _settled(broker, handle)
        wait_for(settled, timeout=60)
        if broker.alive:
            return broker, restarts
        assert restarts < RESTARTS_BOUND, "the broker is in a crash loop"
        broker = restart()
        restarts += 1


def _settled(broker: BrokerProcess, handle: Any) -> Callable[[], bool]:
    return lambda: not broker.alive or handle.status() in ("succeeded", "failed")


@BOTH_POOLS
def test_a_task_that_kills_its_runner_at_once_runs_twice_then_fails_for_good(
    broker_factory: Any, tmp_path: Path, pool: str
) -> None:
    port = free_port()
    outbox = tmp_path / "mail"
    env = {
        "LEEK_POOL": pool,
        "LEEK_WORKERS": "1",
        "LEEK_NOTIFY_ADMINS_ON_FAILURE": "1",
        "EMAIL_FILE_PATH": str(outbox),
    }
    first = broker_factory(port=port, **env)
    runs = tmp_path / "runs"
    handle = leek.enqueue(tasks.mark_then_exit, (str(runs), 7), max_retries=1)
    restart = lambda: broker_factory(port=port, wait=False, **env)  # noqa: E731
    broker, restarts = settle(first, restart, handle)

    assert len(lines(runs)) == 2  # max_retries + 1 starts, then never again
    assert handle.status() == "failed"
    assert failures(handle) == [
        (1, "leek.exceptions.WorkerLost", False),
        (2, "leek.exceptions.WorkerLost", True),
    ]
    # threads: the task killed the broker at each start; processes: only the child
    assert restarts == (2 if pool == "threads" else 0)
    [mail] = wait_for(lambda: written(outbox))
    assert f"Task tests.tasks.mark_then_exit ({handle.id}) failed for good on attempt 2" in mail
    lost = "its broker's process ended" if pool == "threads" else "exited with status 7"
    assert "leek.exceptions.WorkerLost: " in mail and lost in mail
    broker.wait_ready()
    assert leek.push_task_to_queue(tasks.add, 1, 2).result(timeout=20) == 3
    assert broker.alive and len(lines(runs)) == 2 and len(written(outbox)) == 1


def test_with_no_retries_a_task_that_kills_the_broker_runs_once(
    broker_factory: Any, tmp_path: Path
) -> None:
    # Its running mark has no time to reach the database: the file of starts counts it.
    port = free_port()
    env = {"LEEK_WORKERS": "1"}
    first = broker_factory(port=port, **env)
    runs = tmp_path / "runs"
    handle = leek.enqueue(tasks.mark_then_exit, (str(runs), 3), max_retries=0)
    restart = lambda: broker_factory(port=port, wait=False, **env)  # noqa: E731
    _, restarts = settle(first, restart, handle)
    assert (len(lines(runs)), restarts) == (1, 1)
    assert failures(handle) == [(1, "leek.exceptions.WorkerLost", True)]
    message = FailedTask.objects.get(task_id=handle.id).exc_message
    assert "attempt 1 was its last, so it is not run again" in message


def test_an_attempt_cut_short_by_a_graceful_stop_counts_and_can_be_the_last(
    broker_factory: Any, tmp_path: Path
) -> None:
    port = free_port()
    hook_file = tmp_path / "hook"
    env = {
        "LEEK_SHUTDOWN_GRACE": "0.3",
        "LEEK_ON_FAILURE": "tests.tasks.hook_to_file",
        "LEEK_TEST_HOOK_FILE": str(hook_file),
    }
    broker = broker_factory(port=port, **env)
    handle = leek.enqueue(tasks.sleep, (3.0,), max_retries=0)
    wait_for(lambda: handle.status() == "running")
    assert broker.kill(signal.SIGTERM) == 0
    assert handle.status() == "running"
    assert list((tmp_path / "state").glob("*.running")) == []  # its mark was written
    broker_factory(port=port, **env)
    wait_for(lambda: handle.status() == "failed")
    assert failures(handle) == [(1, "leek.exceptions.Interrupted", True)]
    assert wait_for(lambda: lines(hook_file)) == [
        f"{handle.id} tests.tasks.sleep leek.exceptions.Interrupted 1"
    ]
    assert Task.objects.get(pk=handle.id).finished_at is not None


def test_an_adopted_task_whose_last_attempt_was_cut_short_fails_for_good(
    broker_factory: Any, tmp_path: Path
) -> None:
    hook_file = tmp_path / "hook"
    env = {
        "LEEK_HEARTBEAT_TIMEOUT": "1",
        "LEEK_ON_FAILURE": "tests.tasks.hook_to_file",
        "LEEK_TEST_HOOK_FILE": str(hook_file),
    }
    first = broker_factory(**env)
    handle = leek.enqueue(tasks.sleep, (5.0,), max_retries=0)
    wait_for(lambda: handle.status() == "running")
    first.kill(signal.SIGKILL)
    broker_factory(**env)  # another node: it adopts once the first is silent
    wait_for(lambda: handle.status() == "failed")
    assert failures(handle) == [(1, "leek.exceptions.WorkerLost", True)]
    failure = FailedTask.objects.get(task_id=handle.id)
    assert failure.broker == f"{socket.gethostname()}:{first.port}"  # where it was cut short
    assert "stopped answering" in failure.exc_message
    assert wait_for(lambda: lines(hook_file)) == [
        f"{handle.id} tests.tasks.sleep leek.exceptions.WorkerLost 1"
    ]


@BOTH_POOLS
def test_a_time_limit_reaches_the_admins_and_the_failure_hooks_once(
    broker_factory: Any, tmp_path: Path, pool: str
) -> None:
    outbox = tmp_path / "mail"
    hook_file = tmp_path / "hook"
    broker_factory(
        LEEK_POOL=pool,
        LEEK_ON_FAILURE="tests.tasks.hook_to_file",
        LEEK_TEST_HOOK_FILE=str(hook_file),
        LEEK_NOTIFY_ADMINS_ON_FAILURE="1",
        EMAIL_FILE_PATH=str(outbox),
    )
    handle = leek.enqueue(tasks.spin, (30,), timeout=0.5, max_retries=1)
    with pytest.raises(leek.TaskFailed, match="timed out"):
        handle.result(timeout=30)
    assert wait_for(lambda: lines(hook_file)) == [
        f"{handle.id} tests.tasks.spin leek.exceptions.TaskTimeout 2"
    ]
    [mail] = wait_for(lambda: written(outbox))
    assert f"Task tests.tasks.spin ({handle.id}) failed for good on attempt 2" in mail
    assert "leek.exceptions.TaskTimeout: timed out after 0.5 s" in mail


def test_the_file_of_starts_keeps_each_workers_task_until_its_attempt_ends(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state" / "node.running"
    starts = Starts(path)
    assert starts.previous() == []
    starts.started(uuid.uuid4(), 1, 1.0)  # before begin(): nothing is written
    assert not path.exists()
    starts.begin()
    ids = [uuid.uuid4() for _ in range(3)]
    written_all = threading.Barrier(4)
    done = threading.Event()

    def worker(i: int) -> None:
        starts.started(ids[i], i + 1, 100.0 + i)
        if i == 2:
            starts.ended()
        written_all.wait(5)
        done.wait(5)  # alive till the file is read: each thread keeps its own slot

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    written_all.wait(5)
    assert path.read_bytes()[3 * SLOT :] == bytes(path.stat().st_size - 3 * SLOT)
    assert sorted(Starts(path).previous()) == sorted([(ids[0], 1, 100.0), (ids[1], 2, 101.0)])
    done.set()
    for thread in threads:
        thread.join()
    starts.begin()  # the next life starts the file anew
    assert Starts(path).previous() == []
    starts.close(remove=True)  # a graceful stop
    assert not path.exists()


def test_the_file_of_starts_grows_past_its_first_slots_and_skips_a_torn_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "node.running"
    starts = Starts(path)
    starts.begin()
    count = FIRST_SLOTS + 3
    ids = [uuid.uuid4() for _ in range(count)]
    written_all = threading.Barrier(count)

    def worker(i: int) -> None:
        starts.started(ids[i], 1, float(i))
        written_all.wait(10)  # alive till all have written: each keeps its own slot

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    found = Starts(path).previous()
    assert sorted(found) == sorted((ids[i], 1, float(i)) for i in range(count))
    # A process killed while it copied a slot: the slot's first bytes are new.
    data = bytearray(path.read_bytes())
    data[SLOT : SLOT + 8] = uuid.uuid4().bytes[:8]
    path.write_bytes(bytes(data))
    assert len(Starts(path).previous()) == count - 1
    assert "a torn slot in the file of running tasks was skipped" in caplog.text
    starts.close()


def test_a_file_of_starts_of_the_earlier_format_still_counts_its_starts(tmp_path: Path) -> None:
    # Written by a broker before slots carried a CRC: those 4 bytes were zeros.
    path = tmp_path / "node.running"
    task = uuid.uuid4()
    path.write_bytes(struct.pack("<16sId4x", task.bytes, 2, 7.0) + bytes(SLOT))
    assert Starts(path).previous() == [(task, 2, 7.0)]


def test_a_broker_still_writing_the_file_of_its_last_life_leaves_the_new_one_alone(
    tmp_path: Path,
) -> None:
    # Two brokers started under one name: the second one's file replaces the
    # first one's, which writes on into its own, never read again.
    path = tmp_path / "node.running"
    first, second = Starts(path), Starts(path)
    first.begin()
    first.started(uuid.uuid4(), 1, 1.0)
    second.begin()
    task = uuid.uuid4()
    second.started(task, 2, 2.0)
    first.started(uuid.uuid4(), 3, 3.0)  # no SIGBUS: its file was not cut short
    assert Starts(path).previous() == [(task, 2, 2.0)]
    first.close()
    second.close(remove=True)
    assert list(tmp_path.iterdir()) == []


def test_a_file_of_starts_that_cannot_be_written_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    starts = Starts(blocker / "node.running")
    starts.begin()
    starts.started(uuid.uuid4(), 1, 1.0)
    assert "cannot create the file of running tasks" in caplog.text
