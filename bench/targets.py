"""leek's targets, judged in every run: its processes pool's, and its push path's.

A target of the push path is met, or bounded, or not met. Bounded: a floor
measured in the same run (bench/floors.py), the same path with nothing of
leek's own around it, falls short of the target itself, and leek reaches
AT_FLOOR of that floor at least, so leek's own work is not what stands
between it and the target on that machine. For four clients against one
that is not strict: leek's ratio can pass the group floor's, its one client
being slower. Below AT_FLOOR of a floor that falls short, the target is not
met, and the cell says both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.figures import Table, floors_of, group_floor, measured, median

#: The suffix of leek's variants with the processes pool.
PROCESSES = "-processes"
#: The peer the mixed workload's target names.
MIXED_PEER = "huey-redis"
#: The part of a floor leek reaches at least for a target the floor falls
#: short of to count as bounded: the "at the floor" of the one-client targets.
AT_FLOOR = 0.9


@dataclass(frozen=True)
class Target:
    """A target of leek's processes pool: `figure` at most `needed` (a latency
    bound, when `against` is empty), or its ratio to `against`'s, leek ahead
    above 1, at least `needed`. "@threads" is the same leek with the threads pool."""

    what: str
    figure: str
    against: str
    needed: float


TARGETS = [
    Target("push p99 with every worker busy ≤ 2 ms", "cpu_push_p99", "", 2.0),
    Target("push p99, workers busy, within 2x of huey-redis's", "cpu_push_p99", "huey-redis", 0.5),
    Target("CPU-bound drain ≥ 1.8x the threads pool's", "cpu_rate", "@threads", 1.8),
    Target("CPU-bound drain ≥ celery-redis's", "cpu_rate", "celery-redis", 1.0),
    Target("no-op drain ≥ 2x celery-redis's", "drain", "celery-redis", 2.0),
]


def pool_table(results: dict[str, Any]) -> Table | None:
    """Each leek processes variant against the targets of its pool: the ratio
    (latency: theirs / leek's; throughput: leek's / theirs), or the figure when
    the target is a bound, and whether it is met."""
    docs = {d["system"]: d for d in measured(results)}
    leeks = [name for name in docs if name.startswith("leek") and name.endswith(PROCESSES)]
    rows = []
    for target in TARGETS:
        row = [target.what]
        for name in leeks:
            mine = median(docs[name], target.figure)
            other = name.removesuffix(PROCESSES) if target.against == "@threads" else target.against
            theirs = median(docs[other], target.figure) if other in docs else None
            if not mine or (target.against and not theirs):
                row.append("-")
            elif not theirs:
                row.append(f"{mine:.2f} ms, {met(mine <= target.needed)}")
            else:
                ratio = theirs / mine if target.figure.endswith("_p99") else mine / theirs
                row.append(f"{ratio:.2f}x, {met(ratio >= target.needed)}")
        rows.append(row)
    if leeks:
        rows += _busy_floor_rows(results, leeks)
    return (["target", *leeks], rows) if leeks else None


def _busy_floor_rows(results: dict[str, Any], leeks: list[str]) -> list[list[str]]:
    """What a push with every worker busy waits for at least, measured while a
    process a core spins (bench/floors.py): a round trip answered at once, and
    one answered after leek's write of a task, each p50 / p99."""
    floors = results["machine"].get("floors") or {}
    trip = floors.get("busy_round_trip") or {}
    pushes = [floors_of(results, name).get("busy_push") or {} for name in leeks]
    if not trip and not any(pushes):
        return []

    def cell(found: dict[str, float]) -> str:
        if "p50_ms" not in found:
            return "-"
        return f"{found['p50_ms']:.2f} / {found['p99_ms']:.2f} ms"

    return [
        ["floor, every core busy: a round trip, p50 / p99", *(cell(trip) for _ in leeks)],
        ["floor, every core busy: a round trip and a write, p50 / p99", *map(cell, pushes)],
    ]


def met(ok: bool) -> str:
    return "met" if ok else "not met"


@dataclass(frozen=True)
class Judged:
    """A push path target's figure in one variant, what it needs, and the
    floor's own figure where a floor bounds it (None where none does)."""

    figure: float
    needed: float
    floor: float | None = None
    percent: bool = True  # a share of a whole, else a ratio

    def cell(self) -> str:
        text = self._show(self.figure)
        if self.figure >= self.needed:
            return f"{text}, met"
        if self.floor is None or self.floor >= self.needed:
            return f"{text}, not met"
        floor = self._show(self.floor)
        if self.figure >= AT_FLOOR * self.floor:
            return f"{text}, bounded (the floor: {floor})"
        return f"{text}, not met (the floor: {floor}; {self.figure / self.floor:.0%} of it)"

    def _show(self, value: float) -> str:
        """`value` as a share or a ratio, with a digit more where rounding
        would show a figure short of what it needs as reaching it (79.9%)."""
        close = value < self.needed <= round(value, 2)  # both show two digits
        if self.percent:
            return f"{value:.1%}" if close else f"{value:.0%}"
        return f"{value:.3f}x" if close else f"{value:.2f}x"


