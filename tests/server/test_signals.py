"""leek's signals, as receivers in a real broker get them: once per event, in both pools."""

from __future__ import annotations

import signal
import socket
from pathlib import Path
from typing import Any

import pytest

import leek
from leek.client import connection
from tests import tasks
from tests.conftest import BOTH_POOLS, BrokerProcess, task_message, wait_for
from tests.server.signal_receivers import read

SETTINGS = "tests.server.observed_settings"
POOL = "leek.server.workers.Pool"
BROKER = "leek.server.broker.Broker"


def observed(
    broker_factory: Any, tmp_path: Path, pool: str, **env: str
) -> tuple[BrokerProcess, Path]:
    """A broker whose receivers log every signal to the file returned."""
    path = tmp_path / "signals.jsonl"
    broker = broker_factory(
        DJANGO_SETTINGS_MODULE=SETTINGS,
        SIGNALS_FILE=str(path),
        LEEK_POOL=pool,
        LEEK_RETRY_BACKOFF="0.05",
        **env,
    )
    return broker, path


def of_task(path: Path, task_id: str) -> list[dict[str, Any]]:
    return [entry for entry in read(path) if entry.get("task_id") == task_id]


@BOTH_POOLS
def test_a_task_that_succeeds_is_received_started_and_succeeded_once(
    broker_factory: Any, tmp_path: Path, pool: str
) -> None:
    broker, path = observed(broker_factory, tmp_path, pool)
    message = task_message(tasks.add, 2, 3)
    message["queue"] = "sums"
    connection.call("enqueue", message)
    connection.call("enqueue", message)  # a replay commits nothing new: no second signal
    assert leek.TaskHandle(message["id"]).result(timeout=20) == 5
    wait_for(lambda: any(e["signal"] == "task_succeeded" for e in of_task(path, message["id"])))
    broker.kill(signal.SIGTERM)
    entries = of_task(path, message["id"])
    assert [e["signal"] for e in entries] == ["task_received", "task_started", "task_succeeded"]
    received, started, succeeded = entries
    assert {e["pid"] for e in entries} == {broker.proc.pid if broker.proc else 0}
    assert received["sender"] == BROKER and started["sender"] == succeeded["sender"] == POOL
    for entry in entries:
        assert (entry["name"], entry["queue"]) == ("tests.tasks.add", "sums")
    assert started["attempt"] == succeeded["attempt"] == 1
    assert succeeded["result"] == 5
    assert isinstance(succeeded["duration"], float) and succeeded["duration"] >= 0


@BOTH_POOLS
def test_a_failure_retried_then_final_sends_failed_twice_and_retried_once(
    broker_factory: Any, tmp_path: Path, pool: str
) -> None:
    broker, path = observed(broker_factory, tmp_path, pool)
    handle = leek.enqueue(tasks.fail, ("nope",), max_retries=1)
    with pytest.raises(leek.TaskFailed):
        handle.result(timeout=20)
    task_id = str(handle.id)
    wait_for(lambda: any(e.get("final") is True for e in of_task(path, task_id)))
    broker.kill(signal.SIGTERM)
    entries = of_task(path, task_id)
    assert [(e["signal"], e.get("attempt")) for e in entries] == [
        ("task_received", None),
        ("task_started", 1),
        ("task_failed", 1),
        ("task_retried", 1),
        ("task_started", 2),
        ("task_failed", 2),
    ]
    assert {e["pid"] for e in entries} == {broker.proc.pid if broker.proc else 0}
    first, retried, last = entries[2], entries[3], entries[5]
    assert (first["final"], last["final"]) == (False, True)
    for entry in (first, retried, last):
        assert entry["exc_type"] == "builtins.ValueError"
        assert entry["exc_message"] == "nope"
        assert "ValueError: nope" in entry["traceback"]
        assert entry["queue"] == "default"
    assert "retry_at" in retried and "final" not in retried


@BOTH_POOLS
def test_the_broker_tells_of_its_start_and_its_stop_once_each(
    broker_factory: Any, tmp_path: Path, pool: str
) -> None:
    broker, path = observed(broker_factory, tmp_path, pool)
    wait_for(lambda: read(path))
    assert broker.kill(signal.SIGTERM) == 0
    entries = [e for e in read(path) if e["signal"].startswith("broker_")]
    node = f"{socket.gethostname()}:{broker.port}"
    assert entries == [
        {
            "signal": "broker_started",
            "pid": broker.proc.pid if broker.proc else 0,
            "sender": BROKER,
            "node": node,
            "host": "127.0.0.1",
            "port": broker.port,
        },
        {
            "signal": "broker_stopping",
            "pid": broker.proc.pid if broker.proc else 0,
            "sender": BROKER,
            "node": node,
        },
    ]


def test_a_receiver_that_raises_is_logged_and_the_task_still_succeeds(
    broker_factory: Any, tmp_path: Path
) -> None:
    broker, path = observed(
        broker_factory,
        tmp_path,
        "threads",
        SIGNALS_RAISE="task_received,task_started,task_succeeded",
    )
    handle = leek.push_task_to_queue(tasks.add, 1, 2)
    assert handle.result(timeout=20) == 3
    task_id = str(handle.id)
    wait_for(lambda: broker.output().count("signal receiver raised") == 3)
    logged = [line for line in broker.output().splitlines() if "signal receiver raised" in line]
    for name, line in zip(("task_received", "task_started", "task_succeeded"), logged, strict=True):
        assert f"signal={name}" in line and f"task={task_id}" in line
    assert "RuntimeError: a receiver of task_succeeded is broken" in broker.output()
    # the receivers connected after the broken one still got every signal
    assert [e["signal"] for e in of_task(path, task_id)] == [
        "task_received",
        "task_started",
        "task_succeeded",
    ]
    assert leek.push_task_to_queue(tasks.add, 2, 2).result(timeout=20) == 4
