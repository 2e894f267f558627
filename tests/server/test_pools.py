"""The worker pools: what a process stops that a thread cannot, and each pool at its limits."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections import Counter
from typing import Any

import pytest

import leek
from leek.models import FailedTask, Task
from leek.server.dispatch import Dispatcher
from leek.server.store import Store
from leek.server.workers import Pool
from tests import tasks
from tests.conftest import BOTH_POOLS, BrokerProcess, gone, leek_cli, proc_stat, wait_for


def processes(broker_factory: Any, port: int | None = None, **env: str) -> BrokerProcess:
    """A broker of the processes pool."""
    return broker_factory(port=port, LEEK_POOL="processes", **env)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "crash, how",
    [
        ((tasks.exit_now, 3), "exited with status 3"),
        ((tasks.segfault,), "killed by SIGSEGV (11)"),
    ],
)
def test_a_task_that_kills_its_process_fails_and_the_broker_serves_on(
    broker_factory: Any, crash: tuple[Any, ...], how: str
) -> None:
    processes(broker_factory, LEEK_WORKERS="1")
    before = leek.push_task_to_queue(tasks.pid).result(timeout=30)
    fn, *args = crash
    handle = leek.enqueue(fn, tuple(args), max_retries=0)
    with pytest.raises(leek.TaskFailed) as failed:
        handle.result(timeout=30)
    assert failed.value.remote_type == "leek.exceptions.WorkerLost"
    assert how in str(failed.value)
    assert leek.ping() == (True, "I'm OK")
    assert leek.push_task_to_queue(tasks.pid).result(timeout=30) != before
    assert gone(before)


def test_a_lost_worker_is_retried_with_backoff_then_fails_for_good(broker_factory: Any) -> None:
    processes(broker_factory)
    handle = leek.enqueue(tasks.exit_now, (9,), max_retries=2)
    with pytest.raises(leek.TaskFailed, match="exited with status 9"):
        handle.result(timeout=30)
    runs = FailedTask.objects.filter(task_id=handle.id).order_by("attempt")
    assert [(f.attempt, f.final, f.exc_type) for f in runs] == [
        (1, False, "leek.exceptions.WorkerLost"),
        (2, False, "leek.exceptions.WorkerLost"),
        (3, True, "leek.exceptions.WorkerLost"),
    ]


def test_the_broker_never_runs_task_code_in_processes_mode(broker_factory: Any) -> None:
    broker = processes(broker_factory)
    assert broker.proc is not None
    ran_in = {leek.push_task_to_queue(tasks.pid).result(timeout=30) for _ in range(6)}
    assert broker.proc.pid not in ran_in
    assert len(ran_in) <= 2  # the two workers' processes, warm across tasks


def test_a_task_on_a_thread_keeps_the_brokers_waits_from_polling(broker: BrokerProcess) -> None:
    """A task running keeps the broker's waits for the database from polling
    (protocol/spin.py's RUNS), in the path a process's task takes too."""
    count, since = leek.push_task_to_queue(tasks.tasks_running).result(timeout=30)
    assert count == 1  # itself
    assert 0 <= since < 10  # its own start, a moment before it ran
    count, _ = leek.push_task_to_queue(tasks.tasks_running).result(timeout=30)
    assert count == 1  # the one before ended


def test_a_task_blocked_in_a_sleep_is_stopped_at_its_limit(broker_factory: Any) -> None:
    processes(broker_factory)
    started = time.monotonic()
    handle = leek.enqueue(tasks.sleep, (120,), timeout=2, max_retries=0)
    with pytest.raises(leek.TaskFailed, match="timed out after 2 s") as failed:
        handle.result(timeout=60)
    assert failed.value.remote_type == "leek.exceptions.TaskTimeout"
    assert time.monotonic() - started < 30
    assert leek.push_task_to_queue(tasks.add, 1, 2).result(timeout=30) == 3


def test_a_timed_out_process_follows_the_retry_policy(broker_factory: Any) -> None:
    processes(broker_factory)
    handle = leek.enqueue(tasks.sleep, (120,), timeout=0.5, max_retries=1)
    with pytest.raises(leek.TaskFailed, match="timed out"):
        handle.result(timeout=60)
    finals = FailedTask.objects.filter(task_id=handle.id).order_by("attempt")
    assert [f.final for f in finals] == [False, True]


@BOTH_POOLS
def test_except_exception_does_not_swallow_a_time_limit(broker: BrokerProcess) -> None:
    handle = leek.enqueue(tasks.nap_through, (60,), timeout=1, max_retries=0)
    with pytest.raises(leek.TaskFailed, match="timed out after 1 s"):
        handle.result(timeout=30)
    assert leek.push_task_to_queue(tasks.add, 2, 3).result(timeout=30) == 5


def test_output_of_subprocesses_and_c_code_is_captured_in_a_process(broker_factory: Any) -> None:
    processes(broker_factory)
    handle = leek.push_task_to_queue(tasks.shell_echo, "from a subprocess")
    handle.result(timeout=30)
    from leek.models import SuccessTask

    stdout = SuccessTask.objects.get(task_id=handle.id).stdout
    assert "from a subprocess\n" in stdout and "from C\n" in stdout


def test_a_process_closes_what_a_task_opened_in_the_database_as_a_request_does(
    broker_factory: Any,
) -> None:
    """CONN_MAX_AGE is 0 here: the connection a task opened is closed at its
    end, so a later task in the same process, after one that used no
    database, opens its own."""
    processes(broker_factory, LEEK_WORKERS="1")
    first = leek.push_task_to_queue(tasks.connection_was_open).result(timeout=30)
    leek.push_task_to_queue(tasks.add, 1, 2).result(timeout=30)
    second = leek.push_task_to_queue(tasks.connection_was_open).result(timeout=30)
    assert first[1] == second[1]  # the same worker process
    assert second[0] is False


def test_a_process_is_replaced_after_its_tasks(broker_factory: Any) -> None:
    processes(broker_factory, LEEK_WORKERS="1", LEEK_MAX_TASKS_PER_CHILD="3")
    pids = [leek.push_task_to_queue(tasks.pid).result(timeout=30) for _ in range(7)]
    assert pids[0] == pids[1] == pids[2] != pids[3]
    assert pids[3] == pids[4] == pids[5] != pids[6]


def test_a_process_past_its_memory_limit_is_replaced(broker_factory: Any) -> None:
    processes(broker_factory, LEEK_WORKERS="1", LEEK_MAX_MEMORY_PER_CHILD="150")
    small = leek.push_task_to_queue(tasks.hoard, 1).result(timeout=30)
    assert leek.push_task_to_queue(tasks.hoard, 1).result(timeout=30) == small
    big = leek.push_task_to_queue(tasks.hoard, 200).result(timeout=30)
    assert big == small  # the task that passed the limit ran to its end
    assert leek.push_task_to_queue(tasks.pid).result(timeout=30) != big


def test_a_process_that_cannot_start_makes_the_broker_unhealthy(broker_factory: Any) -> None:
    broker = processes(broker_factory, LEEK_TEST_BREAK_WORKER_PROCESS="1")

    def unhealthy() -> Any:
        answer = leek_cli(broker.port, "ping")
        return answer if answer.returncode == 1 else None

    answer = wait_for(unhealthy)
    assert "worker process cannot start" in answer.stdout
    assert "cannot be imported in a worker process" in answer.stdout
    handle = leek.push_task_to_queue(tasks.add, 1, 1)
    time.sleep(0.5)
    assert handle.status() == "queued"  # accepted, committed, and waiting for a worker


def test_worker_processes_die_with_a_killed_broker(broker_factory: Any) -> None:
    broker = processes(broker_factory)
    pids = {leek.push_task_to_queue(tasks.pid).result(timeout=30) for _ in range(4)}
    leek.enqueue(tasks.sleep, (60,))
    wait_for(lambda: Task.objects.filter(status="running").exists())
    broker.kill(signal.SIGKILL)
    wait_for(lambda: all(gone(pid) for pid in pids), timeout=10)


def test_a_stop_kills_what_runs_past_the_grace_and_its_task_runs_again(
    broker_factory: Any, tmp_path: Any
) -> None:
    broker = processes(broker_factory, LEEK_SHUTDOWN_GRACE="1")
    handle = leek.enqueue(tasks.sleep_once, (str(tmp_path / "mark"), 60), max_retries=1)
    mark = tmp_path / "mark"
    wait_for(lambda: mark.exists() and mark.read_text())
    child = int(mark.read_text())
    started = time.monotonic()
    assert broker.kill(signal.SIGTERM) == 0
    assert time.monotonic() - started < 15
    wait_for(lambda: gone(child), timeout=10)
    assert Task.objects.get(pk=handle.id).status == "running"  # not failed: it was cut short
    processes(broker_factory, port=broker.port)
    assert handle.result(timeout=30) == "ran again"
    cut = FailedTask.objects.get(task_id=handle.id)  # the attempt the stop cut short counts
    assert (cut.exc_type, cut.attempt, cut.final) == ("leek.exceptions.Interrupted", 1, False)


def test_a_thread_stuck_past_its_limit_is_set_aside_and_replaced(broker_factory: Any) -> None:
    broker_factory(LEEK_POOL="threads", LEEK_WORKERS="1")
    handle = leek.enqueue(tasks.sleep, (12,), timeout=0.5, max_retries=0)
    wait_for(lambda: leek.stats()[1]["workers_stuck"] == 1, timeout=15)
    assert leek.push_task_to_queue(tasks.add, 3, 3).result(timeout=30) == 6
    assert Task.objects.get(pk=handle.id).status == "running"  # its code still runs
    with pytest.raises(leek.TaskFailed, match="timed out"):
        handle.result(timeout=30)  # recorded once the sleep returned
    assert leek.stats()[1]["workers_stuck"] == 0


def _worker_processes(broker: int) -> list[int]:
    """The worker processes of `broker`: the children of its forkserver (and
    of its resource tracker, which has none), not those two themselves."""
    return [worker for child in _children(broker) for worker in _children(child)]


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = proc_stat(int(entry))
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_random_sigkills_of_worker_processes_lose_no_task(broker_factory: Any) -> None:
    broker = processes(broker_factory, LEEK_RETRY_BACKOFF="0.05")
    assert broker.proc is not None
    handles = [leek.enqueue(tasks.sleep, (0.05,), max_retries=20) for _ in range(300)]
    rng = random.Random(11)
    kills = 0
    # A bounded number of kills: a process killed faster than a new one starts
    # (a loaded host) would otherwise hold the pool back until the deadline.
    deadline = time.monotonic() + 90
    while kills < 40 and not all(h.ready() for h in handles[-20:]) and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.1, 0.4))
        children = _worker_processes(broker.proc.pid)
        if children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rng.choice(children), signal.SIGKILL)
                kills += 1
    assert kills >= 5
    assert [h.result(timeout=120) for h in handles] == [0.05] * 300
    assert Task.objects.filter(status="succeeded").count() == 300
    lost = FailedTask.objects.filter(exc_type="leek.exceptions.WorkerLost").count()
    assert 0 < lost <= kills  # each kill cost at most one attempt of one task
    wait_for(leek.ping, equals=(True, "I'm OK"))


def test_a_process_killed_while_idle_costs_no_attempt(broker_factory: Any) -> None:
    processes(broker_factory, LEEK_WORKERS="1")
    idle = leek.push_task_to_queue(tasks.pid).result(timeout=30)
    os.kill(idle, signal.SIGKILL)  # a zombie until its broker notices
    time.sleep(0.2)
    handle = leek.enqueue(tasks.pid, max_retries=0)
    assert handle.result(timeout=30) != idle
    assert not FailedTask.objects.filter(task_id=handle.id).exists()


class _SlowToAdd(Counter):  # type: ignore[type-arg]
    """A count whose first of a queue takes a while: the moment two workers
    ending at once both meet, held open."""

    def __missing__(self, key: str) -> int:
        time.sleep(0.05)
        return 0


def test_workers_ending_at_once_each_count_their_task(db: Any) -> None:
    pool = Pool(Store("count-a", lambda ready: None), Dispatcher(0), 0, lambda ready: None)
    pool.handled = _SlowToAdd()
    ending = [threading.Thread(target=pool.tally, args=("default",)) for _ in range(2)]
    for thread in ending:
        thread.start()
    for thread in ending:
        thread.join()
    assert pool.handled_by_queue() == {"default": 2}
