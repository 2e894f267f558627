"""Tables from bench/results.json: plain text for the terminal, Markdown for the docs.

python -m bench.report            print the tables of the last run
python -m bench.report --docs     also rewrite docs/benchmarks.md between its markers
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"

#: figure -> (column title, higher is better)
COLUMNS = {
    "enqueue_1": ("enqueue 1 client/s", True),
    "enqueue_4": ("enqueue 4 clients/s", True),
    "drain": ("drain/s", True),
    "mixed": ("mixed/s", True),
    "latency_p50": ("p50 ms", False),
    "latency_p99": ("p99 ms", False),
}

#: the CPU-bound workload's figures, in a table of their own
CPU_COLUMNS = {
    "cpu_rate": ("CPU-bound drain/s", True),
    "cpu_push_p50": ("push p50 ms, workers busy", False),
    "cpu_push_p99": ("push p99 ms, workers busy", False),
}


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
#: The suffix of leek's variants with the processes pool.
PROCESSES = "-processes"

Table = tuple[list[str], list[list[str]]]


def _fmt(figure: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if figure.endswith(("_p50", "_p99")) else f"{value:,.0f}"


def _median(doc: dict[str, Any], figure: str) -> float | None:
    found = doc.get("figures", {}).get(figure)
    return float(found["median"]) if found else None


def measured(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in results["systems"] if d.get("figures")]


def figures_table(results: dict[str, Any]) -> Table:
    head = ["system", *(title for title, _ in COLUMNS.values()), "drain/mixed N"]
    rows = []
    for doc in measured(results):
        cells = [_fmt(f, _median(doc, f)) for f in COLUMNS]
        rows.append([doc["system"], *cells, f"{doc.get('drain_n', '?'):,}"])
    return head, rows


def cpu_table(results: dict[str, Any]) -> Table | None:
    """The CPU-bound workload's figures, every system that ran it."""
    head = [
        "system",
        *(title for title, _ in CPU_COLUMNS.values()),
        "CPU-bound N",
        "pushes timed",
    ]
    rows = []
    for doc in measured(results):
        cells = [_fmt(f, _median(doc, f)) for f in CPU_COLUMNS]
        timed = sorted({r["n"] for r in doc.get("runs", {}).get("cpu_push", [])})
        if set(cells) != {"-"}:
            pushes = f"{timed[0]}-{timed[-1]}" if len(timed) > 1 else "".join(map(str, timed))
            rows.append([doc["system"], *cells, f"{doc.get('cpu_n', '?'):,}", pushes])
    return (head, rows) if rows else None


def targets_table(results: dict[str, Any]) -> Table | None:
    """Each leek processes variant against the targets of its pool: the ratio
    (latency: theirs / leek's; throughput: leek's / theirs), or the figure when
    the target is a bound, and whether it is met."""
    docs = {d["system"]: d for d in measured(results)}
    leeks = [name for name in docs if name.startswith("leek") and name.endswith(PROCESSES)]
    rows = []
    for target in TARGETS:
        row = [target.what]
        for name in leeks:
            mine = _median(docs[name], target.figure)
            other = name.removesuffix(PROCESSES) if target.against == "@threads" else target.against
            theirs = _median(docs[other], target.figure) if other in docs else None
            if not mine or (target.against and not theirs):
                row.append("-")
            elif not theirs:
                row.append(f"{mine:.2f} ms, {_met(mine <= target.needed)}")
            else:
                ratio = theirs / mine if target.figure.endswith("_p99") else mine / theirs
                row.append(f"{ratio:.2f}x, {_met(ratio >= target.needed)}")
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
    pushes = [floors.get(FLOOR_KEYS.get(name, ""), {}).get("busy_push") or {} for name in leeks]
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


def _met(met: bool) -> str:
    return "met" if met else "not met"


