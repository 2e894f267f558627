"""The push path's targets, as every run judges them (bench/targets.py)."""

from __future__ import annotations

from typing import Any

from bench.targets import push_table


def run(one: float, four: float, group: dict[str, float]) -> dict[str, Any]:
    """The results of a run of leek-pg alone: its pushes from one client and
    from four, and its database's floors."""
    figures = {"enqueue_1": {"median": one}, "enqueue_4": {"median": four}}
    extra = {"floor": {"threads": 4, "push_processes_rate": four, "ping_1_rate": 20_000}}
    floors = {"round_trip_us": 50.0, "pg": {"commit_us": 250.0, "group": group}}
    return {
        "machine": {"floors": floors},
        "systems": [{"system": "leek-pg", "figures": figures, "extra": extra}],
    }


def group(one: float, four: float, unbounded: float = 0.0) -> dict[str, float]:
    """The group floor's ways: sleeping and with SPIN at `one` and `four`,
    polling without bound at `unbounded`."""
    return {
        "one_per_s": one,
        "one_spin_per_s": one,
        "one_polling_per_s": unbounded,
        "four_per_s": four,
        "four_spin_per_s": four,
        "four_polling_per_s": unbounded,
    }


def cells(results: dict[str, Any]) -> dict[str, str]:
    table = push_table(results)
    assert table is not None
    return {row[0].split(" ≥")[0]: row[1] for row in table[1]}


def test_a_target_below_what_its_floor_reaches_is_not_met() -> None:
    # the most a push can reach: 1e6 / (50 + 250) = 3,333 a second
    found = cells(run(one=2_000, four=3_000, group=group(one=3_200, four=6_400)))
    assert found["one client"] == "60%, not met"
    assert found["4 client threads"] == "1.50x, not met"
    assert found["ping"] == "100%, met"


def test_a_target_past_what_its_floor_reaches_is_bounded_once_leek_is_near_it() -> None:
    found = cells(run(one=2_000, four=3_000, group=group(one=2_200, four=3_300)))
    assert found["one client"] == "60%, bounded (the floor: 66%)"
    assert found["4 client processes"] == "1.50x, bounded (the floor: 1.50x)"


def test_a_target_well_below_a_floor_that_falls_short_is_not_met() -> None:
    found = cells(run(one=1_800, four=2_700, group=group(one=2_400, four=3_600)))
    assert found["one client"] == "54%, not met (the floor: 72%; 75% of it)"
    assert found["4 client threads"] == "1.50x, bounded (the floor: 1.50x)"


def test_the_floor_is_the_way_leek_may_poll_not_the_poll_without_bound() -> None:
    found = cells(run(one=2_000, four=3_000, group=group(2_200, 3_300, unbounded=9_000)))
    assert found["one client"] == "60%, bounded (the floor: 66%)"


def test_a_target_met_is_met_whatever_its_floor() -> None:
    found = cells(run(one=3_100, four=6_000, group=group(one=2_400, four=3_600)))
    assert found["one client"] == "93%, met"
    assert found["4 client threads"] == "1.94x, met"
    assert found["enqueue_many"] == "-"


def filled(extra: dict[str, Any]) -> dict[str, Any]:
    """The results of a run of leek-sqlite-normal alone, with the backlog's
    figures `extra`, and a batch floor of 12 µs a task at the run's start."""
    floors = {"round_trip_us": 50.0, "sqlite_normal": {"batch_row_us": 12.0}}
    figures = {"enqueue_1": {"median": 2_000}}
    doc = {"system": "leek-sqlite-normal", "figures": figures, "extra": extra}
    return {"machine": {"floors": floors}, "systems": [doc]}


def test_enqueue_many_is_judged_against_the_batch_floor_measured_in_turns_with_it() -> None:
    # 50,000 a second: 20 µs a task, against 17 measured in turns (85%), where
    # the floor of the run's start (12 µs) would make it 60%.
    extra: dict[str, Any] = {"enqueue_many_rate": 50_000}
    assert cells(filled(extra))["enqueue_many"] == "60%, not met"
    extra["enqueue_many_floor_row_us"] = 17.0
    assert cells(filled(extra))["enqueue_many"] == "85%, met"


def test_a_figure_just_short_of_its_target_is_not_shown_as_reaching_it() -> None:
    extra = {"enqueue_many_rate": 66_600, "enqueue_many_floor_row_us": 12.0}  # 79.92%
    assert cells(filled(extra))["enqueue_many"] == "79.9%, not met"
    extra["enqueue_many_rate"] = 60_000
    assert cells(filled(extra))["enqueue_many"] == "72%, not met"


def mixed(leek: float, huey: float, floor: float | None) -> dict[str, Any]:
    """The results of a run of leek-pg-processes and huey with Redis: their
    mixed workloads, and the mixed floor on PostgreSQL (None: not measured)."""
    floors: dict[str, Any] = {"round_trip_us": 50.0, "pg": {}}
    if floor is not None:
        floors["pg"]["mixed_per_s"] = floor
    systems = [
        {"system": "leek-pg-processes", "figures": {"mixed": {"median": leek}}},
        {"system": "huey-redis", "figures": {"mixed": {"median": huey}}},
    ]
    return {"machine": {"floors": floors}, "systems": systems}


def test_the_mixed_workload_is_bounded_by_the_mixed_floor_where_it_falls_short() -> None:
    assert cells(mixed(2_000, 3_000, None))["mixed, processes pool,"] == "0.67x, not met"
    assert cells(mixed(2_000, 3_000, 2_100))["mixed, processes pool,"] == (
        "0.67x, bounded (the floor: 0.70x)"
    )
    assert cells(mixed(1_500, 3_000, 2_100))["mixed, processes pool,"] == (
        "0.50x, not met (the floor: 0.70x; 71% of it)"
    )
    assert cells(mixed(2_000, 3_000, 3_600))["mixed, processes pool,"] == "0.67x, not met"
    assert cells(mixed(3_100, 3_000, 2_100))["mixed, processes pool,"] == "1.03x, met"


def test_the_mixed_table_sets_leek_beside_the_mixed_floor_and_the_peer() -> None:
    from bench.floor_tables import mixed_table

    table = mixed_table(mixed(2_000, 3_000, 2_100), "huey-redis")
    assert table is not None
    assert table[1] == [
        ["leek-pg-processes", "2,000", "2,100", "95%", "3,000", "0.70x", "- / - / -"]
    ]
    assert mixed_table(mixed(2_000, 3_000, None), "huey-redis") is None


def test_the_mixed_table_sets_the_host_cpu_a_task_beside_the_rates() -> None:
    from bench.floor_tables import mixed_table

    results = mixed(2_000, 3_000, 2_100)
    results["machine"]["floors"]["pg"]["mixed_cpu_us"] = 450.0
    leek, huey = results["systems"]
    leek["figures"]["mixed_cpu_us"] = {"median": 1_234.4}
    huey["figures"]["mixed_cpu_us"] = {"median": 610.0}
    table = mixed_table(results, "huey-redis")
    assert table is not None
    assert table[0][-1] == "host CPU µs a task: leek / floor / huey-redis"
    assert table[1][0][-1] == "1,234 / 450 / 610"
