"""`leek cluster`: the brokers sharing the database, one line each.

Read from the database alone (leek/cluster.py), so it answers while every
broker is down. Exit status: OK while at least one broker is live, UNHEALTHY
when none is, UNREACHABLE when the database cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from .output import OK, UNHEALTHY, UNREACHABLE

if TYPE_CHECKING:
    from ..cluster import Broker, Cluster

#: The columns of a line, in order.
HEADER = ("node", "address", "state", "queues", "busy", "heartbeat", "code", "queued", "running")


def run_cluster(options: argparse.Namespace) -> int:
    """Print the brokers (JSON with --json); OK when one is live, else UNHEALTHY."""
    from django.db import DatabaseError

    from .. import cluster

    try:
        found = cluster.read()
    except DatabaseError as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        sys.stderr.write(f"error: the database could not be read: {type(exc).__name__}: {first}\n")
        return UNREACHABLE
    if options.json:
        data = {
            "brokers": [b.as_dict() for b in found.brokers],
            "live": len(found.live),
            "unowned": found.unowned,
            "heartbeat_timeout": found.heartbeat_timeout,
        }
        sys.stdout.write(json.dumps(data, sort_keys=True) + "\n")
    else:
        sys.stdout.write(text(found))
    return OK if found.live else UNHEALTHY


def text(found: Cluster) -> str:
    """The table, then a line of totals."""
    lines = [HEADER, *(_line(b) for b in found.brokers)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    out = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    total = len(found.brokers)
    summary = (
        f"{total} broker{'' if total == 1 else 's'}, {len(found.live)} live "
        f"(silent after {found.heartbeat_timeout:g} s)"
    )
    if found.unowned:
        summary += f"; {found.unowned} unfinished task(s) owned by no broker listed"
    if not found.brokers:
        out = ["No broker has ever sent a heartbeat to this database."]
    return "\n".join([*out, summary]) + "\n"


def _line(broker: Broker) -> tuple[str, ...]:
    from ..cluster import LIVE

    row = broker.row
    state = broker.state
    if state == LIVE and not row.healthy:
        state = "unhealthy"
    elif state != LIVE:
        state = state.upper()
    return (
        broker.name,
        broker.address,
        state,
        ",".join(broker.lanes) or "-",
        f"{row.workers_busy}/{row.workers}",
        f"{_age(broker.heartbeat_age)} ago",
        row.code_version or "-",
        str(broker.queued),
        str(broker.running),
    )


def _age(seconds: float) -> str:
    """Tenths of a second under a minute (heartbeats come every few seconds)."""
    from ..cluster import age_text

    return f"{max(seconds, 0.0):.1f} s" if seconds < 60 else age_text(seconds)
