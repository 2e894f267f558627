"""What a broker tells of itself: its ``stats`` and the values of its heartbeat row."""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..protocol.spin import AnswerSpins

if TYPE_CHECKING:
    from .broker import Broker


def stats(broker: Broker) -> dict[str, Any]:
    """The ``stats`` verb's figures (`leek stats`)."""
    ok, message = broker.healthy()
    waiting = (
        broker.lanes.counts() + Counter(broker.delayed.counts()) + Counter(broker.rates.counts())
    )
    database = broker.store.counts()
    reloads = broker.reloads
    return {
        "node": broker.node,
        "pid": os.getpid(),
        "version": __version__,
        "code_version": broker.code_version,
        "healthy": ok,
        "message": message,
        "started": broker.started,
        "uptime": round(time.time() - broker.started, 3),
        "switch_interval": sys.getswitchinterval(),
        "workers": broker.lanes.size,
        "workers_alive": broker.lanes.alive(),
        "workers_busy": len(broker.lanes.busy()),
        "workers_stuck": broker.lanes.stuck(),
        "queues": broker.lanes.describe(),
        "running": len(broker.lanes.busy()),
        "waiting": dict(waiting),
        "paused": sorted(broker.controls.paused),
        "expired": broker.controls.expired,
        "payloads_in_memory": broker.lanes.held(),
        "sharing": broker.share.figures(),
        "delayed_payloads_in_memory": broker.delayed.held(),
        "handled": dict(broker.lanes.handled()),
        "rejected_frames": broker.rejected,
        "replay": broker.replay.counts(),
        "connections": broker.server.figures(),
        "database_spins": {"spins": AnswerSpins.polled, "spun": AnswerSpins.received},
        "commits": broker.store.all_commits(),
        "epoch": broker.store.epoch,
        "outcomes_refused": broker.store.writes.refused,
        "code_drift": dict(broker.intake.drift),
        "reloads": {
            "count": reloads.count,
            "under_way": reloads.reason,
            "on_new_code": reloads.on_new_code,
        },
        "rate_limits": broker.rates.describe(),
        "database": database,
        "unserved_queues": broker.store.nodes.unserved(
            database.get("queued", {}), broker.heartbeat_timeout
        ),
    }


def node_values(broker: Broker, stopped: bool) -> dict[str, Any]:
    """The values of the broker's BrokerNode row, written by each heartbeat."""
    ok, note = broker.healthy()
    return {
        "hostname": broker.hostname,
        "host": broker.host,
        "port": broker.port,
        "pid": os.getpid(),
        "version": __version__,
        "code_version": broker.code_version,
        "workers": broker.lanes.size,
        "workers_alive": broker.lanes.alive(),
        "workers_busy": len(broker.lanes.busy()),
        "queues": broker.lanes.describe(),
        "handled": sum(broker.lanes.handled().values()),
        "healthy": ok,
        "stopped": stopped,
        "note": note[:255],
    }
