"""cancel() answering True means the task never runs, whoever races it.

Real brokers, real workers of both pools, real sockets; each task leaves a
line in a file when it runs, so "never ran" is read from what ran, not from
the status the cancel wrote.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.utils import timezone

import leek
from leek.client import connection as client
from leek.models import BrokerNode, FailedTask, SuccessTask, Task
from leek.server.dispatch import Dispatcher
from leek.server.rows import Job, Ready
from tests import tasks
from tests.conftest import BOTH_POOLS, BrokerFactory, BrokerProcess, free_port, wait_for

RACED = 30
CANCELLERS = 3


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def blocked(
    broker_factory: BrokerFactory, tmp_path: Path, pool: str = "threads"
) -> tuple[Any, Path]:
    """A broker of one worker, busy with a task that waits for the returned gate file."""
    broker_factory(LEEK_WORKERS="1", LEEK_POOL=pool)
    gate = tmp_path / "gate"
    blocker = leek.enqueue(tasks.wait_for_file, args=(str(gate),))
    wait_for(lambda: blocker.status() == "running")
    return blocker, gate


def reached(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `predicate` closely until it holds or `timeout` passes (then go on)."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.0002)


def statuses(handles: list[Any]) -> dict[Any, str]:
    return dict(Task.objects.filter(pk__in=[h.id for h in handles]).values_list("id", "status"))


def finished(handles: list[Any]) -> bool:
    return set(statuses(handles).values()) <= {"succeeded", "cancelled"}


@BOTH_POOLS
def test_a_task_whose_cancel_said_true_never_ran_however_the_workers_race(
    broker_factory: BrokerFactory, tmp_path: Path, pool: str
) -> None:
    blocker, gate = blocked(broker_factory, tmp_path, pool)
    marks = tmp_path / "marks"
    handles = [leek.enqueue(tasks.append_line, args=(str(marks), str(i))) for i in range(RACED)]
    answers: dict[Any, list[bool]] = {h.id: [] for h in handles}
    start = threading.Barrier(CANCELLERS + 1)

    def passed(i: int) -> Callable[[], bool]:
        return lambda: str(i) in lines(marks) or any(answers[handles[i].id])

    def cancel_all() -> None:
        """Cancel each task as the worker reaches it: once the one before it ran
        (or was cancelled), so that some cancels meet a task just taken."""
        try:
            start.wait()
            for i, handle in enumerate(handles):
                if i:
                    reached(passed(i - 1))
                answers[handle.id].append(handle.cancel())
        finally:
            client.close()

    threads = [threading.Thread(target=cancel_all) for _ in range(CANCELLERS)]
    for thread in threads:
        thread.start()
    start.wait()
    gate.touch()  # the worker drains the tasks while the cancels come
    for thread in threads:
        thread.join(60)
    blocker.result(timeout=30)
    wait_for(lambda: finished(handles), timeout=60)

    ran = Counter(lines(marks))
    now = statuses(handles)
    for i, handle in enumerate(handles):
        if any(answers[handle.id]):
            assert answers[handle.id].count(True) == 1, "cancelled twice"
            assert ran[str(i)] == 0, f"task {i} ran though its cancel said True"
            assert now[handle.id] == "cancelled"
            assert not SuccessTask.objects.filter(task_id=handle.id).exists()
            assert not FailedTask.objects.filter(task_id=handle.id).exists()
        else:
            assert ran[str(i)] == 1, f"task {i} ran {ran[str(i)]} times"
            assert now[handle.id] == "succeeded"
    assert leek.waiting() == (True, 0)


@BOTH_POOLS
def test_a_task_cancelled_in_the_delayed_heap_never_runs_when_its_time_comes(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    doomed = leek.enqueue(tasks.append_line, args=(str(marks), "doomed"), delay=3)
    sentinel = leek.enqueue(tasks.append_line, args=(str(marks), "sentinel"), delay=3.5)
    assert leek.waiting() == (True, 2)
    assert doomed.cancel() is True
    assert leek.waiting() == (True, 1)
    assert sentinel.result(timeout=30) == "sentinel"  # due after the cancelled one
    assert lines(marks) == ["sentinel"]
    assert doomed.status() == "cancelled"
    assert doomed.cancel() is False  # already cancelled


def fallback_client(leek_settings: Callable[..., None], **values: Any) -> None:
    """Point this test's client at a port where no broker listens: cancels go
    to the database."""
    client.close()
    leek_settings(PORT=free_port(), CONNECT_TIMEOUT=0.5, **values)


def test_the_database_fallback_leaves_a_task_a_live_broker_holds_to_run(
    broker_factory: BrokerFactory, tmp_path: Path, leek_settings: Callable[..., None]
) -> None:
    blocker, gate = blocked(broker_factory, tmp_path)
    port = broker_factory.processes[-1].port
    marks = tmp_path / "marks"
    held = leek.enqueue(tasks.append_line, args=(str(marks), "held"))
    fallback_client(leek_settings)
    assert held.cancel() is False
    assert held.status() == "queued"
    client.close()
    leek_settings(PORT=port)
    gate.touch()
    assert held.result(timeout=30) == "held"
    assert lines(marks) == ["held"]


def test_the_database_fallback_cancels_a_task_of_a_dead_broker_and_no_broker_runs_it(
    broker_factory: BrokerFactory, tmp_path: Path, leek_settings: Callable[..., None]
) -> None:
    blocker, gate = blocked(broker_factory, tmp_path)
    dead = broker_factory.processes[-1]
    marks = tmp_path / "marks"
    orphan = leek.enqueue(tasks.append_line, args=(str(marks), "orphan"))
    dead.kill(signal.SIGKILL)
    fallback_client(leek_settings, HEARTBEAT_TIMEOUT=1.0)

    def silent() -> bool:
        since = timezone.now() - timedelta(seconds=1.0)
        return BrokerNode.objects.filter(heartbeat_at__lt=since).exists()

    wait_for(silent)
    assert orphan.cancel() is True
    assert orphan.status() == "cancelled"
    gate.touch()
    broker_factory(LEEK_WORKERS="1", port=dead.port)  # it recovers what it owned
    assert blocker.result(timeout=30) == str(gate)  # run again: it was running when killed
    sentinel = leek.enqueue(tasks.append_line, args=(str(marks), "sentinel"))
    assert sentinel.result(timeout=30) == "sentinel"
    assert lines(marks) == ["sentinel"]
    assert orphan.status() == "cancelled"


def test_cancel_running_kills_the_worker_process_and_the_pool_goes_on(
    broker_factory: BrokerFactory,
) -> None:
    broker_factory(LEEK_WORKERS="1", LEEK_POOL="processes")
    first = leek.enqueue(tasks.pid)
    before = first.result(timeout=30)
    endless = leek.enqueue(tasks.spin, args=(3600,))
    wait_for(lambda: endless.status() == "running")
    assert endless.cancel() is False  # running: a plain cancel leaves it be
    assert endless.cancel(running=True) is True
    assert endless.status() == "cancelled"
    failure = wait_for(lambda: FailedTask.objects.filter(task_id=endless.id).first())
    assert failure.exc_type == "leek.exceptions.TaskCancelled"
    assert failure.final
    after = leek.enqueue(tasks.pid).result(timeout=30)
    assert after != before  # a new worker process
    assert endless.status() == "cancelled"
    assert FailedTask.objects.filter(task_id=endless.id).count() == 1  # not retried
    wait_for_exception(endless)


def wait_for_exception(handle: Any) -> None:
    try:
        handle.result(timeout=5)
    except leek.TaskCancelled:
        return
    raise AssertionError("result() of a cancelled task did not raise TaskCancelled")


def test_cancel_running_tells_a_thread_task_which_stops_and_stays_cancelled(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    looping = leek.enqueue(tasks.until_cancelled, args=(str(marks),))
    wait_for(lambda: lines(marks) == ["started"])
    assert looping.cancel(running=True) is True
    wait_for(lambda: lines(marks) == ["started", "stopped"])
    wait_for(lambda: SuccessTask.objects.filter(task_id=looping.id).exists())
    assert looping.status() == "cancelled"
    wait_for_exception(looping)
    assert leek.push_task_to_queue(tasks.add, 1, 2).result(timeout=10) == 3


@BOTH_POOLS
def test_cancel_running_of_a_queued_task_is_a_plain_cancel(
    broker_factory: BrokerFactory, tmp_path: Path, pool: str
) -> None:
    blocker, gate = blocked(broker_factory, tmp_path, pool)
    marks = tmp_path / "marks"
    waiting = leek.enqueue(tasks.append_line, args=(str(marks), "waiting"))
    assert waiting.cancel(running=True) is True
    gate.touch()
    sentinel = leek.enqueue(tasks.append_line, args=(str(marks), "sentinel"))
    assert sentinel.result(timeout=30) == "sentinel"
    assert lines(marks) == ["sentinel"]
    assert waiting.status() == "cancelled"


def test_an_outcome_never_overwrites_cancelled(broker: BrokerProcess, tmp_path: Path) -> None:
    returns = tmp_path / "returns"
    raises = tmp_path / "raises"
    deaf = leek.enqueue(tasks.ignore_cancel, args=(str(returns), "value"))
    failing = leek.enqueue(tasks.ignore_cancel, args=(str(raises), "raise"), max_retries=3)
    wait_for(lambda: lines(returns) == ["started"] and lines(raises) == ["started"])
    assert deaf.cancel(running=True) is True
    assert failing.cancel(running=True) is True
    Path(f"{returns}.go").touch()
    Path(f"{raises}.go").touch()
    success = wait_for(lambda: SuccessTask.objects.filter(task_id=deaf.id).first())
    assert success.result_repr == "'value'"
    failure = wait_for(lambda: FailedTask.objects.filter(task_id=failing.id).first())
    assert failure.final  # asked to stop: not retried
    assert leek.push_task_to_queue(tasks.add, 1, 2).result(timeout=10) == 3
    assert deaf.status() == "cancelled"
    assert failing.status() == "cancelled"
    assert FailedTask.objects.filter(task_id=failing.id).count() == 1
    assert lines(raises) == ["started"]


def test_cancel_running_on_another_broker_than_the_one_running_it_says_false(
    broker_factory: BrokerFactory, tmp_path: Path, leek_settings: Callable[..., None]
) -> None:
    other = broker_factory()
    blocker, gate = blocked(broker_factory, tmp_path)
    client.close()
    leek_settings(PORT=other.port)
    assert blocker.cancel(running=True) is False
    assert blocker.status() == "running"
    gate.touch()
    assert blocker.result(timeout=30) == str(gate)


def drain(dispatcher: Dispatcher) -> list[uuid.UUID]:
    taken = []
    while (item := dispatcher.take(timeout=0)) is not None:
        taken.append(item[0].id)
    return taken


def test_a_held_task_a_worker_meets_is_set_aside_then_given_back_when_not_cancelled() -> None:
    dispatcher = Dispatcher(memory_payloads=0)
    first, second = Ready(uuid.uuid4(), 0, "default", None), Ready(uuid.uuid4(), 0, "mail", None)
    dispatcher.push([first, second])
    assert dispatcher.hold(first.id) and dispatcher.hold(first.id)  # two cancels at once
    assert drain(dispatcher) == [second.id]
    dispatcher.settle(first.id, None, here=False)  # one cancelled nothing; one still writes
    assert drain(dispatcher) == []
    dispatcher.settle(first.id, None, here=False)
    assert drain(dispatcher) == [first.id]
    assert dispatcher.waiting == {"default": 0, "mail": 0}


def test_a_task_whose_cancel_may_have_committed_is_taken_without_its_payload() -> None:
    """A cancel whose write failed may have committed: the task's payload
    held in memory, or the one it comes with later (from the delayed heap),
    is left out, so the worker that takes it reads its status with it."""
    dispatcher = Dispatcher(memory_payloads=10)
    job = Job(b"payload", "t", 0, 0, None)
    held, coming, other = (Ready(uuid.uuid4(), 0, "default", None, job) for _ in range(3))
    dispatcher.push([held, other])
    assert dispatcher.hold(held.id) and dispatcher.hold(coming.id)
    dispatcher.settle(held.id, None, here=False, doubt=True)
    dispatcher.settle(coming.id, None, here=False, doubt=True)
    dispatcher.push([coming])
    taken = {}
    while (item := dispatcher.take(timeout=0)) is not None:
        taken[item[0].id] = item[0].job
    assert taken == {held.id: None, other.id: job, coming.id: None}


def test_a_taken_task_whose_cancel_may_have_committed_comes_back_without_its_payload() -> None:
    """A cancel of a running task whose write failed may have committed:
    the task's retry, pushed with its payload, is taken without it."""
    dispatcher = Dispatcher(memory_payloads=10)
    job = Job(b"payload", "t", 0, 0, None)
    running = Ready(uuid.uuid4(), 0, "default", None, job)
    dispatcher.push([running])
    assert dispatcher.take(timeout=0) == (running, [])
    dispatcher.doubt(running.id)
    dispatcher.done(running.id)
    dispatcher.push([running])  # its retry
    taken = dispatcher.take(timeout=0)
    assert taken is not None and taken[0].id == running.id and taken[0].job is None


def test_a_taken_task_cannot_be_held_until_its_outcome_is_committed() -> None:
    dispatcher = Dispatcher(memory_payloads=0)
    task = Ready(uuid.uuid4(), 0, "default", None)
    dispatcher.push([task])
    assert drain(dispatcher) == [task.id]
    assert dispatcher.hold(task.id) is False
    dispatcher.done(task.id)
    assert dispatcher.hold(task.id) is True


def test_a_cancelled_task_set_aside_or_still_coming_is_dropped_and_counted_once() -> None:
    dispatcher = Dispatcher(memory_payloads=0)
    aside, coming = Ready(uuid.uuid4(), 0, "default", None), Ready(uuid.uuid4(), 0, "default", None)
    dispatcher.push([aside])
    assert dispatcher.hold(aside.id) and dispatcher.hold(coming.id)
    assert drain(dispatcher) == []
    dispatcher.settle(aside.id, "default", here=True)
    dispatcher.settle(coming.id, "default", here=True)  # on its way from the delayed heap
    dispatcher.push([coming])
    assert drain(dispatcher) == []
    assert dispatcher.waiting["default"] == 0
