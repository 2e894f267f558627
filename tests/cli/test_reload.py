"""`leek start --reload`: the broker starts again on the new code when a task module changes."""

from __future__ import annotations

import importlib
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import leek
from leek.models import BrokerNode, FailedTask
from tests import tasks
from tests.conftest import REPO, broker_env, free_port, leek_cli, wait_for

#: A task module as a developer writes it; {version} is what its tasks return.
MODULE = """
import time


def version():
    return "{version}"


def slow(seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.02)
    return "{version}"
"""


def test_an_edited_task_module_runs_its_new_code_and_no_queued_task_is_lost(
    broker_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    name = f"edited_{uuid.uuid4().hex[:8]}"
    source = code / f"{name}.py"
    source.write_text(MODULE.format(version="v1"))
    monkeypatch.syspath_prepend(str(code))
    module = importlib.import_module(name)  # pushes name its functions by this module's path
    broker = broker_factory(
        args=("--reload",),
        PYTHONPATH=os.pathsep.join([str(REPO), str(code)]),
        LEEK_WORKERS="1",
        DEBUG="true",
    )
    assert leek.push_task_to_queue(module.version).result(timeout=20) == "v1"
    node = BrokerNode.objects.get(port=broker.port)
    running = leek.push_task_to_queue(module.slow, 4.0)  # SHUTDOWN_GRACE is 5 s
    wait_for(lambda: running.status() == "running")
    queued = [leek.push_task_to_queue(module.version) for _ in range(3)]
    later = leek.enqueue(module.version, delay=1.0)
    source.write_text(MODULE.format(version="v2"))
    later_times = itertools.count(1)

    def restarted() -> bool:
        # The reloader compares a file's time with the one it saw before: touch
        # the file again until it has seen one and then a newer one.
        stamp = time.time() + next(later_times)
        os.utime(source, (stamp, stamp))
        now = BrokerNode.objects.filter(name=node.name, stopped=False)
        return now.exclude(pid=node.pid).exists()

    wait_for(restarted, timeout=30, interval=0.3)
    broker.wait_ready()
    assert "file changed" in broker.output()
    assert running.result(timeout=20) == "v1"  # it ran to its end, within the grace
    assert not FailedTask.objects.filter(task_id=running.id).exists()
    assert [h.result(timeout=20) for h in [*queued, later]] == ["v2"] * 4
    assert leek.push_task_to_queue(module.version).result(timeout=20) == "v2"


def test_reload_is_refused_when_debug_is_off_unless_forced(broker_factory: Any) -> None:
    port = free_port()
    refused = leek_cli(port, "start", "--reload", DEBUG="false")
    assert refused.returncode == 1
    assert "DEBUG is off" in refused.stderr and "--force-reload" in refused.stderr
    broker = broker_factory(port=port, args=("--force-reload",), DEBUG="false")
    assert leek.push_task_to_queue(tasks.add, 1, 2).result(timeout=20) == 3
    assert broker.kill(signal.SIGTERM) == 0  # passed on to the broker, which stops gracefully
    assert "broker stopped" in broker.output()


def test_a_ctrl_c_in_the_terminal_stops_the_broker_gracefully(
    transactional_db: Any, tmp_path: Path
) -> None:
    """A terminal sends Ctrl-C's SIGINT to every process of its foreground
    job: the supervisor passes it on, and the broker gets it once."""
    port = free_port()
    log = tmp_path / "leek.log"
    with log.open("wb") as output:
        job = subprocess.Popen(
            [sys.executable, "-m", "leek.cli", "start", "--reload"],
            cwd=REPO,
            env={**broker_env(port), "DEBUG": "true"},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a job of its own, as a shell makes one
        )
    try:
        wait_for(lambda: leek_cli(port, "ping").returncode == 0, timeout=30)
        os.killpg(job.pid, signal.SIGINT)
        assert job.wait(30) == 0
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    text = log.read_text(errors="replace")
    assert "stopping on signal=SIGINT" in text and "broker stopped" in text
    assert "second stop signal" not in text
