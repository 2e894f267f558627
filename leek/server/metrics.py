"""The broker's Prometheus metrics: counters and histograms on the hot paths,
the page that serves them, and the switch that makes them free when off.

With ``LEEK["METRICS"] = "127.0.0.1:9808"`` the broker serves ``/metrics`` in
Prometheus's text format on that address, from prometheus_client's own HTTP
server thread, out of a registry of the broker's own (never the process's
default one, so several brokers in one process keep their figures apart).
The hot paths (intake, the group commit, the workers, the frame loop) hold a
`Metrics` and call it in one line; with METRICS empty that is `OFF`, whose
methods do nothing, and prometheus_client is never imported.

What the broker already keeps (waiting tasks, workers, connections, commits)
is not counted twice: gauges.py reads it at scrape time. docs/metrics.md lists
every family and its labels.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter as Tally
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .. import conf
from ..exceptions import BadSignature, FrameTooLarge, ReplayedFrame, StaleFrame
from .dberrors import transient
from .rows import NewTask, Outcome

if TYPE_CHECKING:
    from .broker import Broker

logger = logging.getLogger(__name__)

#: Why a frame was rejected, by the error's class (the first that matches);
#: any other ProtocolError is "malformed".
FRAME_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (ReplayedFrame, "replayed"),
    (StaleFrame, "stale"),
    (BadSignature, "signature"),
    (FrameTooLarge, "too_large"),
)
#: Why a push is refused: a field out of range, the database failing, or its
#: write refused for an error of its own.
REFUSALS = ("invalid", "database", "write_refused")
#: The exception types (as Outcome.exc_type names them) of attempts that ran out
#: of time, and of those whose worker process died under them.
TIMED_OUT = "leek.exceptions.TaskTimeout"
WORKER_LOST = "leek.exceptions.WorkerLost"
#: Bucket bounds in seconds of a task's wait for its first start and of its run.
TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: Bucket bounds in seconds of a commit, and in ops of a commit's batch.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)


class Metrics:
    """What the hot paths report. This base does nothing: it is `OFF`."""

    def pushed(self, tasks: Sequence[NewTask], error: BaseException | None) -> None:
        """A push committed (error None) or refused by its write."""

    def refused(self, reason: str) -> None:
        """A push refused before its write ("invalid": a field out of range)."""

    def committed(self, writer: str, size: int, seconds: float) -> None:
        """A batch of `size` ops committed by `writer` in `seconds`."""

    def finished(self, queue: str, outcome: Outcome) -> None:
        """An attempt of a task of `queue` ended."""

    def cancelled(self, queue: str) -> None:
        """A task of `queue` was cancelled before it started."""

    def lost(self, queue: str, reason: str, count: int = 1) -> None:
        """Attempts cut short: their worker died, or their broker's last life ended."""

    def frame_rejected(self, error: BaseException) -> None:
        """A frame refused for its size, signature, bytes, or as a replay."""

    def stop(self) -> None:
        """Stop serving the page."""


#: The metrics of a broker with METRICS empty.
OFF = Metrics()


def refusal() -> str | None:
    """Why a broker cannot serve METRICS, in one line (`leek start` prints it);
    None when it can, or METRICS is empty."""
    value = str(conf.get("METRICS") or "")
    if not value:
        return None
    try:
        conf.metrics_address(value)
    except ValueError as exc:
        return str(exc)
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return (
            f"LEEK['METRICS'] is {value!r}, and the prometheus_client package is not "
            "installed: pip install 'leek[metrics]', or leave LEEK['METRICS'] empty"
        )
    return None


def attach(broker: Broker) -> Metrics:
    """The broker's metrics, handed to its hot paths, its page served when
    METRICS is set (OFF otherwise). An address that cannot be bound closes the
    broker's server and raises OSError, its filename the METRICS address."""
    value = str(conf.get("METRICS") or "")
    if not value:
        return OFF
    recorder = Recorder(broker)
    try:
        recorder.serve(*conf.metrics_address(value))
    except OSError as exc:
        broker.server.server_close()
        raise OSError(exc.errno, exc.strerror, f"{value} (LEEK['METRICS'])") from exc
    broker.intake.metrics = recorder
    for writer in broker.store.lanes:
        writer.metrics = recorder
    for lane in broker.lanes.all:
        lane.pool.metrics = recorder
    logger.info(
        "metrics served address=http://%s/metrics", value, extra={"action": "metrics_served"}
    )
    return recorder


