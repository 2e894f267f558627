"""A stop that cannot hang: SHUTDOWN_TIMEOUT and a second stop signal end it at
once, with each thread's stack in the log, and lose nothing acknowledged."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import leek
from leek.models import FailedTask, Task
from tests import tasks
from tests.conftest import BOTH_POOLS, BrokerProcess, gone, wait_for

SETTINGS = "tests.server.observed_settings"


def running_once(
    broker_factory: Any, tmp_path: Path, pool: str, **env: str
) -> tuple[BrokerProcess, leek.TaskHandle, int]:
    """A broker running a task that sleeps a minute on its first run only;
    the broker, the task's handle and the pid of the process running it."""
    broker = broker_factory(LEEK_POOL=pool, **env)
    mark = tmp_path / "mark"
    handle = leek.enqueue(tasks.sleep_once, (str(mark), 60), max_retries=1)
    wait_for(lambda: mark.exists() and mark.read_text())
    wait_for(lambda: Task.objects.get(pk=handle.id).status == "running")  # its mark written
    return broker, handle, int(mark.read_text())


def runs_again(broker_factory: Any, broker: BrokerProcess, pool: str, handle: Any) -> None:
    """The next start on the same node runs the task cut short again; its
    first attempt counts as one cut short by a kill."""
    assert Task.objects.get(pk=handle.id).status == "running"
    broker_factory(port=broker.port, LEEK_POOL=pool)
    assert handle.result(timeout=30) == "ran again"
    cut = FailedTask.objects.get(task_id=handle.id)
    assert (cut.exc_type, cut.attempt) == ("leek.exceptions.WorkerLost", 1)


@BOTH_POOLS
def test_a_stop_held_by_a_receiver_ends_at_its_timeout(
    broker_factory: Any, tmp_path: Path, pool: str
) -> None:
    broker, handle, runner = running_once(
        broker_factory,
        tmp_path,
        pool,
        DJANGO_SETTINGS_MODULE=SETTINGS,
        SIGNALS_HANG="broker_stopping",
        LEEK_SHUTDOWN_GRACE="0.5",
        LEEK_SHUTDOWN_TIMEOUT="2",
    )
    assert broker.kill(signal.SIGTERM) == 1
    log = broker.output()
    assert "the stop overran SHUTDOWN_TIMEOUT (2 s): exiting now" in log
    assert "Thread MainThread" in log and "leek-deadline" in log
    assert "in _hung" in log  # the frame that held the stop, named
    assert "broker stopped" not in log
    if pool == "processes":
        wait_for(lambda: gone(runner), timeout=10)  # the worker process went with it
    runs_again(broker_factory, broker, pool, handle)


@BOTH_POOLS
def test_a_second_stop_signal_ends_the_stop_at_once(
    broker_factory: Any, tmp_path: Path, pool: str
) -> None:
    broker, handle, runner = running_once(
        broker_factory, tmp_path, pool, LEEK_SHUTDOWN_GRACE="60", LEEK_SHUTDOWN_TIMEOUT="90"
    )
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "stopping on signal=SIGTERM" in broker.output())
    assert broker.alive  # the task has 60 s to end
    assert broker.kill(signal.SIGINT) == 1
    log = broker.output()
    assert "a second stop signal=SIGINT during the stop: exiting now" in log
    assert "tasks still running are requeued at the next start" in log
    if pool == "processes":
        wait_for(lambda: gone(runner), timeout=10)
    runs_again(broker_factory, broker, pool, handle)
