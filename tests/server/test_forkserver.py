"""How worker processes start: forked from a forkserver that set Django up, or spawned.

The forkserver is the broker's child; the worker processes are its children.
Each test breaks the chain as an outsider would: a SIGKILL of the broker or of
the forkserver, settings that do not import, a reload onto new code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

import leek
from leek.models import FailedTask, Task
from tests import tasks
from tests.conftest import (
    REPO,
    BrokerProcess,
    broker_env,
    free_port,
    gone,
    leek_cli,
    proc_stat,
    wait_for,
)


def processes(broker_factory: Any, args: tuple[str, ...] = (), **env: str) -> BrokerProcess:
    broker: BrokerProcess = broker_factory(args=args, LEEK_POOL="processes", **env)
    return broker


def parent_of(pid: int) -> int:
    return int(proc_stat(pid)[1])


def comm(pid: int) -> str:
    """The name of `pid` as `top` shows it."""
    return Path(f"/proc/{pid}/comm").read_text().strip()


def command(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def with_settings(broker_factory: Any, tmp_path: Path, text: str, **env: str) -> BrokerProcess:
    """A processes broker on a settings module of `text`, made for the test."""
    code = tmp_path / "code"
    code.mkdir()
    name = f"forkserver_settings_{uuid.uuid4().hex[:8]}"
    (code / f"{name}.py").write_text(text)
    broker: BrokerProcess = broker_factory(
        LEEK_POOL="processes",
        DJANGO_SETTINGS_MODULE=name,
        PYTHONPATH=os.pathsep.join([str(REPO), str(code)]),
        **env,
    )
    return broker


def forkserver_of(broker: BrokerProcess) -> int:
    """The forkserver the broker's worker processes are forked from, checked."""
    server = leek.push_task_to_queue(tasks.parent).result(timeout=30)
    assert server != broker.proc.pid  # type: ignore[union-attr]
    assert parent_of(server) == broker.proc.pid  # type: ignore[union-attr]
    assert "multiprocessing.forkserver" in command(server)
    assert "leek.server.preload" in command(server)
    assert comm(server) == "leek-forkserver"
    return int(server)


@pytest.mark.parametrize("start", ["forkserver", "spawn"])
def test_worker_processes_start_as_process_start_says(broker_factory: Any, start: str) -> None:
    broker = processes(broker_factory, LEEK_PROCESS_START=start, LEEK_MAX_TASKS_PER_CHILD="1")
    assert broker.proc is not None
    if start == "forkserver":
        server = forkserver_of(broker)
    else:
        server = broker.proc.pid
        assert leek.push_task_to_queue(tasks.parent).result(timeout=30) == server
    # A process per task (MAX_TASKS_PER_CHILD=1): each one new, each from the same parent.
    pids = [leek.push_task_to_queue(tasks.pid).result(timeout=30) for _ in range(3)]
    assert len(set(pids)) == 3 and broker.proc.pid not in pids
    # Named for top and ps -o comm, whichever way it started.
    worker = leek.push_task_to_queue(tasks.comm).result(timeout=30)
    assert worker == "leek-worker"
    assert leek.push_task_to_queue(tasks.parent).result(timeout=30) == server
    assert leek.push_task_to_queue(tasks.add, 2, 3).result(timeout=30) == 5


def test_a_killed_broker_takes_its_forkserver_and_worker_processes(broker_factory: Any) -> None:
    broker = processes(broker_factory)
    server = forkserver_of(broker)
    worker = leek.push_task_to_queue(tasks.pid).result(timeout=30)
    leek.enqueue(tasks.sleep, (60,))
    wait_for(lambda: Task.objects.filter(status="running").exists())
    broker.kill(signal.SIGKILL)
    wait_for(lambda: gone(worker) and gone(server), timeout=10)


#: A broker's worker thread that starts the forkserver (as one does after the
#: last forkserver died) and a worker process from it, then ends.
THREAD_SCRIPT = """
import sys
import threading

import django

from leek.server import process

workers = []


def start():
    process.prepare()
    workers.append(process.WorkerProcess("leek-worker-1", 0, 0))
    workers[0].start()
    server = process.multiprocessing.forkserver._forkserver._forkserver_pid
    print(server, workers[0].pid, flush=True)


if __name__ == "__main__":
    django.setup()
    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    sys.stdin.read()  # lives until the test closes its stdin
    workers[0].stop()
"""


