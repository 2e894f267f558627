"""Delayed tasks start on time, also when their broker restarts in between."""

from __future__ import annotations

import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

import leek
from leek.models import Task
from tests.conftest import BrokerProcess, wait_for

from . import periodic_tasks as tasks

DELAY = 2.0
LATEST = 3.0  # a delayed task starts within a second of its time


def started_after(marks: Path, pushed: float) -> float:
    """Seconds from the push to the task's start, as the task itself saw it."""
    found = wait_for(lambda: tasks.stamps(str(marks)), timeout=LATEST + 10)
    assert len(found) == 1, f"the delayed task ran {len(found)} times"
    return float(found[0]) - pushed


def test_a_delayed_task_starts_on_time(broker: BrokerProcess, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    pushed = time.time()
    handle = leek.enqueue(tasks.stamp, (str(marks),), delay=DELAY)
    assert handle.status() == "queued"
    assert leek.waiting() == (True, 1)
    took = started_after(marks, pushed)
    assert DELAY <= took <= LATEST, f"started {took:.3f} s after the push"
    handle.result(timeout=5)
    row = Task.objects.get(pk=handle.id)
    assert row.started_at is not None
    assert DELAY <= row.started_at.timestamp() - pushed <= LATEST


def test_run_at_is_kept_to(broker: BrokerProcess, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    pushed = time.time()
    leek.enqueue(tasks.stamp, (str(marks),), run_at=timezone.now() + timedelta(seconds=DELAY))
    took = started_after(marks, pushed)
    assert DELAY <= took <= LATEST, f"started {took:.3f} s after the push"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_delayed_task_survives_a_broker_restart(
    broker: BrokerProcess, tmp_path: Path, sig: signal.Signals
) -> None:
    marks = tmp_path / "marks"
    pushed = time.time()
    handle = leek.enqueue(tasks.stamp, (str(marks),), delay=DELAY)
    broker.kill(sig)
    assert not tasks.stamps(str(marks))
    broker.start()
    back = time.time() - pushed  # about a second on a busy 2-core machine
    took = started_after(marks, pushed)
    row = Task.objects.filter(pk=handle.id).values().first()
    # on time; or, if the restart itself outlasted the delay, at once when the broker is back
    latest = LATEST if back < DELAY else back + LATEST - DELAY
    assert DELAY <= took <= latest, (
        f"started {took:.3f} s after the push, broker back after "
        f"{back:.3f} s: {row}\n{broker.output()}"
    )
    assert handle.result(timeout=5) == pytest.approx(pushed + took)
