"""leek's pushes and pings against the floors of the same run (bench/floors.py):
the round trips under a ping, the most one client's pushes can reach, and
what several clients add to one (bench/report.py prints them)."""

from __future__ import annotations

from typing import Any

from bench.figures import Table, floors_of, group_floor, measured, median, rate, share


def floor_table(results: dict[str, Any]) -> Table | None:
    """Each leek's pushes against its round-trip floor, ping, measured alike."""
    rows = []
    threads = 4
    for doc in measured(results):
        floor = doc.get("extra", {}).get("floor")
        if not floor:
            continue
        threads = floor["threads"]
        one, many = median(doc, "enqueue_1"), median(doc, f"enqueue_{threads}")
        rows.append(
            [
                doc["system"],
                rate(floor["ping_1_rate"]),
                rate(one),
                share(one or 0.0, floor["ping_1_rate"]),
                rate(floor["ping_many_rate"]),
                rate(many),
                share(many or 0.0, floor["ping_many_rate"]),
            ]
        )
    head = [
        "leek",
        "ping 1 client/s",
        "enqueue 1 client/s",
        "enqueue/ping",
        f"ping {threads} clients/s",
        f"enqueue {threads} clients/s",
        "enqueue/ping",
    ]
    return (head, rows) if rows else None


#: The round trips under a ping (bench/floors.py): of a byte, sleeping and
#: polling, then of a leek frame each way, sleeping and polling.
PING_FLOORS = (
    "round_trip_us",
    "spin_round_trip_us",
    "framed_round_trip_us",
    "framed_spin_round_trip_us",
)


def ping_table(results: dict[str, Any]) -> Table | None:
    """Each leek's ping from one client against the round trips under it: of a
    byte, and of a leek frame each way, each side sleeping on its socket or
    polling it (bench/floors.py)."""
    floors = results["machine"].get("floors") or {}
    found = [floors.get(key) for key in PING_FLOORS]
    if not all(found):
        return None
    trip, spun, framed, framed_spun = (float(value) for value in found if value)
    rows = []
    for doc in measured(results):
        floor = doc.get("extra", {}).get("floor")
        if not floor:
            continue
        ping = 1e6 / floor["ping_1_rate"]
        rows.append(
            [
                doc["system"],
                f"{ping:.1f}",
                f"{trip:g} / {spun:g}",
                share(trip, ping),
                f"{framed:g} / {framed_spun:g}",
                share(framed_spun, ping),
            ]
        )
    head = [
        "leek",
        "ping µs",
        "round trip µs, sleeping / polling",
        "sleeping's of ping",
        "framed µs, sleeping / polling",
        "polling's of ping",
    ]
    return (head, rows) if rows else None


def clients_table(results: dict[str, Any]) -> Table | None:
    """Each leek's pushes from one client, from several client threads of one
    process, and from as many client processes."""
    rows = []
    count = 4
    for doc in measured(results):
        floor = doc.get("extra", {}).get("floor")
        if not floor or "push_processes_rate" not in floor:
            continue
        count = floor["threads"]
        one, many = median(doc, "enqueue_1"), median(doc, f"enqueue_{count}")
        processes = floor["push_processes_rate"]
        rows.append(
            [
                doc["system"],
                rate(one),
                rate(many),
                f"{many / one:.2f}x" if one and many else "-",
                rate(processes),
                f"{processes / one:.2f}x" if one else "-",
                _group_share(floors_of(results, doc["system"]).get("group")),
            ]
        )
    head = [
        "leek",
        "enqueue 1 client/s",
        f"{count} client threads/s",
        "of 1 client",
        f"{count} client processes/s",
        "of 1 client",
        "floor: 4 processes of 1",
    ]
    return (head, rows) if rows else None


def _group_share(group: dict[str, float] | None) -> str:
    """The group floor's four client processes against its one client, the
    faster way leek may take of each (bench/figures.py's `group_floor`), with
    the rates; '-' where not measured."""
    one, four = group_floor(group, "one"), group_floor(group, "four")
    if not one or not four:
        return "-"
    return f"{four / one:.2f}x ({rate(four)} / {rate(one)})"


def ceiling_table(results: dict[str, Any]) -> Table | None:
    """Each leek's one-client pushes against the most one can reach on the
    machine: a round trip, then leek's write of one task (bench/floors.py);
    and against the group floor's one client, leek's frames and write in a
    loop with nothing of leek's own around them: between the two, the loop's
    own rounds; beyond the floor, leek's own work."""
    floors = results["machine"].get("floors") or {}
    trip = floors.get("round_trip_us")
    rows = []
    for doc in measured(results):
        database = floors_of(results, doc["system"])
        write = database.get("commit_us")
        one = median(doc, "enqueue_1")
        if not trip or not write or not one:
            continue
        ceiling = 1e6 / (trip + write)
        group = group_floor(database.get("group"), "one")
        rows.append(
            [
                doc["system"],
                f"{trip:g}",
                f"{write:g}",
                rate(ceiling),
                rate(one),
                share(one, ceiling),
                f"{rate(group)} ({share(group, ceiling)})" if group else "-",
                share(one, group),
            ]
        )
    head = [
        "leek",
        "round trip µs",
        "write of a task µs",
        "1 client at most/s",
        "enqueue 1 client/s",
        "of that",
        "group floor, 1 client/s (of at most)",
        "enqueue of the group floor",
    ]
    return (head, rows) if rows else None


def mixed_table(results: dict[str, Any], peer: str) -> Table | None:
    """Each leek processes variant's mixed workload against the mixed floor
    on its database (bench/mixed_floor.py), and both against `peer`'s: the
    rates, and the host's CPU a task in each (every process of the host)."""
    docs = {d["system"]: d for d in measured(results)}
    theirs = median(docs[peer], "mixed") if peer in docs else None
    their_cpu = median(docs[peer], "mixed_cpu_us") if peer in docs else None
    rows = []
    for name, doc in docs.items():
        floors = floors_of(results, name)
        floor = floors.get("mixed_per_s")
        mine = median(doc, "mixed")
        if not name.startswith("leek") or not name.endswith("-processes") or not floor:
            continue
        rows.append(
            [
                name,
                rate(mine),
                rate(floor),
                share(mine or 0.0, floor),
                rate(theirs),
                f"{floor / theirs:.2f}x" if theirs else "-",
                " / ".join(
                    _cpu(cpu)
                    for cpu in (median(doc, "mixed_cpu_us"), floors.get("mixed_cpu_us"), their_cpu)
                ),
            ]
        )
    head = [
        "leek",
        "mixed/s",
        "mixed floor/s",
        "of the floor",
        f"{peer} mixed/s",
        "floor/peer",
        f"host CPU µs a task: leek / floor / {peer}",
    ]
    return (head, rows) if rows else None


def _cpu(us: float | None) -> str:
    """Microseconds of CPU, or "-" where not measured (a run before they were)."""
    return f"{us:,.0f}" if us else "-"
