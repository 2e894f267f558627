"""A real broker process on a real socket and a real database."""

from __future__ import annotations

import operator
import signal
import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection as db

import leek
from leek.client import connection as client
from leek.models import FailedTask, SuccessTask, Task
from tests import tasks
from tests.conftest import BOTH_POOLS, BrokerProcess, wait_for


@BOTH_POOLS
def test_results_round_trip(broker: BrokerProcess) -> None:
    handle = leek.push_task_to_queue(tasks.add, 2, 3)
    assert handle.result(timeout=10) == 5
    assert handle.status() == "succeeded"
    assert handle.ready()
    success = SuccessTask.objects.get(task_id=handle.id)
    assert success.duration >= 0 and success.result_repr == "5"


@BOTH_POOLS
def test_lambdas_and_kwargs_run(broker: BrokerProcess) -> None:
    base = 40
    handle = leek.enqueue(lambda x, *, y: base + x + y, (1,), {"y": 1})
    assert handle.result(timeout=10) == 42
    assert leek.push_task_to_queue(tasks.echo, 1, k="v").result(timeout=10) == {
        "args": [1],
        "kwargs": {"k": "v"},
    }


@BOTH_POOLS
def test_exceptions_round_trip_with_the_remote_traceback(broker: BrokerProcess) -> None:
    handle = leek.enqueue(tasks.fail, ("kaput",), max_retries=0)
    with pytest.raises(leek.TaskFailed) as caught:
        handle.result(timeout=10)
    assert caught.value.remote_type == "builtins.ValueError"
    assert caught.value.remote_message == "kaput"
    assert 'tests/tasks.py", line' in caught.value.traceback
    assert handle.status() == "failed"
    failure = FailedTask.objects.get(task_id=handle.id)
    assert failure.final and failure.attempt == 1


@BOTH_POOLS
def test_an_unpicklable_return_value_is_kept_as_its_repr(broker: BrokerProcess) -> None:
    handle = leek.push_task_to_queue(tasks.return_unpicklable)
    assert "Unpicklable object" in handle.result(timeout=10)


@BOTH_POOLS
def test_output_is_captured_per_task(broker: BrokerProcess) -> None:
    handle = leek.push_task_to_queue(tasks.chatty, "hello from the task")
    handle.result(timeout=10)
    success = SuccessTask.objects.get(task_id=handle.id)
    assert success.stdout == "hello from the task\n"
    assert success.stderr == "to stderr\n"


@BOTH_POOLS
def test_progress_and_current_task(broker: BrokerProcess) -> None:
    handle = leek.push_task_to_queue(tasks.progress_steps)
    wait_for(lambda: handle.progress()[0] == 50)
    assert handle.progress() == (50, "half way")
    assert handle.result(timeout=10) == str(handle.id)


