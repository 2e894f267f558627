"""`leek cluster`: the brokers sharing the database, read from their rows."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.utils import timezone

import leek
from leek import cluster
from leek.models import BrokerNode, Status, Task
from tests import tasks
from tests.admin.factories import make_node, make_task
from tests.conftest import (
    BOTH_POOLS,
    REPO,
    BrokerFactory,
    BrokerProcess,
    broker_env,
    leek_cli,
    wait_for,
)


@dataclass
class TwoBrokers:
    """`busy` runs one task on its one worker and holds two queued;
    `idle` serves only the queue "other", which has no task."""

    busy: BrokerProcess
    idle: BrokerProcess

    @staticmethod
    def name(broker: BrokerProcess) -> str:
        return BrokerNode.objects.get(port=broker.port).name


def two_brokers(broker_factory: BrokerFactory, pool: str = "threads", **env: str) -> TwoBrokers:
    """Two brokers on one database; the client pushes to the busy one (started last)."""
    start: Callable[..., BrokerProcess] = broker_factory  # `env` holds only variables
    idle = start(args=("--queues", "other"), LEEK_POOL=pool, **env)
    busy = start(LEEK_WORKERS="1", LEEK_POOL=pool, **env)
    running = leek.enqueue(tasks.sleep, (60,))
    wait_for(lambda: Task.objects.filter(pk=running.id, status=Status.RUNNING).exists())
    for _ in range(2):
        leek.enqueue(tasks.noop)
    wait_for(lambda: Task.objects.filter(status=Status.QUEUED).count() == 2)
    wait_for(lambda: BrokerNode.objects.filter(port=busy.port, workers_busy=1).exists())
    return TwoBrokers(busy, idle)


def lines(output: str) -> dict[str, list[str]]:
    """The table's lines by node name, cut at runs of two spaces."""
    found = {}
    for line in output.splitlines()[1:]:
        cells = [cell.strip() for cell in line.split("  ") if cell.strip()]
        if len(cells) > 1:
            found[cells[0]] = cells
    return found


@BOTH_POOLS
def test_cluster_shows_each_broker_with_its_busy_workers_and_the_tasks_it_owns(
    broker_factory: BrokerFactory, pool: str
) -> None:
    brokers = two_brokers(broker_factory, pool)
    busy, idle = brokers.name(brokers.busy), brokers.name(brokers.idle)

    done = leek_cli(brokers.busy.port, "cluster")
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    assert done.stdout.splitlines()[0].split() == [
        "node",
        "address",
        "state",
        "queues",
        "busy",
        "heartbeat",
        "code",
        "queued",
        "running",
    ]
    table = lines(done.stdout)
    assert table[busy][1:5] == [f"127.0.0.1:{brokers.busy.port}", "live", "*", "1/1"]
    assert table[busy][-2:] == ["2", "1"]
    assert table[idle][1:5] == [f"127.0.0.1:{brokers.idle.port}", "live", "other", "0/2"]
    assert table[idle][-2:] == ["0", "0"]
    assert table[busy][5].endswith(" s ago")
    assert done.stdout.splitlines()[-1].startswith("2 brokers, 2 live")

    done = leek_cli(brokers.busy.port, "--json", "cluster")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert (data["live"], data["unowned"]) == (2, 0)
    found = {b["node"]: b for b in data["brokers"]}
    assert set(found) == {busy, idle}
    assert found[busy]["owned"] == {"queued": 2, "running": 1}
    assert (found[busy]["workers_busy"], found[busy]["workers"]) == (1, 1)
    assert found[idle]["owned"] == {"queued": 0, "running": 0}
    assert (found[idle]["workers_busy"], found[idle]["workers"]) == (0, 2)
    assert found[idle]["queues"] == ["other"]
    assert all(b["state"] == "live" and b["heartbeat_age"] >= 0 for b in found.values())


def test_manage_py_leek_cluster_prints_the_same_table(broker_factory: BrokerFactory) -> None:
    broker = broker_factory()
    name = BrokerNode.objects.get(port=broker.port).name
    done = leek_cli(broker.port, "cluster")
    managed = subprocess.run(
        [sys.executable, "manage.py", "leek", "cluster"],
        cwd=REPO,
        env=broker_env(broker.port),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (managed.returncode, managed.stderr) == (0, "")
    assert lines(managed.stdout)[name][:5] == lines(done.stdout)[name][:5]


def test_a_killed_broker_shows_as_silent_and_a_stopped_one_as_stopped(
    broker_factory: BrokerFactory,
) -> None:
    short = {"LEEK_HEARTBEAT_INTERVAL": "0.2", "LEEK_HEARTBEAT_TIMEOUT": "2"}
    brokers = two_brokers(broker_factory, **short)
    busy, idle = brokers.name(brokers.busy), brokers.name(brokers.idle)
    brokers.busy.kill(signal.SIGKILL)
    wait_for(lambda: _silent(busy))

    done = leek_cli(brokers.idle.port, "cluster", **short)
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    table = lines(done.stdout)
    assert table[busy][2] == "SILENT"
    assert table[idle][2] == "live"
    assert done.stdout.splitlines()[-1].startswith("2 brokers, 1 live (silent after 2 s)")

    assert brokers.idle.kill(signal.SIGTERM) == 0
    done = leek_cli(brokers.idle.port, "--json", "cluster", **short)
    assert done.returncode == 1, done.stderr
    data = json.loads(done.stdout)
    states = {b["node"]: b["state"] for b in data["brokers"]}
    assert states == {busy: "silent", idle: "stopped"}
    assert data["live"] == 0

    done = leek_cli(brokers.idle.port, "cluster", **short)
    assert done.returncode == 1
    assert lines(done.stdout)[idle][2] == "STOPPED"


def _silent(name: str) -> bool:
    found = {b.name: b for b in cluster.read(timeout=2.0).brokers}
    return found[name].state == cluster.SILENT


def test_cluster_without_any_broker_row_says_so_and_exits_1(transactional_db: Any) -> None:
    done = leek_cli(1, "cluster")
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[0] == "No broker has ever sent a heartbeat to this database."


def test_the_last_line_counts_the_unfinished_tasks_that_no_listed_broker_owns(
    transactional_db: Any,
) -> None:
    make_node("web1:8002", seen=timezone.now() - timedelta(minutes=5))
    make_task("queued")  # spooled: nobody's yet
    make_task("running", broker="purged:8002")
    done = leek_cli(1, "cluster")
    assert done.returncode == 1, done.stderr  # no live broker
    assert lines(done.stdout)["web1:8002"][2] == "SILENT"
    assert done.stdout.splitlines()[-1] == (
        "1 broker, 0 live (silent after 30 s); 2 unfinished task(s) owned by no broker listed"
    )
