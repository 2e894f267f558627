"""`leek start` runs the system checks before it serves, under manage.py too; other verbs none."""

from __future__ import annotations

import subprocess
import sys
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
#: The start under --reload: its broker, a child of the supervisor, checks.
RELOADING = [*COMMANDS["leek"], "--reload"]


@pytest.mark.parametrize("command", [*COMMANDS.values(), RELOADING], ids=[*COMMANDS, "reload"])
def test_a_setting_the_checks_refuse_stops_the_start_with_their_report(
    command: list[str],
) -> None:
    port = free_port()
    done = subprocess.run(
        command,
        cwd=REPO,
        env={**broker_env(port), **CUT_SHORT, "DEBUG": "true"},
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