class Recorder(Metrics):
    """Metrics kept in a prometheus_client registry of this broker's own."""

    def __init__(self, broker: Broker) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        from .gauges import BrokerCollector

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.accepted = Counter(
            "leek_pushes_accepted", "Pushes whose tasks were committed.", registry=r
        )
        self.refusals = Counter(
            "leek_pushes_refused", "Pushes refused, by reason.", ["reason"], registry=r
        )
        self.tasks = Counter(
            "leek_tasks_accepted", "Tasks committed from pushes, by queue.", ["queue"], registry=r
        )
        self.attempts = Counter(
            "leek_task_attempts",
            "Attempts ended, by queue and outcome (succeeded, retried, failed).",
            ["queue", "outcome"],
            registry=r,
        )
        self.timeouts = Counter(
            "leek_tasks_timed_out", "Attempts stopped at their time limit.", ["queue"], registry=r
        )
        self.lost_attempts = Counter(
            "leek_tasks_lost",
            "Attempts cut short: worker_died, or interrupted by this broker's last life.",
            ["queue", "reason"],
            registry=r,
        )
        self.cancels = Counter(
            "leek_tasks_cancelled", "Tasks cancelled before they started.", ["queue"], registry=r
        )
        self.frames = Counter(
            "leek_frames_rejected", "Frames rejected, by reason.", ["reason"], registry=r
        )
        self.wait = Histogram(
            "leek_task_wait_seconds",
            "Seconds from a task's push (its id's time) to its first start.",
            ["queue"],
            buckets=TASK_BUCKETS,
            registry=r,
        )
        self.run = Histogram(
            "leek_task_run_seconds",
            "Seconds an attempt ran.",
            ["queue"],
            buckets=TASK_BUCKETS,
            registry=r,
        )
        self.commit = Histogram(
            "leek_commit_seconds",
            "Seconds a batch took to write and commit, by writer.",
            ["writer"],
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.batch = Histogram(
            "leek_commit_batch_size",
            "Ops in a committed batch, by writer.",
            ["writer"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        r.register(BrokerCollector(broker))
        self._children: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()
        for reason in REFUSALS:  # at zero from the start, so rates show no gap
            self._child(self.refusals, reason)
        for reason in (*(name for _, name in FRAME_REASONS), "malformed"):
            self._child(self.frames, reason)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def _child(self, family: Any, *labels: str) -> Any:
        """The child of `family` for `labels`, looked up once: the hot paths
        skip prometheus_client's lock around `labels()`."""
        key = (id(family), *labels)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children[key] = family.labels(*labels)
        return child

    # -- the page ------------------------------------------------------------

    def serve(self, host: str, port: int) -> None:
        from prometheus_client import start_http_server

        self._server, self._thread = start_http_server(port, host, registry=self.registry)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)

    # -- the hot paths ---------------------------------------------------------

    def pushed(self, tasks: Sequence[NewTask], error: BaseException | None) -> None:
        if error is not None:
            self.refused("database" if transient(error) else "write_refused")
            return
        self.accepted.inc()
        if len(tasks) == 1:
            self._child(self.tasks, tasks[0].queue).inc()
            return
        for queue, count in Tally(t.queue for t in tasks).items():
            self._child(self.tasks, queue).inc(count)

    def refused(self, reason: str) -> None:
        self._child(self.refusals, reason).inc()

    def committed(self, writer: str, size: int, seconds: float) -> None:
        self._child(self.commit, writer).observe(seconds)
        self._child(self.batch, writer).observe(size)

    def finished(self, queue: str, outcome: Outcome) -> None:
        if outcome.succeeded:
            kind = "succeeded"
        else:
            kind = "failed" if outcome.final else "retried"
            if outcome.exc_type == TIMED_OUT:
                self._child(self.timeouts, queue).inc()
            elif outcome.exc_type == WORKER_LOST:
                self._child(self.lost_attempts, queue, "worker_died").inc()
        self._child(self.attempts, queue, kind).inc()
        self._child(self.run, queue).observe(max(0.0, outcome.finished - outcome.started))
        if outcome.attempt == 1:
            pushed = pushed_at(outcome.task_id)
            if pushed is not None:
                self._child(self.wait, queue).observe(max(0.0, outcome.started - pushed))

    def cancelled(self, queue: str) -> None:
        self._child(self.cancels, queue).inc()

    def lost(self, queue: str, reason: str, count: int = 1) -> None:
        if count:
            self._child(self.lost_attempts, queue, reason).inc(count)

    def frame_rejected(self, error: BaseException) -> None:
        reasons = (name for kind, name in FRAME_REASONS if isinstance(error, kind))
        self._child(self.frames, next(reasons, "malformed")).inc()


def pushed_at(task_id: uuid.UUID | bytes) -> float | None:
    """When a task was pushed, in seconds since the epoch: the time a version 7
    id carries (ids.py); None for an id of another version."""
    raw = task_id if isinstance(task_id, bytes) else task_id.bytes
    if raw[6] >> 4 != 7:
        return None
    return int.from_bytes(raw[:6], "big") / 1000.0
