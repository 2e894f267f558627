"""Paused queues on real brokers: accepted, kept waiting, run on resume."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import leek
from leek import queues
from leek.client import connection as client
from leek.models import Event, QueueState, Task
from tests.conftest import BOTH_POOLS, leek_cli, wait_for
from tests.server import control_tasks

#: Seconds a test leaves a paused queue's tasks to (wrongly) start: several
#: of the brokers' reads of the paused queues.
OBSERVE = 1.5


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@BOTH_POOLS
def test_a_paused_queue_accepts_tasks_and_runs_them_on_resume(
    broker_factory: Any, pool: str, tmp_path: Path
) -> None:
    broker = broker_factory(LEEK_POOL=pool, LEEK_WORKERS="1")  # one worker: runs in order
    assert leek_cli(broker.port, "pause", "slow").returncode == 0
    wait_for(lambda: leek.stats()[1]["paused"] == ["slow"])
    marks = tmp_path / "marks"
    held = [
        leek.enqueue(control_tasks.mark, (str(marks), f"slow{i}"), queue="slow") for i in range(5)
    ]
    other = leek.enqueue(control_tasks.mark, (str(marks), "fast"), queue="fast")
    assert other.result(timeout=20) == "fast"
    time.sleep(OBSERVE)
    assert [h.status() for h in held] == ["queued"] * 5
    assert lines(marks) == ["fast"]
    assert leek.waiting("slow") == (True, 5)
    done = leek_cli(broker.port, "resume", "slow")
    assert done.returncode == 0 and "resumed" in done.stdout
    assert [h.result(timeout=20) for h in held] == [f"slow{i}" for i in range(5)]
    assert lines(marks) == ["fast", *(f"slow{i}" for i in range(5))]  # in push order


def test_two_brokers_on_one_database_both_obey_a_pause(
    broker_factory: Any, leek_settings: Any, tmp_path: Path
) -> None:
    first = broker_factory()
    client.close()
    second = broker_factory()
    queues.pause("slow", "test")
    for port in (first.port, second.port):
        wait_for(functools.partial(paused_on, port, ["slow"]))
    marks = tmp_path / "marks"
    held = []
    for port in (first.port, second.port):  # each broker accepts, and owns, some
        client.close()
        leek_settings(PORT=port)
        held += [
            leek.enqueue(control_tasks.mark, (str(marks), f"{port}-{i}"), queue="slow")
            for i in range(3)
        ]
    time.sleep(OBSERVE)
    assert [h.status() for h in held] == ["queued"] * 6
    assert set(Task.objects.filter(queue="slow").values_list("broker", flat=True)) == {
        f"{host}:{port}" for host, port in nodes(first.port, second.port)
    }
    assert not marks.exists()
    queues.resume("slow", "test")
    assert sorted(h.result(timeout=20) for h in held) == sorted(lines(marks))
    assert len(lines(marks)) == 6


def paused_on(port: int, expected: list[str]) -> bool:
    """Whether `leek stats` shows `expected` paused on the broker on `port`."""
    out = leek_cli(port, "--json", "stats")
    assert out.returncode == 0, out.stderr
    return bool(json.loads(out.stdout)["paused"] == expected)


def nodes(*ports: int) -> list[tuple[str, int]]:
    import socket

    return [(socket.gethostname(), port) for port in ports]


def test_a_task_running_when_its_queue_is_paused_finishes(broker: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    running = leek.enqueue(control_tasks.gated, (str(gate),), queue="slow")
    wait_for(lambda: running.status() == "running")
    queues.pause("slow")
    wait_for(lambda: leek.stats()[1]["paused"] == ["slow"])
    gate.touch()
    assert running.result(timeout=20) == str(gate)


def test_a_broker_started_while_a_queue_is_paused_starts_none_of_its_tasks(
    broker_factory: Any, tmp_path: Path
) -> None:
    queues.pause("slow", "test")
    broker_factory()
    marks = tmp_path / "marks"
    held = leek.enqueue(control_tasks.mark, (str(marks), "x"), queue="slow")
    time.sleep(OBSERVE)
    assert held.status() == "queued"
    queues.resume("slow", "test")
    assert held.result(timeout=20) == "x"


def test_pause_and_resume_say_what_changed_and_log_who(broker: Any) -> None:
    first = leek_cli(broker.port, "pause", "reports")
    again = leek_cli(broker.port, "pause", "reports")
    assert (first.returncode, again.returncode) == (0, 0)
    assert "queue reports paused" in first.stdout
    assert "was paused already" in again.stdout
    state = QueueState.objects.get(queue="reports")
    assert state.paused and state.paused_at is not None and "@" in state.paused_by
    assert leek_cli(broker.port, "resume", "reports").returncode == 0
    assert "was not paused" in leek_cli(broker.port, "resume", "reports").stdout
    kinds = list(Event.objects.order_by("id").values_list("kind", flat=True))
    assert kinds == ["queue_paused", "queue_resumed"]


def test_a_queue_name_too_long_is_refused(broker: Any) -> None:
    out = leek_cli(broker.port, "pause", "q" * 65)
    assert out.returncode == 1
    assert "1 to 64 characters" in out.stderr
    assert not QueueState.objects.exists()