def ratio_tables(results: dict[str, Any]) -> list[tuple[str, Table]]:
    """For each leek variant: how many times better than each peer (above 1: leek ahead)."""
    docs = measured(results)
    leeks = [d for d in docs if d["system"].startswith("leek")]
    peers = [d for d in docs if not d["system"].startswith("leek")]
    tables = []
    for leek in leeks:
        rows = []
        for peer in peers:
            cells = []
            for figure, (_, higher) in COLUMNS.items():
                mine, theirs = _median(leek, figure), _median(peer, figure)
                if not mine or not theirs:
                    cells.append("-")
                else:
                    cells.append(f"{(mine / theirs if higher else theirs / mine):.2f}x")
            rows.append([peer["system"], *cells])
        if rows:
            head = ["vs peer", *(t for t, _ in COLUMNS.values())]
            tables.append((leek["system"], (head, rows)))
    return tables


def floor_table(results: dict[str, Any]) -> Table | None:
    """Each leek's pushes against its round-trip floor, ping, measured alike."""
    rows = []
    threads = 4
    for doc in measured(results):
        floor = doc.get("extra", {}).get("floor")
        if not floor:
            continue
        threads = floor["threads"]
        one, many = _median(doc, "enqueue_1"), _median(doc, f"enqueue_{threads}")
        rows.append(
            [
                doc["system"],
                _rate(floor["ping_1_rate"]),
                _rate(one),
                _share(one or 0.0, floor["ping_1_rate"]),
                _rate(floor["ping_many_rate"]),
                _rate(many),
                _share(many or 0.0, floor["ping_many_rate"]),
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
    trip, spun, framed, framed_spun = found
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
                _share(trip, ping),
                f"{framed:g} / {framed_spun:g}",
                _share(framed_spun, ping),
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
    floors = results["machine"].get("floors") or {}
    for doc in measured(results):
        floor = doc.get("extra", {}).get("floor")
        if not floor or "push_processes_rate" not in floor:
            continue
        count = floor["threads"]
        one, many = _median(doc, "enqueue_1"), _median(doc, f"enqueue_{count}")
        processes = floor["push_processes_rate"]
        rows.append(
            [
                doc["system"],
                _rate(one),
                _rate(many),
                f"{many / one:.2f}x" if one and many else "-",
                _rate(processes),
                f"{processes / one:.2f}x" if one else "-",
                _group_share(floors.get(FLOOR_KEYS.get(doc["system"], ""), {}).get("group")),
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
    faster way leek may take of each (`_group_floor`), with the rates; '-'
    where not measured."""
    one, four = _group_floor(group, "one"), _group_floor(group, "four")
    if not one or not four:
        return "-"
    return f"{four / one:.2f}x ({_rate(four)} / {_rate(one)})"


def _group_floor(group: dict[str, float] | None, clients: str) -> float | None:
    """The group floor's `clients` ("one" or "four"), the faster of the ways
    leek may take: sleeping, or polling for up to SPIN first (bench/floors.py's
    GROUP_WAYS). Results from before that way was measured have the way that
    polls without bound instead."""
    if not group:
        return None
    bounded = group.get(f"{clients}_spin_per_s", group[f"{clients}_polling_per_s"])
    return max(group[f"{clients}_per_s"], bounded)


#: leek's variant -> its database's floors in results["machine"]["floors"] (bench/floors.py)
FLOOR_KEYS = {
    "leek-sqlite-normal": "sqlite_normal",
    "leek-sqlite-full": "sqlite_full",
    "leek-pg": "pg",
    "leek-sqlite-normal-processes": "sqlite_normal",
    "leek-pg-processes": "pg",
}


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
        database = floors.get(FLOOR_KEYS.get(doc["system"], ""), {})
        write = database.get("commit_us")
        one = _median(doc, "enqueue_1")
        if not trip or not write or not one:
            continue
        ceiling = 1e6 / (trip + write)
        group = _group_floor(database.get("group"), "one")
        rows.append(
            [
                doc["system"],
                f"{trip:g}",
                f"{write:g}",
                _rate(ceiling),
                _rate(one),
                _share(one, ceiling),
                f"{_rate(group)} ({_share(group, ceiling)})" if group else "-",
                _share(one, group),
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


def extras_table(results: dict[str, Any]) -> Table | None:
    head = [
        "leek",
        "backlog",
        "enqueue_many/s",
        "enqueue 1 client/s, empty",
        "enqueue 1 client/s, backlog",
        "backlog/empty",
        "slowest push ms, backlog / empty",
        "RSS empty MiB",
        "RSS backlog MiB",
        "peak RSS restarting MiB",
        "first task after s",
        "ready after s",
        "backlog run after s",
    ]
    rows = []
    for doc in measured(results):
        extra = doc.get("extra")
        if not extra or "backlog" not in extra:
            continue
        rows.append(
            [
                doc["system"],
                f"{extra['backlog']:,}",
                f"{extra['enqueue_many_rate']:,.0f}",
                _rate(extra.get("enqueue_1_rate_empty")),
                f"{extra['enqueue_1_rate_with_backlog']:,.0f}",
                _share(extra["enqueue_1_rate_with_backlog"], extra.get("enqueue_1_rate_empty")),
                _slowest(extra.get("slowest_push_s")),
                f"{extra['rss_empty_kb'] / 1024:.0f}",
                f"{extra['rss_backlog_kb'] / 1024:.0f}",
                f"{extra['rss_recovered_kb'] / 1024:.0f}",
                f"{extra['recovery_first_task_s']['median']:.2f}",
                f"{extra['recovery_ready_s']['median']:.2f}",
                f"{extra.get('recovery_drained_s', {}).get('median', float('nan')):.2f}",
            ]
        )
    return (head, rows) if rows else None


def _share(part: float, whole: float | None) -> str:
    return "" if not whole else f"{part / whole:.0%}"


def _slowest(seconds: dict[str, float] | None) -> str:
    if not seconds:
        return ""
    return f"{seconds['backlog'] * 1e3:.1f} / {seconds['empty'] * 1e3:.1f}"


def _rate(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def problems(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for doc in results["systems"]:
        if doc.get("skipped"):
            lines.append(f"{doc['system']}: skipped: {doc['skipped']}")
        elif doc.get("error"):
            lines.append(f"{doc['system']}: {doc['error']}")
        if doc.get("extra_error"):
            lines.append(f"{doc['system']}: backlog/recovery: {doc['extra_error']}")
        for err in doc.get("runs", {}).get("errors", []):
            lines.extend(f"{doc['system']}: {m}" for m in err["messages"])
    return list(dict.fromkeys(lines))  # each problem once, in order


def _plain(table: Table) -> str:
    head, rows = table
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [head, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown(table: Table) -> str:
    head, rows = table
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _header(results: dict[str, Any]) -> str:
    m, s = results["machine"], results["settings"]
    trip = (m.get("floors") or {}).get("round_trip_us")
    return (
        f"{results['generated']} on {m.get('cpu', '?')}, {m.get('cores')} cores, "
        f"{m.get('memory_gib', '?')} GiB, Python {m.get('python')}, leek {m.get('leek_commit')}"
        f"; N={s['n']:,}, {s['latency_n']} latency samples, {s['threads']} client threads, "
        f"median of {s['repeat']} run(s)"
        + (f"; a bare Python TCP round trip on 127.0.0.1 takes {trip:g} µs (p50)" if trip else "")
    )


def _render(results: dict[str, Any], fmt: Any, md: bool) -> str:
    out = [_header(results), "", fmt(figures_table(results))]
    note = "ratios: throughput leek / peer, latency peer / leek; above 1 means leek is ahead"
    for leek, table in ratio_tables(results):
        out += [
            "",
            f"**{leek}** against each peer ({note}):" if md else f"{leek} ({note}):",
            "",
            fmt(table),
        ]
    cpu = cpu_table(results)
    if cpu:
        burn = results.get("burn") or {}
        out += [
            "",
            f"CPU-bound tasks ({burn.get('loops', 0):,} turns of a Python loop each, "
            f"{burn.get('ms', '?')} ms of one core when calibrated): the rate of a queue "
            "of them drained, and one client's pushes while every worker runs them:",
            "",
            fmt(cpu),
        ]
    targets = targets_table(results)
    if targets:
        out += ["", "leek's processes pool against its targets, in this run:", "", fmt(targets)]
    floor = floor_table(results)
    if floor:
        out += [
            "",
            "leek's pushes against the round trip with no work behind it (ping, no "
            "database write), measured alike in the same run:",
            "",
            fmt(floor),
        ]
    pings = ping_table(results)
    if pings:
        out += [
            "",
            "leek's ping from one client against the round trips under it: one byte "
            "each way between two bare Python processes, and a leek frame each way, "
            "made, signed, checked and unpickled by leek's frame functions with "
            "nothing around them; each with both sides sleeping on their sockets, "
            "and polling them as leek's SPIN does (bench/floors.py):",
            "",
            fmt(pings),
        ]
    clients = clients_table(results)
    if clients:
        out += [
            "",
            "leek's pushes from several clients at once: threads of one process, as "
            "the table above has them, and processes, each with an interpreter of its "
            "own (a web server's worker processes); and the group floor's ratio: "
            "four client processes against one, pushing to one Python thread that only "
            "reads their frames, checks them, writes each round's tasks in one commit "
            "and sends the replies, sleeping or polling for up to leek's SPIN first, "
            "the faster way (bench/floors.py):",
            "",
            fmt(clients),
        ]
    ceiling = ceiling_table(results)
    if ceiling:
        out += [
            "",
            "leek's one-client pushes against the most a push can reach on this machine: "
            "a round trip, then leek's write of one task alone (one commit, from plain "
            "Python, no socket); and against the group floor's one client, leek's "
            "frames and write in a loop with nothing of leek's own around them, "
            "sleeping or polling for up to leek's SPIN first (bench/floors.py):",
            "",
            fmt(ceiling),
        ]
    floors = results["machine"].get("floors") or {}
    normal = floors.get("sqlite_normal", {})
    nap, trip = normal.get("commit_after_nap_us"), floors.get("round_trip_us")
    if ceiling and nap and trip:
        out += [
            "",
            f"The same write on SQLite NORMAL takes {nap:g} µs when it comes right after "
            f"a 0.3 ms sleep, as a broker's does between one client's pushes, against "
            f"{normal['commit_us']:g} µs one after another: with that, one client could "
            f"push at most {_rate(1e6 / (trip + nap))} tasks a second here.",
        ]
    batch = normal.get("batch_row_us")
    if batch:
        out += [
            "",
            f"leek's write of 1,000 tasks in one transaction (SQLite NORMAL, alone) takes "
            f"{batch:g} µs a task: at most {_rate(1e6 / batch)} tasks a second for "
            "enqueue_many, before any decoding, checking or queueing.",
        ]
    extras = extras_table(results)
    if extras:
        out += ["", "leek with a backlog waiting, and restarting with it:", "", fmt(extras)]
    configs = measured(results)
    if md and configs:
        out += ["", "What ran:", ""]
        out += [
            f"- **{d['system']}**: {d.get('config', '')}. {d.get('durability', '')}."
            for d in configs
        ]
    issues = problems(results)
    if issues:
        out += ["", "Not measured or failed:" if md else "Problems:", ""]
        out += [f"- {line}" for line in issues]
    return "\n".join(out)


def text(results: dict[str, Any]) -> str:
    return _render(results, _plain, md=False)


def markdown(results: dict[str, Any]) -> str:
    return _render(results, _markdown, md=True)


def update_docs(results: dict[str, Any], path: Path) -> None:
    """Replace what lies between the markers of docs/benchmarks.md with the new tables."""
    if not path.exists():
        return
    doc = path.read_text()
    if START not in doc or END not in doc:
        return
    before, rest = doc.split(START, 1)
    after = rest.split(END, 1)[1]
    path.write_text(f"{before}{START}\n{markdown(results)}\n{END}{after}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Print the tables of bench/results.json.")
    parser.add_argument(
        "--results", type=Path, default=Path(__file__).resolve().parent / "results.json"
    )
    parser.add_argument("--docs", action="store_true", help="rewrite docs/benchmarks.md too")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    print(text(results))
    if args.docs:
        update_docs(results, Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md")


if __name__ == "__main__":
    main()
