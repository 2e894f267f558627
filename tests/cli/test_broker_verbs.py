"""The `leek` command as a shell user runs it: output and exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import leek
from tests import tasks
from tests.conftest import REPO, BrokerProcess, broker_env, free_port, leek_cli, wait_for


def test_ping_waiting_handled_stats(broker: BrokerProcess) -> None:
    done = leek_cli(broker.port, "ping")
    assert (done.returncode, done.stdout) == (0, "I'm OK\n")
    leek.push_task_to_queue(tasks.add, 1, 1).result(timeout=10)
    handled = leek_cli(broker.port, "handled")
    assert (handled.returncode, handled.stdout) == (0, "1 tasks handled\n")
    waiting = leek_cli(broker.port, "--json", "waiting", "--queue", "emails")
    assert json.loads(waiting.stdout) == {"ok": True, "waiting": 0, "queue": "emails"}
    stats = leek_cli(broker.port, "--json", "stats")
    assert stats.returncode == 0 and json.loads(stats.stdout)["workers_alive"] == 2


def test_manage_py_has_the_same_verbs(broker: BrokerProcess) -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", "leek", "ping"],
        cwd=REPO,
        env=broker_env(broker.port),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, "I'm OK\n")


def test_unreachable_exits_2_naming_the_address(db: Any) -> None:
    port = free_port()
    done = leek_cli(port, "ping")
    assert done.returncode == 2
    assert f"127.0.0.1:{port}" in done.stdout and "refused" in done.stdout


def test_stop_then_ping(broker: BrokerProcess) -> None:
    assert leek_cli(broker.port, "stop").returncode == 0
    wait_for(lambda: not broker.alive)
    assert leek_cli(broker.port, "ping").returncode == 2


def test_a_broker_on_all_interfaces_serves_a_client_it_did_not_start(
    broker_factory: Any, leek_settings: Any
) -> None:
    port = free_port()
    secret = "shared-secret-of-at-least-32-bytes"
    leek_settings(HOST="127.0.0.1", SECRET=secret)
    broker_factory(port=port, LEEK_HOST="0.0.0.0", LEEK_SECRET=secret)
    assert leek.push_task_to_queue(tasks.add, 3, 4).result(timeout=10) == 7
    wrong = subprocess.run(
        [sys.executable, "-m", "leek.cli", "ping"],
        cwd=REPO,
        env={**broker_env(port), "LEEK_SECRET": "wrong"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 1 and "LEEK_SECRET" in wrong.stdout
