"""The broker's state as Prometheus gauges, read when the page is scraped.

`BrokerCollector` asks the parts that already keep each figure (the lanes'
dispatchers and pools, the delayed heap, the connection gate, the store's
writers) at each scrape, so nothing on the hot paths updates a gauge. The
brokers' heartbeats are the one figure read from the database: at most once
per BEATS_CACHE seconds, however often the page is scraped, on the scraping
thread's own connection, closed after the read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from django.db import connection
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import __version__
from .dberrors import DATABASE_ERRORS
from .metrics import pushed_at

if TYPE_CHECKING:
    from .broker import Broker

logger = logging.getLogger(__name__)

#: Seconds one reading of the brokers' heartbeats serves the scrapes that follow.
BEATS_CACHE = 5.0


class BrokerCollector(Collector):
    """One broker's gauges, and the counters its parts keep themselves."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._beats: list[tuple[str, float, bool]] = []
        self._read_at = -BEATS_CACHE
        self._lock = threading.Lock()

    def describe(self) -> list[Metric]:
        """Nothing: registering must not scrape (it would read the database)."""
        return []

    def collect(self) -> Iterator[Metric]:
        b = self.broker
        ok, _ = b.healthy()
        info = GaugeMetricFamily(
            "leek_broker_info", "This broker: always 1.", labels=["node", "version", "code_version"]
        )
        info.add_metric([b.node, __version__, b.code_version], 1)
        yield info
        yield GaugeMetricFamily("leek_broker_healthy", "1 when healthy, else 0.", value=int(ok))
        yield GaugeMetricFamily(
            "leek_broker_uptime_seconds", "Seconds since start.", value=time.time() - b.started
        )
        yield from self._queues()
        yield from self._workers()
        yield from self._connections()
        yield from self._writers()
        yield from self._heartbeats()

    def _queues(self) -> Iterator[Metric]:
        b = self.broker
        now = time.time()
        waiting = GaugeMetricFamily(
            "leek_tasks_waiting", "Tasks ready to run and waiting for a worker.", labels=["queue"]
        )
        for queue, count in sorted(b.lanes.counts().items()):
            waiting.add_metric([queue], count)
        yield waiting
        delayed = GaugeMetricFamily(
            "leek_tasks_delayed",
            "Tasks waiting for their time (delay, run_at, retry backoff).",
            labels=["queue"],
        )
        for queue, count in sorted(Counter(b.delayed.counts()).items()):
            delayed.add_metric([queue], count)
        yield delayed
        oldest = GaugeMetricFamily(
            "leek_oldest_waiting_seconds",
            "Seconds since the push of the oldest task waiting in each queue.",
            labels=["queue"],
        )
        heads: dict[str, bytes] = {}
        for lane in b.lanes.all:
            heads.update(lane.dispatcher.heads())
        for queue, key in sorted(heads.items()):
            pushed = pushed_at(key)
            if pushed is not None:
                oldest.add_metric([queue], max(0.0, now - pushed))
        yield oldest
        yield GaugeMetricFamily(
            "leek_payloads_in_memory", "Task payloads held in memory.", value=b.lanes.held()
        )
        yield GaugeMetricFamily(
            "leek_tasks_running", "Tasks running now.", value=len(b.lanes.busy())
        )

    def _workers(self) -> Iterator[Metric]:
        families = {
            state: GaugeMetricFamily(f"leek_workers_{state}", about, labels=["lane", "pool"])
            for state, about in (
                ("configured", "Workers each lane is configured with."),
                ("alive", "Workers able to take a task."),
                ("busy", "Workers running a task."),
                ("stuck", "Worker threads stuck past a time limit."),
            )
        }
        for lane in self.broker.lanes.all:
            pool = lane.pool
            labels = [lane.name, pool.kind]
            families["configured"].add_metric(labels, pool.size)
            families["alive"].add_metric(labels, pool.alive())
            families["busy"].add_metric(labels, len(pool.busy()))
            families["stuck"].add_metric(labels, len(pool.stuck))
        yield from families.values()

    def _connections(self) -> Iterator[Metric]:
        figures = self.broker.server.figures()
        held = GaugeMetricFamily(
            "leek_connections_open", "Client connections held.", labels=["state"]
        )
        held.add_metric(["authenticated"], figures["authenticated"])
        held.add_metric(["unauthenticated"], figures["unauthenticated"])
        yield held
        yield GaugeMetricFamily(
            "leek_connections_limit", "Most connections held at once.", value=figures["limit"]
        )
        away = CounterMetricFamily(
            "leek_connections_closed",
            "Connections turned away: refused at accept, evicted to make room, expired "
            "before a first frame, failed TLS handshakes, failed accepts.",
            labels=["reason"],
        )
        for reason, key in (
            ("refused", "refused"),
            ("evicted", "evicted"),
            ("expired", "expired"),
            ("tls_failed", "tls_failures"),
            ("accept_failed", "accept_failures"),
        ):
            away.add_metric([reason], figures[key])
        yield away

    def _writers(self) -> Iterator[Metric]:
        commits = CounterMetricFamily("leek_commits", "Batches committed.", labels=["writer"])
        backlog = GaugeMetricFamily(
            "leek_writes_pending", "Writes queued and not yet in a batch.", labels=["writer"]
        )
        for writer in self.broker.store.lanes:
            commits.add_metric([writer.name], writer.commits)
            backlog.add_metric([writer.name], writer.backlog)
        yield commits
        yield backlog
        yield CounterMetricFamily(
            "leek_outcomes_refused",
            "Outcomes not written: their task was another broker's claim by then, or had ended.",
            value=self.broker.store.writes.refused,
        )

    def _heartbeats(self) -> Iterator[Metric]:
        ages = GaugeMetricFamily(
            "leek_broker_heartbeat_age_seconds",
            "Seconds since each broker sharing the database last wrote its heartbeat.",
            labels=["node", "stopped"],
        )
        now = time.time()
        for name, beat, stopped in self._read_beats():
            ages.add_metric([name, "true" if stopped else "false"], max(0.0, now - beat))
        yield ages

    def _read_beats(self) -> list[tuple[str, float, bool]]:
        """The brokers' rows, read at most once per BEATS_CACHE seconds; the
        last reading while the database cannot be read."""
        with self._lock:
            if time.monotonic() - self._read_at < BEATS_CACHE:
                return self._beats
            self._read_at = time.monotonic()
            try:
                self._beats = self.broker.store.nodes.beats()
            except DATABASE_ERRORS as exc:
                logger.warning(
                    "metrics could not read the brokers' heartbeats error=%s",
                    exc,
                    extra={"action": "metrics_read_failed"},
                )
            finally:
                connection.close()  # this scrape's thread ends: so does its connection
            return self._beats