@BOTH_POOLS
def test_a_thousand_tasks_from_four_threads_run_exactly_once(broker: BrokerProcess) -> None:
    handles: list[leek.TaskHandle] = []
    lock = threading.Lock()

    def push(start: int) -> None:
        mine = [leek.push_task_to_queue(tasks.add, i, 0) for i in range(start, start + 250)]
        with lock:
            handles.extend(mine)
        client.close()
        db.close()

    threads = [threading.Thread(target=push, args=(n * 250,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({h.id for h in handles}) == 1000
    wait_for(lambda: Task.objects.filter(status="succeeded").count() == 1000, timeout=60)
    assert SuccessTask.objects.count() == 1000  # one run each
    values = sorted(h.result(timeout=1) for h in handles)
    assert values == list(range(1000))
    assert leek.handled() == (True, 1000)
    assert leek.waiting() == (True, 0)


def test_priority_then_fifo(broker_factory: Callable[..., BrokerProcess], tmp_path: Any) -> None:
    broker_factory(LEEK_WORKERS="1")
    log = tmp_path / "order"
    gate = leek.push_task_to_queue(tasks.sleep, 1.5)  # holds the one worker
    wait_for(lambda: gate.status() == "running")
    for name, priority in [("low-1", 0), ("high-1", 5), ("low-2", 0), ("high-2", 5)]:
        leek.enqueue(tasks.append_line, (str(log), name), priority=priority)
    wait_for(lambda: log.exists() and len(log.read_text().split()) == 4)
    assert log.read_text().split() == ["high-1", "high-2", "low-1", "low-2"]


def test_waiting_and_handled_per_queue(broker_factory: Callable[..., BrokerProcess]) -> None:
    broker_factory(LEEK_WORKERS="1")
    gate = leek.push_task_to_queue(tasks.sleep, 1.5)
    wait_for(lambda: gate.status() == "running")
    for _ in range(3):
        leek.enqueue(tasks.noop, queue="emails")
    leek.enqueue(tasks.noop, queue="pdfs")
    assert leek.waiting("emails") == (True, 3)
    assert leek.waiting() == (True, 4)
    wait_for(leek.waiting, equals=(True, 0))
    wait_for(leek.handled, equals=(True, 5))
    assert leek.handled("emails") == (True, 3)
    assert leek.handled("pdfs") == (True, 1)


@BOTH_POOLS
def test_cancel_a_task_that_has_not_started(
    broker_factory: Callable[..., BrokerProcess], pool: str
) -> None:
    broker_factory(LEEK_WORKERS="1", LEEK_POOL=pool)
    gate = leek.push_task_to_queue(tasks.sleep, 1.5)
    wait_for(lambda: gate.status() == "running")
    handle = leek.push_task_to_queue(tasks.add, 1, 1)
    assert handle.cancel() is True
    assert handle.status() == "cancelled"
    assert gate.cancel() is False  # already running
    with pytest.raises(leek.TaskCancelled):
        handle.result(timeout=5)
    gate.result(timeout=10)
    assert leek.waiting() == (True, 0)
    assert not SuccessTask.objects.filter(task_id=handle.id).exists()


@BOTH_POOLS
def test_stats(broker: BrokerProcess) -> None:
    leek.push_task_to_queue(tasks.add, 1, 2).result(timeout=10)
    ok, stats = leek.stats()
    assert ok
    assert stats["healthy"] and stats["workers_alive"] == stats["workers"] == 2
    assert stats["database"]["succeeded"] == {"default": 1}
    assert stats["version"] == leek.__version__


def test_the_broker_keeps_the_interpreter_lock_for_its_switch_interval(
    broker_factory: Any,
) -> None:
    first = broker_factory()
    assert leek.stats()[1]["switch_interval"] == pytest.approx(0.0002)  # the default
    first.kill()
    client.close()
    broker_factory(LEEK_SWITCH_INTERVAL="0.001")
    assert leek.stats()[1]["switch_interval"] == pytest.approx(0.001)


def test_enqueue_many_is_one_frame(broker: BrokerProcess) -> None:
    handles = leek.enqueue_many([(operator.add, (i, i)) for i in range(50)])
    assert [h.result(timeout=10) for h in handles] == [2 * i for i in range(50)]
    assert leek.stats()[1]["commits"] < 50


def test_a_batch_of_several_functions_names_and_runs_each(broker: BrokerProcess) -> None:
    # The batch names a run of calls to one function once: a change of
    # function, and a return to the first, each get their own name.
    calls = [
        (tasks.add, (1, 2)),
        (tasks.add, (3, 4)),
        (tasks.echo, (5,), {"k": 6}),
        (tasks.noop, ()),
        (tasks.add, (7, 8)),
        (lambda x: x * 3, (5,)),  # by value, as a lambda cannot be named
    ]
    handles = leek.enqueue_many(calls)
    results = [h.result(timeout=10) for h in handles]
    assert results == [3, 7, {"args": [5], "kwargs": {"k": 6}}, None, 15, 15]
    rows = {t.id: t for t in Task.objects.filter(id__in=[h.id for h in handles])}
    assert [(rows[h.id].name, rows[h.id].args_repr) for h in handles] == [
        ("tests.tasks.add", "1, 2"),
        ("tests.tasks.add", "3, 4"),
        ("tests.tasks.echo", "5, k=6"),
        ("tests.tasks.noop", ""),
        ("tests.tasks.add", "7, 8"),
        (
            f"{__name__}.test_a_batch_of_several_functions_names_and_runs_each.<locals>.<lambda>",
            "5",
        ),
    ]


def test_pushes_from_other_code_are_counted_and_logged_once(
    broker_factory: Any, leek_settings: Any
) -> None:
    broker = broker_factory(LEEK_CODE_VERSION="v1")
    leek_settings(CODE_VERSION="v2")
    leek.enqueue(tasks.noop)
    leek.enqueue_many([(tasks.noop, ())] * 3)
    ok, stats = leek.stats()
    assert ok and stats["code_drift"] == {"v2": 4}  # tasks, whether pushed alone or in a batch
    assert broker.output().count("client code differs client_version=v2 broker_version=v1") == 1


def test_a_task_shows_running_while_nothing_else_is_written(broker_factory: Any) -> None:
    # Its running mark wakes no thread; with no heartbeat, sweep or push to
    # carry it (the task starts two seconds after the broker's start-up writes),
    # the duties' nudge writes it while the task runs.
    broker_factory(
        LEEK_HEARTBEAT_INTERVAL="600", LEEK_HEARTBEAT_TIMEOUT="1200", LEEK_SWEEP_INTERVAL="600"
    )
    handle = leek.enqueue(tasks.sleep, (2.0,), delay=2.0)
    wait_for(lambda: handle.status() != "queued")
    assert handle.status() == "running"
    assert handle.result(timeout=20) == 2.0


@BOTH_POOLS
def test_stop_is_graceful(broker: BrokerProcess) -> None:
    assert leek.ping() == (True, "I'm OK")
    assert leek.stop() == (True, "stopping")
    assert broker.proc is not None and broker.proc.wait(20) == 0
    ok, reason = leek.ping()
    assert not ok and f"127.0.0.1:{broker.port}" in reason


@BOTH_POOLS
def test_sigterm_is_graceful(broker: BrokerProcess) -> None:
    handle = leek.push_task_to_queue(tasks.sleep, 1.5)
    wait_for(lambda: handle.status() == "running")
    assert broker.kill(signal.SIGTERM) == 0
    assert handle.status() == "succeeded"  # it was let finish


def test_pipelined_enqueues_on_one_connection_each_get_their_reply(
    broker: BrokerProcess,
) -> None:
    import socket

    from leek.protocol.sockets import FrameSocket
    from tests.conftest import task_message
    from tests.protocol.wire import client_keys

    messages = [task_message(tasks.add, i, i) for i in range(20)]
    with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as sock:
        frames = FrameSocket(sock, client_keys(), 1 << 20, timeout=10)
        nonces = {}
        for n, message in enumerate(messages, 1):  # all sent before any reply is read
            nonces[n] = frames.write((n, "enqueue", message))
        nonces[99] = frames.write((99, "ping", {}))
        replies = {}
        for _ in range(21):
            reply = frames.read()
            assert reply is not None
            request_id, *answer = reply.message
            assert reply.nonce == nonces[request_id]  # each reply names its request
            replies[request_id] = tuple(answer)
    assert replies[99] == (True, {"ok": True, "message": "I'm OK"})
    assert {n: replies[n] for n in range(1, 21)} == {
        n: (True, m["id"]) for n, m in enumerate(messages, 1)
    }
    handles = [leek.TaskHandle(m["id"]) for m in messages]
    assert [h.result(timeout=10) for h in handles] == [2 * i for i in range(20)]


def test_a_client_gone_before_its_reply_still_has_its_task_run(broker: BrokerProcess) -> None:
    import socket

    from tests.conftest import task_message
    from tests.protocol.wire import request

    message = task_message(tasks.add, 4, 5)
    with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as sock:
        sock.sendall(request((1, "enqueue", message)))
        sock.shutdown(socket.SHUT_RDWR)
    assert leek.TaskHandle(message["id"]).result(timeout=10) == 9
    assert leek.push_task_to_queue(tasks.add, 1, 1).result(timeout=10) == 2


def test_a_broker_is_named_after_its_machine_not_the_address_it_listens_on(
    broker_factory: Any, leek_settings: Any
) -> None:
    # A broker recovers the unfinished tasks under its name when it starts: two
    # machines whose brokers both listen on 0.0.0.0:8002 must not share a name.
    import socket

    from leek.models import BrokerNode

    secret = "a-secret-for-a-broker-beyond-loopback"  # a bind beyond loopback needs one
    leek_settings(SECRET=secret)
    broker = broker_factory(LEEK_HOST="0.0.0.0", LEEK_SECRET=secret)  # noqa: S104 - the case at hand
    assert leek.push_task_to_queue(operator.add, 1, 1).result(timeout=10) == 2
    name = f"{socket.gethostname()}:{broker.port}"
    assert list(BrokerNode.objects.values_list("name", flat=True)) == [name]
    assert Task.objects.get().broker == name
