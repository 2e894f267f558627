"""Tables from bench/results.json: plain text for the terminal, Markdown for the docs.

python -m bench.report            print the tables of the last run
python -m bench.report --docs     also rewrite docs/benchmarks.md between its markers
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.figures import (
    Table,
    measured,
    median,
    rate,
    share,
)
from bench.floor_tables import (
    ceiling_table,
    clients_table,
    floor_table,
    mixed_table,
    ping_table,
)
from bench.targets import MIXED_PEER, pool_table, push_table

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


def _fmt(figure: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if figure.endswith(("_p50", "_p99")) else f"{value:,.0f}"


def figures_table(results: dict[str, Any]) -> Table:
    head = ["system", *(title for title, _ in COLUMNS.values()), "drain/mixed N"]
    rows = []
    for doc in measured(results):
        cells = [_fmt(f, median(doc, f)) for f in COLUMNS]
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
        cells = [_fmt(f, median(doc, f)) for f in CPU_COLUMNS]
        timed = sorted({r["n"] for r in doc.get("runs", {}).get("cpu_push", [])})
        if set(cells) != {"-"}:
            pushes = f"{timed[0]}-{timed[-1]}" if len(timed) > 1 else "".join(map(str, timed))
            rows.append([doc["system"], *cells, f"{doc.get('cpu_n', '?'):,}", pushes])
    return (head, rows) if rows else None


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
                mine, theirs = median(leek, figure), median(peer, figure)
                if not mine or not theirs:
                    cells.append("-")
                else:
                    cells.append(f"{(mine / theirs if higher else theirs / mine):.2f}x")
            rows.append([peer["system"], *cells])
        if rows:
            head = ["vs peer", *(t for t, _ in COLUMNS.values())]
            tables.append((leek["system"], (head, rows)))
    return tables


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
                rate(extra.get("enqueue_1_rate_empty")),
                f"{extra['enqueue_1_rate_with_backlog']:,.0f}",
                share(extra["enqueue_1_rate_with_backlog"], extra.get("enqueue_1_rate_empty")),
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


def _slowest(seconds: dict[str, float] | None) -> str:
    if not seconds:
        return ""
    return f"{seconds['backlog'] * 1e3:.1f} / {seconds['empty'] * 1e3:.1f}"


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
    targets = pool_table(results)
    if targets:
        out += ["", "leek's processes pool against its targets, in this run:", "", fmt(targets)]
    pushes = push_table(results)
    if pushes:
        out += [
            "",
            "leek's push path against its targets, in this run: met; bounded, where a "
            "floor of the same run, the same path with nothing of leek's own, falls "
            "short of the target itself (the tables below); or not met:",
            "",
            fmt(pushes),
        ]
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
    mixed = mixed_table(results, MIXED_PEER)
    if mixed:
        out += [
            "",
            "leek's mixed workload (processes pool) against the mixed floor: four client "
            "threads pushing while two worker processes run the tasks, through one "
            "Python thread that writes and answers each round's pushes with leek's "
            "insert, hands each task to a process over leek's pipe and each outcome to "
            "leek's store, with nothing of leek's own around them (bench/mixed_floor.py); "
            "and the host's CPU a task in each, every process of the host counted "
            "(its server, database, workers and clients):",
            "",
            fmt(mixed),
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
            f"push at most {rate(1e6 / (trip + nap))} tasks a second here.",
        ]
    batch = normal.get("batch_row_us")
    if batch:
        out += [
            "",
            f"leek's write of 1,000 tasks in one transaction (SQLite NORMAL, alone) takes "
            f"{batch:g} µs a task: at most {rate(1e6 / batch)} tasks a second for "
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
