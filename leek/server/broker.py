"""The broker process: a threaded TCP server in front of the store and the workers.

`Broker` wires the parts together and owns the process's life: recovery at
start, serving, the graceful stop on SIGTERM, SIGINT or the `stop` verb, and
the graceful reload on SIGHUP, the `reload` verb or new client code (reexec.py).
The server of tcp.py holds the connections; what their requests do to the
broker is in verbs.py.

The path of one task: a client's frame → tcp.Handler → intake (checks) →
store (group commit; the reply goes out after the commit) → dispatch (the
in-memory queue) → workers (run it) → store (its outcome, in a later batch).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from typing import Any

from django.db import connection

from .. import conf, ratelimit
from ..exceptions import DatabaseUnavailable
from ..logs import task_extra
from ..protocol import tls
from ..protocol.frame import Keys
from ..runtime import install_capture
from ..threads import Named
from . import lifecycle, reexec, report
from .cancel import Cancels
from .controls import Controls
from .deadline import Deadline, end
from .delayed import Delayed
from .duties import Duties
from .groupcommit import DATABASE_ERRORS
from .intake import Intake
from .lanes import Lanes
from .lease import Lease
from .limits import RateLimits
from .memory import TRIM_INTERVAL, settle, trim
from .metrics import attach
from .node import Conflict, ensure_free
from .periodic import Periodic
from .recovery import Adopter, interrupt_running
from .replay import ReplayGuard
from .rows import Ready
from .share import Share
from .store import Store
from .tcp import Limits, Server
from .verbs import REPLIES_AT_STOP, Verbs

logger = logging.getLogger(__name__)
HEARTBEAT_ERRORS: tuple[type[BaseException], ...] = (*DATABASE_ERRORS, TimeoutError)
#: Seconds a start waits for the requeue of what its last life left running.
RECOVERY_TIMEOUT = 60.0
#: Seconds a heartbeat waits for its commit, and the last one at stop.
HEARTBEAT_TIMEOUT = 30.0
HEARTBEAT_AT_STOP = 5.0
#: Seconds a stop waits for the database to take its last writes.
STORE_AT_STOP = 10.0
#: Seconds between the periodic tasks' ticks.
PERIODIC_TICK = 0.2
#: Seconds between looks for the tasks of failed inserts that did commit
#: (store/doubt.py); a look costs nothing while no insert failed.
RECHECK_INTERVAL = 0.5
#: Seconds the accept loop waits before it looks for a stop (socketserver's poll_interval).
POLL_INTERVAL = 0.2


class Broker:
    """One broker process: server, writer, workers, delayed tasks and duties."""

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        workers: int | None = None,
        pool: str | None = None,
        queues: list[str] | None = None,
    ) -> None:
        settings = conf.get_settings()
        self.host = host or str(settings["HOST"])
        self.port = int(settings["PORT"] if port is None else port)
        self.node = conf.node_name(self.port)
        self.started = time.time()
        self.replay = ReplayGuard(
            float(settings["REPLAY_WINDOW"]), int(settings["REPLAY_NONCES"]), self.started
        )
        self.limits = Limits(
            keys=Keys.broker(str(settings["SECRET"]).encode()),
            max_frame=int(settings["MAX_FRAME"]),
            frame_timeout=float(settings["FRAME_TIMEOUT"]),
            idle_timeout=float(settings["IDLE_TIMEOUT"]),
            allowed_clients=frozenset(settings["ALLOWED_CLIENTS"]),
            check=self.replay.check,
            max_connections=int(settings["MAX_CONNECTIONS"]),
            max_unauthenticated=int(settings["MAX_UNAUTHENTICATED"]),
            first_frame_timeout=float(settings["FIRST_FRAME_TIMEOUT"]),
            spin=float(settings["SPIN"]),
            # On PostgreSQL the loop polls for the next push as its wait for
            # the database's answer does, only while none of the broker's tasks
            # runs: one client's pushes went faster, for more of the broker's
            # CPU a push (docs/benchmarks.md).
            spin_after_writes=connection.vendor == "sqlite",
            tls=tls.server_context(settings["TLS"]) if settings["TLS"] else None,
        )
        self.grace = float(settings["SHUTDOWN_GRACE"])
        self.deadline = Deadline(float(settings["SHUTDOWN_TIMEOUT"]))
        self.switch_interval = float(settings["SWITCH_INTERVAL"])
        self.code_version = str(settings["CODE_VERSION"])
        self.intake = Intake(int(settings["MAX_RETRIES"]), self.code_version)
        self.reloads = reexec.Reloads(self.code_version, bool(settings["RELOAD_ON_NEW_CODE"]))
        self.intake.new_code = self.new_code
        self.rejected = 0
        self.stopping = threading.Event()
        self.delayed = Delayed(self.route, int(settings["MEMORY_DELAYED"]))
        self.store = Store(self.node, self.route)
        self.store.writes.on_lost = self.forget
        self.periodic = Periodic(self.store, self.route)
        size = int(settings["WORKERS"] if workers is None else workers)
        kind = str(settings["POOL"] if pool is None else pool)
        self.rates = RateLimits(self.store, self.route, ratelimit.of_queues(settings["QUEUES"]))
        self.lanes = Lanes(
            self.store, self.delayed.add, settings, size, kind, queues, limits=self.rates
        )
        self.duties = Duties()
        self.controls = Controls(self.store, self.lanes, self.delayed)
        self.share = Share(
            self.store,
            self.lanes,
            self.route,
            lambda: self.controls.paused,
            float(settings["SWEEP_INTERVAL"]),
        )
        self.store.writes.admit = self.share.admit
        listener = reexec.inherited(self.host, self.port)
        self.verbs = Verbs(self, self.limits)
        self.server = Server((self.host, self.port), self.verbs, listener)
        self.port = self.server.server_address[1]
        self.heartbeat_interval = float(settings["HEARTBEAT_INTERVAL"])
        self.heartbeat_timeout = float(settings["HEARTBEAT_TIMEOUT"])
        self.hostname = socket.gethostname()
        self.conflict = Conflict(self.node, self.hostname, self.heartbeat_timeout)
        self.lease = Lease(self.heartbeat_timeout, self.heartbeat_interval)
        self.lanes.gate(self.lease)
        self.adopt = Adopter(self.store, self.heartbeat_timeout, self.lanes.served)
        self.sweep_interval = float(settings["SWEEP_INTERVAL"])
        self.metrics = attach(self)
        self.cancels = Cancels(
            self.store,
            self.delayed,
            self.rates,
            self.lanes,
            self.heartbeat_timeout,
            float(settings["WRITE_WAIT"]),
            self.metrics,
        )

    # -- life ----------------------------------------------------------------

    def route(self, items: list[Ready]) -> None:
        """Send ready tasks to their lanes, future ones to the delayed heap, and
        those of queues this broker does not serve back to the database."""
        mine: list[Ready] = []
        elsewhere: list[uuid.UUID] = []
        for item in items:
            if item.shared:
                continue  # inserted unowned: the broker that claims it runs it
            if self.lanes.serves(item.queue):
                mine.append(item)
            else:
                elsewhere.append(item.id)
        if elsewhere:
            self.store.release(elsewhere)
        items = mine
        now = time.time()
        due = [i for i in items if i.run_after is None or i.run_after <= now]
        if len(due) != len(items):
            self.delayed.add([i for i in items if i.run_after is not None and i.run_after > now])
        if due:
            self.lanes.push(due)

    def serve(self) -> None:
        """Recover, serve until asked to stop, then stop gracefully.

        Raises NodeNameInUse, before touching any task, when a live broker
        already runs under this one's name, and DatabaseUnavailable when the
        database cannot be read at all (its first read is that check)."""
        try:
            ensure_free(self.store, self.hostname, self.heartbeat_interval, self.heartbeat_timeout)
        except DATABASE_ERRORS as exc:
            self.server.server_close()
            raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}".strip()) from exc
        except BaseException:
            self.server.server_close()
            raise
        install_capture()
        # Python's 5 ms let two worker threads running Python code keep the
        # interpreter from the event loop for seconds a push (docs/benchmarks.md).
        sys.setswitchinterval(self.switch_interval)
        settle()
        gc.collect()
        gc.freeze()  # what setup made lives as long as the broker: never scan it again
        self.store.start()
        self.heartbeat()
        self.store.begin_epoch(RECOVERY_TIMEOUT)  # this life's lease token, before any claim
        interrupted = interrupt_running(self.store, RECOVERY_TIMEOUT)
        self.metrics.lost("", "interrupted", interrupted)
        self.controls.poll()  # no task of a paused queue starts, from the first
        self.lanes.start()
        self.delayed.start()
        pages = self.store.owned()
        next(pages)  # the snapshot of the tasks to recover is taken; serve meanwhile
        self.duties.every(0, self.lanes.watch)
        self.duties.every(0, self.store.checkpoint)
        self.duties.every(0, self.store.nudge)  # the running marks (see Store.mark_running)
        self.duties.every(0, self.share.tick)
        self.duties.every(1.0, self.rates.watch)
        self.duties.every(self.heartbeat_interval, self.heartbeat)
        self.duties.every(self.heartbeat_interval, self.look_for_peers)
        self.duties.every(PERIODIC_TICK, self.periodic.tick)
        self.controls.every(self.duties.every)
        self.duties.every(TRIM_INTERVAL, trim)
        self.duties.start()
        thread = Named(
            target=self.server.serve_forever,
            name="leek-server",
            kwargs={"poll_interval": POLL_INTERVAL},
            daemon=True,
        )
        thread.start()
        logger.info(
            "broker listening node=%s address=%s:%s lanes=%s interrupted=%s pid=%s",
            self.node,
            self.host,
            self.port,
            self.lanes.summary(),
            interrupted,
            os.getpid(),
            extra={"action": "broker_started"},
        )
        lifecycle.broker_started(self.node, self.host, self.port)
        self.reloads.told()
        recovered = 0
        for page in pages:
            recovered += len(page)
            self.route(page)
        recovered += self.sweep()
        # It has just swept: the next sweep is an interval from now, never
        # one at the first tick that a client's `sweep` would find in flight.
        self.duties.every(self.sweep_interval, self.sweep, first=self.sweep_interval)
        self.duties.every(self.sweep_interval, self.store.settle_steps)
        self.duties.every(RECHECK_INTERVAL, self.store.recheck)
        logger.info(
            "tasks recovered node=%s count=%s", self.node, recovered, extra={"action": "recovered"}
        )
        # A wait with a timeout: a signal that another thread took wakes no
        # waiter, and its handler runs only once the main thread is back in Python.
        while not self.stopping.wait(POLL_INTERVAL):
            pass
        self.deadline.start()
        lifecycle.broker_stopping(self.node)
        self._stop(thread)
        self.reloads.execute(self.server.socket)  # returns when no reload is asked, or it failed

    def request_stop(self) -> None:
        self.stopping.set()

    def request_reload(self, reason: str, version: str = "") -> bool:
        """Reload gracefully (reexec.py); False when a stop or a reload is under way."""
        if self.stopping.is_set() or not self.reloads.request(reason, version):
            return False
        self.stopping.set()
        return True

    def new_code(self, version: str) -> None:
        """A client of another code version pushed: reload for it, when asked to."""
        if self.reloads.wants(version):
            self.request_reload(f"code version {version} seen from a client", version)

    def install_signals(self) -> None:
        signalled: list[int] = []

        def on_signal(signum: int, frame: Any) -> None:
            name = signal.Signals(signum).name
            if signalled:
                end("stop_cut_short", f"a second stop signal={name} during the stop: exiting now")
            signalled.append(signum)
            logger.info("stopping on signal=%s", name, extra={"action": "broker_stopping"})
            self.reloads.cancel()  # a stop during a reload's drain wins
            self.stopping.set()

        def on_hangup(signum: int, frame: Any) -> None:
            self.request_reload("signal SIGHUP")

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, on_hangup)

    def _stop(self, thread: threading.Thread) -> None:
        """Stop gracefully; for a reload, keep the listening socket open and
        let the running tasks finish first, committing pushes meanwhile."""
        within = self.deadline.left
        drained = bool(self.reloads.reason)
        if drained:
            left = self.lanes.stop(within(self.grace))
        self.server.shutdown()
        owed = self.verbs.drain(within(REPLIES_AT_STOP))
        if owed:
            logger.warning(
                "pushes unanswered at the stop count=%s: their clients send them again",
                owed,
                extra={"action": "pushes_unanswered"},
            )
        self.server.close_clients()
        reloading = bool(self.reloads.reason)  # a SIGTERM during the drain makes it a stop
        if reloading:
            self.server.detach()
        else:
            self.server.server_close()
        thread.join(5)
        self.duties.stop()
        self.delayed.stop()
        if not drained:
            left = self.lanes.stop(within(self.grace))
        for run in left:
            logger.warning(
                "task still running at the deadline task=%s name=%s; it will be "
                "requeued on the next start",
                run.task_id,
                run.name,
                extra=task_extra("task_interrupted", run.task_id, run.name, attempt=run.attempt),
            )
        # Best effort, within the grace; a broker about to reload stays alive
        # to the others, so that none adopts its tasks meanwhile.
        self.heartbeat(stopped=not reloading, timeout=within(HEARTBEAT_AT_STOP))
        self.store.stop(within(STORE_AT_STOP))
        self.metrics.stop()
        logger.info(
            "broker stopped node=%s handled=%s",
            self.node,
            sum(self.lanes.handled().values()),
            extra={"action": "broker_stopped"},
        )

    def sweep(self) -> int:
        """Adopt spooled tasks not due yet and the tasks of gone brokers; how
        many. None while the lease is lost: a broker that may be counted dead
        claims nothing."""
        if not self.lease.held():
            return 0
        found = self.adopt()
        if found:
            logger.info("adopted tasks count=%s", len(found), extra={"action": "tasks_adopted"})
            self.route(found)
        return len(found)

    def heartbeat(self, stopped: bool = False, timeout: float = HEARTBEAT_TIMEOUT) -> None:
        """Write this broker's BrokerNode row, waiting up to `timeout` seconds."""
        values = report.node_values(self, stopped)
        check = self.conflict.check if self.conflict.written else None
        self.lease.tell()
        sent = time.monotonic()
        try:
            self.store.nodes.heartbeat(values, self.started, check).wait(timeout)
            self.conflict.written = True  # the row is ours from here on
        except HEARTBEAT_ERRORS:
            return  # the store logged it and reports the database unhealthy
        if not stopped:
            self.lease.committed(sent, self.drop_lost)

    def look_for_peers(self) -> None:
        """Count the other live brokers, for the bound of the lanes (share.py)."""
        self.share.look(self.heartbeat_timeout)

    def drop_lost(self) -> int:
        """Drop the tasks held in memory that the database no longer shows as
        this broker's claim (another adopted them); how many: in the delayed
        heap, the rate limits' lines, then the lanes, so that a task one of
        them releases meanwhile is met in the next."""
        mine = self.store.still_mine
        return (
            self.delayed.drop_lost(mine) + self.rates.drop_lost(mine) + self.lanes.drop_lost(mine)
        )

    def forget(self, ids: list[uuid.UUID]) -> None:
        """Drop what this broker holds of tasks whose outcomes were refused
        (another broker's claim holds them now): a retry waiting for its time,
        in a rate limit's line, or in a lane."""
        lost = set(ids)

        def mine(held: list[uuid.UUID]) -> set[uuid.UUID]:
            return {task_id for task_id in held if task_id not in lost}

        dropped = self.delayed.drop_lost(mine) + self.rates.drop_lost(mine)
        dropped += self.lanes.drop_lost(mine)
        if dropped:
            logger.info(
                "tasks dropped: another broker holds them count=%s",
                dropped,
                extra={"action": "tasks_dropped"},
            )

    def healthy(self) -> tuple[bool, str]:
        """Whether the broker is well (ping, stats, its heartbeat row), and why not."""
        if self.reloads.reason:  # its workers stop on purpose
            written, error = self.store.health()
            if not written:
                return False, f"database unavailable: {error}"
            return True, f"reloading: {self.reloads.reason}"
        broken = self.lanes.broken()
        if broken:
            return False, broken
        alive, size = self.lanes.alive(), self.lanes.size
        if alive < size:
            stuck = self.lanes.stuck()
            if stuck:
                return False, f"{stuck} of {size} worker threads are stuck past a time limit"
            return False, f"{size - alive} of {size} worker threads are dead"
        written, error = self.store.health()
        if not written:
            return False, f"database unavailable: {error}"
        if self.conflict.message:
            return False, self.conflict.message
        if self.lease.message:
            return False, self.lease.message
        return True, "I'm OK"