#: A push path target's judge: the run's results, one leek variant's, and
#: its name; None where the target does not apply to it or was not measured.
Judge = Callable[[dict[str, Any], dict[str, Any], str], Judged | None]


def _one_client(results: dict[str, Any], doc: dict[str, Any], name: str) -> Judged | None:
    """One client's pushes against the most a push can reach, a round trip
    then a write: 60% on SQLite NORMAL, 90% on FULL and PostgreSQL; bounded
    by the group floor's one client."""
    trip = (results["machine"].get("floors") or {}).get("round_trip_us")
    database = floors_of(results, name)
    write, one = database.get("commit_us"), median(doc, "enqueue_1")
    if not trip or not write or not one:
        return None
    ceiling = 1e6 / (trip + write)
    group = group_floor(database.get("group"), "one")
    needed = 0.6 if name.startswith("leek-sqlite-normal") else 0.9
    return Judged(one / ceiling, needed, group / ceiling if group else None)


def _ping(results: dict[str, Any], doc: dict[str, Any], name: str) -> Judged | None:
    """ping against the bare round trip: at least 70% of its rate."""
    trip = (results["machine"].get("floors") or {}).get("round_trip_us")
    floor = doc.get("extra", {}).get("floor") or {}
    if not trip or not floor.get("ping_1_rate"):
        return None
    return Judged(trip / (1e6 / floor["ping_1_rate"]), 0.7)


def _four(way: str) -> Judge:
    """Four clients (client threads, or client processes) against one: 1.8x;
    bounded by the group floor's four client processes against its one."""

    def judge(results: dict[str, Any], doc: dict[str, Any], name: str) -> Judged | None:
        floor = doc.get("extra", {}).get("floor") or {}
        one = median(doc, "enqueue_1")
        if way == "processes":
            four = floor.get("push_processes_rate")
        else:
            four = median(doc, f"enqueue_{floor.get('threads', 4)}")
        if not one or not four:
            return None
        group = floors_of(results, name).get("group")
        alone, together = group_floor(group, "one"), group_floor(group, "four")
        bound = together / alone if alone and together else None
        return Judged(four / one, 1.8, bound, percent=False)

    return judge


def _enqueue_many(results: dict[str, Any], doc: dict[str, Any], name: str) -> Judged | None:
    """enqueue_many against leek's write of a batch, on SQLite NORMAL: 80%.
    The batch floor measured in turns with it, where there is one; else the
    one measured at the start of the run."""
    extra = doc.get("extra") or {}
    batch = extra.get("enqueue_many_floor_row_us") or floors_of(results, name).get("batch_row_us")
    rate = extra.get("enqueue_many_rate")
    if not batch or not rate:
        return None
    return Judged(rate / (1e6 / batch), 0.8)


def _mixed(results: dict[str, Any], doc: dict[str, Any], name: str) -> Judged | None:
    """Four clients pushing while the worker processes run the tasks, against
    huey with Redis: at least as many a second; bounded by the mixed floor
    (bench/mixed_floor.py) on the same database."""
    peer = next((d for d in measured(results) if d["system"] == MIXED_PEER), None)
    mine = median(doc, "mixed")
    theirs = median(peer, "mixed") if peer else None
    if not name.endswith(PROCESSES) or not mine or not theirs:
        return None
    floor = floors_of(results, name).get("mixed_per_s")
    return Judged(mine / theirs, 1.0, floor / theirs if floor else None, percent=False)


#: The push path's targets, in the order of its issue's list.
PUSH_TARGETS: list[tuple[str, Judge]] = [
    ("one client ≥ 60% (NORMAL) / 90% of the most a push can reach", _one_client),
    ("ping ≥ 70% of the bare round trip", _ping),
    ("4 client threads ≥ 1.8x one client", _four("threads")),
    ("4 client processes ≥ 1.8x one client", _four("processes")),
    ("enqueue_many ≥ 80% of the batch write", _enqueue_many),
    (f"mixed, processes pool, ≥ {MIXED_PEER}", _mixed),
]


def push_table(results: dict[str, Any]) -> Table | None:
    """Each leek variant against the push path's targets: the figure, and
    whether it is met, bounded by a floor of the same run, or not met."""
    leeks = [d for d in measured(results) if d["system"].startswith("leek")]
    if not leeks:
        return None
    rows = []
    for what, judge in PUSH_TARGETS:
        judged = [judge(results, doc, doc["system"]) for doc in leeks]
        rows.append([what, *(j.cell() if j else "-" for j in judged)])
    return ["target", *(d["system"] for d in leeks)], rows
