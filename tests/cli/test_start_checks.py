"""`leek start` runs Django's system checks before it serves, as `manage.py leek start` does."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

import leek
from tests.conftest import REPO, BrokerProcess, broker_env, free_port

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


def test_a_warning_is_printed_and_the_broker_starts(broker_factory: Any) -> None:
    broker: BrokerProcess = broker_factory(LEEK_RELOAD_ON_NEW_CODE="1", LEEK_CODE_VERSION="")
    assert leek.ping() == (True, "I'm OK")
    assert "(leek.W016) LEEK['RELOAD_ON_NEW_CODE'] is on" in broker.output()
