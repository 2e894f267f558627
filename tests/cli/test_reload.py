"""`leek start --reload`: the broker starts again on the new code when a task module changes."""

from __future__ import annotations

import importlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
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


#: A settings module as a developer edits it.
SETTINGS = "from tests.settings import *  # noqa: F403\n"
COMMANDS = {
    "leek": [sys.executable, "-m", "leek.cli"],
    "manage.py leek": [sys.executable, "manage.py", "leek"],
}
#: The exit status of each command whose settings do not import.
FAILED_IMPORT = {"leek": 2, "manage.py leek": 1}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_settings_module_that_does_not_import_waits_for_the_fix(
    transactional_db: Any, tmp_path: Path, command: str
) -> None:
    """As runserver: a syntax error saved in the settings ends the broker's
    start, saying so, and the command waits for the fix; a stop signal
    meanwhile ends it."""
    source = tmp_path / "devsettings.py"
    source.write_text(SETTINGS)
    port = free_port()
    log = tmp_path / "leek.log"
    env = broker_env(port, {"DEBUG": "true", "DJANGO_SETTINGS_MODULE": "devsettings"})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(tmp_path)])
    with log.open("wb") as output:
        job = subprocess.Popen(
            [*COMMANDS[command], "start", "--reload"],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    later = itertools.count(1)

    def saved(text: str, until: Callable[[str], bool]) -> None:
        # The reloader compares a file's time with the one it saw before:
        # touch it again until it has seen one and then a newer one.
        source.write_text(text)

        def seen() -> bool:
            stamp = time.time() + next(later)
            os.utime(source, (stamp, stamp))
            return until(log.read_text(errors="replace")) or job.poll() is not None

        wait_for(seen, timeout=30, interval=0.3)
        assert job.poll() is None, log.read_text(errors="replace")

    try:
        wait_for(lambda: leek_cli(port, "ping").returncode == 0, timeout=30)
        saved(SETTINGS + "LEEK = {\n", lambda text: "waiting for a file to change" in text)
        text = log.read_text(errors="replace")
        assert "SyntaxError" in text and "devsettings.py" in text
        saved(SETTINGS, lambda text: text.count("broker listening") == 2)
        wait_for(lambda: leek_cli(port, "ping").returncode == 0, timeout=30)
        saved(SETTINGS + "LEEK = {\n", lambda text: text.count("waiting for a file") == 2)
        job.send_signal(signal.SIGTERM)
        assert job.wait(30) == FAILED_IMPORT[command]  # as the start that failed
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()


def test_a_start_refused_once_django_is_set_up_ends_the_command(transactional_db: Any) -> None:
    """A refusal no file change mends (the address taken) ends it, as without --reload."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = leek_cli(port, "start", "--reload", DEBUG="true")
    assert done.returncode == 1, done.stderr
    assert "cannot listen on" in done.stderr and "waiting for a file" not in done.stderr
