"""sqlite_time writes a Unix time as Django writes a naive UTC datetime on SQLite."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from leek.server.rows import Dialect, sqlite_time


def django_text(ts: float) -> str:
    """What Django's SQLite backend stores for this time (str of a naive datetime)."""
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None).isoformat(" ")


EDGES = [
    0.0,
    1.0,
    0.5e-6,  # half a microsecond: rounded half to even, down
    1.5e-6,  # and up
    2.5e-6,
    0.9999994,
    0.9999995,  # rounds up into the next second
    1e9 + 0.9999996,
    1_700_000_000.0000005,
    59.9999999,  # into the next minute
    86_399.9999999,  # into the next day
    951_782_399.9999999,  # into 29 February 2000
    253_402_300_799.0,  # the last second of year 9999
    -1.5,  # before 1970
]


@pytest.mark.parametrize("ts", EDGES)
def test_a_time_is_written_as_django_writes_it(ts: float) -> None:
    assert sqlite_time(ts) == django_text(ts)


def test_random_times_over_every_year_and_within_one_second_match_django() -> None:
    rng = random.Random(7)
    times = [rng.uniform(0, 253_402_300_799) for _ in range(20_000)]
    base = 1_800_000_000
    times += [base + micro / 1e6 + half for micro in range(0, 10**6, 211) for half in (0, 5e-7)]
    assert [t for t in times if sqlite_time(t) != django_text(t)] == []


def test_a_time_past_year_9999_is_refused_as_datetime_refuses_it() -> None:
    with pytest.raises(ValueError, match="year"):
        sqlite_time(253_402_300_799.9999999)


def test_the_sqlite_dialect_writes_times_so_and_postgresql_gets_datetimes() -> None:
    assert Dialect("sqlite").time(1.25) == "1970-01-01 00:00:01.250000"
    assert Dialect("postgresql").time(1.25) == datetime(1970, 1, 1, 0, 0, 1, 250000, tzinfo=UTC)
    assert Dialect("sqlite").time(None) is None
