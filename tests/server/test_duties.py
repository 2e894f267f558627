"""The broker's periodic duties run on their intervals, on any host."""

from __future__ import annotations

import threading
import time

from leek.server.duties import TICK, Duties


def test_a_duty_first_runs_one_interval_after_it_is_registered() -> None:
    # The clock counts from the host's boot: a duty whose last run counted
    # from 0 ran at the first tick on a host up longer than its interval, so
    # a sweep every hour came right after the one the broker ran at start.
    interval = 10 * TICK
    runs: list[float] = []
    ran = threading.Event()
    duties = Duties()

    def job() -> None:
        runs.append(time.monotonic())
        ran.set()

    registered = time.monotonic()
    duties.every(interval, job)
    duties.start()
    try:
        assert ran.wait(10)
    finally:
        duties.stop()
    assert runs[0] - registered >= interval


def test_a_duty_of_interval_zero_runs_at_every_tick_and_one_that_raises_runs_again() -> None:
    calls: list[int] = []
    enough = threading.Event()
    duties = Duties()

    def failing() -> None:
        calls.append(1)
        if len(calls) >= 3:
            enough.set()
        raise RuntimeError("this duty fails")

    duties.every(0, failing)
    duties.start()
    try:
        assert enough.wait(10)
    finally:
        duties.stop()
