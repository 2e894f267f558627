"""The broker's periodic duties run on their intervals, on any host."""

from __future__ import annotations

import threading
import time

from leek.server.duties import TICK, Duties


def runs_of(interval: float, first: float = 0.0, wanted: int = 1) -> list[float]:
    """The seconds after its registration at which a duty of `interval`,
    first run `first` seconds after it, ran its first `wanted` times."""
    runs: list[float] = []
    enough = threading.Event()
    duties = Duties()
    registered = time.monotonic()

    def job() -> None:
        runs.append(time.monotonic() - registered)
        if len(runs) >= wanted:
            enough.set()
        raise RuntimeError("a duty that raises runs again at its next turn")

    duties.every(interval, job, first)
    duties.start()
    try:
        assert enough.wait(10)
    finally:
        duties.stop()
    return runs


def test_a_duty_first_runs_at_the_first_tick_whatever_its_interval() -> None:
    # Its last run counted from 0 on the monotonic clock, which counts from
    # the host's boot: a duty ran at the first tick on a host up longer than
    # its interval, and not on another (nor here, with this interval).
    assert len(runs_of(1e9)) == 1  # within runs_of's 10 s, not a billion


def test_a_duty_registered_with_a_wait_first_runs_after_it() -> None:
    # The broker sweeps at start: its sweep duty must not sweep again at the
    # first tick, where a client's sweep would find that claim in flight.
    first = runs_of(3600.0, first=10 * TICK)[0]
    assert first >= 10 * TICK


def test_a_duty_of_interval_zero_runs_at_every_tick_and_again_after_it_raises() -> None:
    assert len(runs_of(0, wanted=3)) == 3