def test_the_forkserver_outlives_the_thread_that_started_it(tmp_path: Path) -> None:
    script = tmp_path / "thread_starts.py"
    script.write_text(THREAD_SCRIPT)
    with subprocess.Popen(
        [sys.executable, str(script)],
        env=broker_env(free_port(), {"LEEK_POOL": "processes"}),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as broker:
        assert broker.stdout is not None and broker.stdin is not None
        server, worker = map(int, broker.stdout.readline().split())
        time.sleep(0.5)  # a parent-death signal would have come at the thread's end
        assert proc_stat(server)[0] != "Z"  # neither dead nor a zombie
        assert parent_of(worker) == server
        broker.stdin.close()  # the broker exits: the alive pipe ends the forkserver
        assert broker.wait(timeout=30) == 0
    wait_for(lambda: gone(server) and gone(worker), timeout=10)


def test_a_killed_forkserver_costs_its_running_task_one_attempt_and_comes_back(
    broker_factory: Any, tmp_path: Path
) -> None:
    broker = processes(broker_factory, LEEK_WORKERS="1", LEEK_RETRY_BACKOFF="0.05")
    server = forkserver_of(broker)
    mark = tmp_path / "mark"
    handle = leek.enqueue(tasks.sleep_once, (str(mark), 60), max_retries=1)
    wait_for(mark.exists)
    worker = int(mark.read_text())
    os.kill(server, signal.SIGKILL)
    wait_for(lambda: gone(worker), timeout=10)  # it dies with its forkserver
    assert handle.result(timeout=60) == "ran again"
    lost = FailedTask.objects.get(task_id=handle.id)
    assert lost.exc_type == "leek.exceptions.WorkerLost"
    assert forkserver_of(broker) != server  # a new one, started by the next process's start
    assert leek_cli(broker.port, "ping").returncode == 0
    log = broker.output()
    assert f"forkserver started pid={server}" in log
    assert f"forkserver started again pid={forkserver_of(broker)} ended={server}" in log


#: Settings that cannot be imported in the forkserver while the file BROKEN_FILE exists.
BROKEN_SETTINGS = """
import os
import sys

from tests.settings import *  # noqa: F403

if sys.argv[:1] == ["-c"] and os.path.exists(os.environ["BROKEN_FILE"]):
    raise RuntimeError("settings broken in the forkserver (as the test asks)")
"""


def test_settings_the_forkserver_cannot_import_are_reported_then_read_again_once_fixed(
    broker_factory: Any, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.write_text("yes")
    # Four workers whose starts meet the broken forkserver, each start ending it.
    broker = with_settings(
        broker_factory, tmp_path, BROKEN_SETTINGS, BROKEN_FILE=str(broken), LEEK_WORKERS="4"
    )

    def unhealthy() -> Any:
        answer = leek_cli(broker.port, "ping")
        return answer if answer.returncode == 1 else None

    wait_for(unhealthy)
    for _ in range(5):  # whichever start failed last, the broker says why: the traceback
        answer = unhealthy()
        assert answer is not None
        assert "worker process cannot start" in answer.stdout, answer.stdout
        assert "settings broken in the forkserver" in answer.stdout
    handle = leek.push_task_to_queue(tasks.add, 1, 1)
    assert handle.status() == "queued"  # accepted, committed, waiting for a worker
    broken.unlink()  # the fix: the next forkserver imports the settings again
    assert handle.result(timeout=60) == 2
    wait_for(lambda: leek_cli(broker.port, "ping").returncode == 0)


#: Settings whose import in the forkserver hangs while the file HANG_FILE exists.
HANGING_SETTINGS = """
import multiprocessing
import os
import sys
import time

from tests.settings import *  # noqa: F403

# The forkserver runs as `python -c`; a spawned process has a parent process.
in_pool = sys.argv[:1] == ["-c"] or multiprocessing.parent_process() is not None
if in_pool and os.path.exists(os.environ["HANG_FILE"]):
    time.sleep(3600)  # an app's ready() waiting on the network, say
"""


def forkservers_under(pid: int) -> list[int]:
    """The forkservers whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if comm(int(entry.name)) == "leek-forkserver" and parent_of(int(entry.name)) == pid:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def hanging(broker_factory: Any, tmp_path: Path, **env: str) -> tuple[BrokerProcess, Path]:
    """A processes broker, one worker, starts timed out after 2 s, whose
    project's setup hangs in the pool while the file it returns exists."""
    hang = tmp_path / "hang"
    hang.write_text("yes")
    env = {"LEEK_WORKERS": "1", "LEEK_PROCESS_START_TIMEOUT": "2", "HANG_FILE": str(hang), **env}
    return with_settings(broker_factory, tmp_path, HANGING_SETTINGS, **env), hang


def unhealthy_says(broker: BrokerProcess) -> str:
    """What `leek ping` says once the broker is unhealthy."""
    answer = wait_for(lambda: (a := leek_cli(broker.port, "ping")).returncode == 1 and a)
    return str(answer.stdout)


def test_a_forkserver_whose_setup_hangs_is_ended_and_reported_at_the_start_timeout(
    broker_factory: Any, tmp_path: Path
) -> None:
    broker, hang = hanging(broker_factory, tmp_path)
    assert broker.proc is not None
    pid = broker.proc.pid
    hung = wait_for(lambda: forkservers_under(pid))
    said = unhealthy_says(broker)
    assert "the forkserver did not fork it within 2 s (PROCESS_START_TIMEOUT)" in said
    wait_for(lambda: all(gone(pid) for pid in hung))  # ended and reaped
    handle = leek.push_task_to_queue(tasks.add, 1, 1)
    assert handle.status() == "queued"
    hang.unlink()  # the fix: the next forkserver imports the settings and forks
    assert handle.result(timeout=60) == 2
    wait_for(lambda: leek_cli(broker.port, "ping").returncode == 0)


def test_a_spawned_process_whose_setup_hangs_is_reported_at_the_start_timeout(
    broker_factory: Any, tmp_path: Path
) -> None:
    broker, hang = hanging(broker_factory, tmp_path, LEEK_PROCESS_START="spawn")
    assert "not ready within 2 s (PROCESS_START_TIMEOUT)" in unhealthy_says(broker)
    handle = leek.push_task_to_queue(tasks.add, 1, 1)
    hang.unlink()
    assert handle.result(timeout=60) == 2


def test_a_stopped_forkserver_is_ended_at_the_start_timeout_and_replaced(
    broker_factory: Any,
) -> None:
    broker = processes(broker_factory, LEEK_WORKERS="1", LEEK_PROCESS_START_TIMEOUT="2")
    server = forkserver_of(broker)
    worker = leek.push_task_to_queue(tasks.pid).result(timeout=30)
    os.kill(server, signal.SIGSTOP)
    os.kill(worker, signal.SIGKILL)  # its replacement forks from the stopped forkserver
    handle = leek.push_task_to_queue(tasks.add, 2, 3)
    assert handle.result(timeout=60) == 5
    assert gone(server)  # ended and reaped
    assert "the forkserver did not fork it within 2 s" in broker.output()
    assert forkserver_of(broker) != server
    assert leek_cli(broker.port, "ping").returncode == 0


def test_a_killed_broker_takes_a_forkserver_whose_setup_still_runs(
    broker_factory: Any, tmp_path: Path
) -> None:
    broker, _ = hanging(broker_factory, tmp_path, LEEK_PROCESS_START_TIMEOUT="60")
    assert broker.proc is not None
    pid = broker.proc.pid
    [server] = wait_for(lambda: forkservers_under(pid))
    broker.kill(signal.SIGKILL)
    wait_for(lambda: gone(server), timeout=10)  # it never reads the alive pipe: its own signal


def test_a_reload_ends_the_old_forkserver_and_the_new_code_forks_from_its_own(
    broker_factory: Any,
) -> None:
    broker = processes(broker_factory)
    server = forkserver_of(broker)
    assert leek_cli(broker.port, "reload").returncode == 0
    wait_for(lambda: leek.stats()[1]["reloads"]["count"] == 1, timeout=60, interval=0.1)
    assert forkserver_of(broker) != server
    assert gone(server)  # killed and reaped before the exec: no zombie, no orphan
    assert broker.alive


#: Settings with an app whose ready() queries the database.
QUERYING_SETTINGS = """
from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.server.querying_app.QueryingConfig"]
"""


def open_files(pid: int) -> Iterator[str]:
    """What the descriptors of `pid` point to: paths, and socket:[inode]."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            yield os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue


def database_sockets() -> set[str]:
    """socket:[inode] of every TCP connection to port 5432 on this machine."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[2].endswith(":1538"):  # the remote port, in hex
                found.add(f"socket:[{fields[9]}]")
    return found


def test_the_forkserver_keeps_no_database_connection_its_setup_opened(
    broker_factory: Any, tmp_path: Path
) -> None:
    broker = with_settings(broker_factory, tmp_path, QUERYING_SETTINGS)
    server = forkserver_of(broker)
    held = set(open_files(server))
    if connection.vendor == "sqlite":
        database = str(connection.settings_dict["NAME"])
        assert not {path for path in held if path.startswith(database)}
    else:
        assert not held & database_sockets()
    assert leek.push_task_to_queue(tasks.add, 2, 2).result(timeout=30) == 4


def test_the_forkserver_imports_from_the_brokers_pythonpath(
    broker_factory: Any, tmp_path: Path
) -> None:
    code = tmp_path / "elsewhere"
    code.mkdir()
    name = f"elsewhere_settings_{uuid.uuid4().hex[:8]}"
    (code / f"{name}.py").write_text("from tests.settings import *  # noqa: F403\n")
    # Found through --pythonpath alone: not on PYTHONPATH, nor in the directory
    # the broker runs in.
    broker = processes(broker_factory, args=("--settings", name, "--pythonpath", str(code)))
    forkserver_of(broker)
    assert leek.push_task_to_queue(tasks.add, 3, 4).result(timeout=30) == 7
    assert leek_cli(broker.port, "ping").returncode == 0
