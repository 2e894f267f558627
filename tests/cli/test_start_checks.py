"""`leek start` runs the system checks before it serves, under manage.py too; other verbs none."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import leek
from tests.conftest import REPO, BrokerProcess, broker_env, free_port, leek_cli, wait_for

#: A stop's deadline inside its grace (leek.E020): every stop would be cut short.
CUT_SHORT = {"LEEK_SHUTDOWN_GRACE": "30", "LEEK_SHUTDOWN_TIMEOUT": "10"}

COMMANDS = {
    "leek": [sys.executable, "-m", "leek.cli", "start"],
    "manage.py leek": [sys.executable, "manage.py", "leek", "start"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_setting_the_checks_refuse_stops_the_start_with_their_report(command: str) -> None:
    port = free_port()
    done = subprocess.run(
        COMMANDS[command],
        cwd=REPO,
        env={**broker_env(port), **CUT_SHORT},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "System check identified some issues" in done.stderr
    assert "(leek.E020) LEEK['SHUTDOWN_TIMEOUT'] (10.0) is not more than" in done.stderr
    assert "Traceback" not in done.stderr
    assert "listening" not in done.stderr


def test_skip_checks_starts_the_broker_as_configured(broker_factory: Any) -> None:
    broker: BrokerProcess = broker_factory(args=("--skip-checks",), **CUT_SHORT)
    assert leek.ping() == (True, "I'm OK")
    assert "System check" not in broker.output()


@pytest.mark.parametrize("command", ["leek", "manage.py leek"])
def test_the_other_verbs_answer_whatever_the_checks_say(broker_factory: Any, command: str) -> None:
    # Django runs every check before any manage.py command by default: a
    # health check from cron would have read a refused setting as a broker down.
    broker: BrokerProcess = broker_factory(args=("--skip-checks",), **CUT_SHORT)
    done = subprocess.run(
        [*COMMANDS[command][:-1], "ping"],
        cwd=REPO,
        env={**broker_env(broker.port), **CUT_SHORT},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "I'm OK" in done.stdout and "System check" not in done.stderr


def test_manage_py_leek_start_skips_them_as_asked() -> None:
    port = free_port()
    broker = subprocess.Popen(
        [*COMMANDS["manage.py leek"], "--skip-checks"],
        cwd=REPO,
        env={**broker_env(port), **CUT_SHORT},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: leek_cli(port, "ping").returncode == 0 or broker.poll() is not None)
    finally:
        broker.terminate()
        output = broker.communicate(timeout=60)[1]
    assert broker.returncode == 0, output
    assert "broker listening" in output and "System check" not in output


def test_under_reload_the_broker_runs_them_once_a_start(broker_factory: Any) -> None:
    broker: BrokerProcess = broker_factory(
        args=("--reload",), DEBUG="true", LEEK_RELOAD_ON_NEW_CODE="1", LEEK_CODE_VERSION=""
    )
    assert leek.ping() == (True, "I'm OK")
    assert broker.output().count("(leek.W016)") == 1  # by the broker, not its supervisor too


#: A settings module as a developer edits it: {extra} goes into LEEK.
SETTINGS = """
from tests.settings import *  # noqa: F403

LEEK = {{**LEEK, {extra}}}  # noqa: F405
"""


def test_under_reload_a_refused_start_waits_for_the_fix_and_starts(
    broker_factory: Any, tmp_path: Path
) -> None:
    # As runserver's child after a check error: it keeps watching the files.
    source = tmp_path / "devsettings.py"
    source.write_text(SETTINGS.format(extra='"QUEUES": {"mail": {"rate_limit": "9"}}'))
    broker: BrokerProcess = broker_factory(
        wait=False,
        args=("--reload",),
        DEBUG="true",
        DJANGO_SETTINGS_MODULE="devsettings",
        PYTHONPATH=os.pathsep.join([str(REPO), str(tmp_path)]),
    )
    wait_for(lambda: "waiting for a file to change" in broker.output(), timeout=30)
    assert "(leek.E007) LEEK['QUEUES']['mail'] has rate_limit" in broker.output()
    assert broker.proc is not None and broker.proc.poll() is None
    source.write_text(SETTINGS.format(extra='"QUEUES": {}'))
    later = itertools.count(1)

    def started() -> bool:
        # The reloader compares a file's time with the one it saw before:
        # touch it again until it has seen one and then a newer one.
        stamp = time.time() + next(later)
        os.utime(source, (stamp, stamp))
        return "broker listening" in broker.output()

    wait_for(started, timeout=30, interval=0.3)
    broker.wait_ready()
    assert leek.ping() == (True, "I'm OK")


def test_under_reload_a_stop_ends_the_wait_for_the_fix(broker_factory: Any) -> None:
    broker: BrokerProcess = broker_factory(
        wait=False, args=("--reload",), DEBUG="true", **CUT_SHORT
    )
    wait_for(lambda: "waiting for a file to change" in broker.output(), timeout=30)
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGTERM)
    assert broker.proc.wait(30) == 1
