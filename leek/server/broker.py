"""The broker process: a threaded TCP server in front of the store and the workers.

`Broker` wires the parts together and owns the process's life: recovery at
start, serving, and the graceful stop on SIGTERM, SIGINT or the `stop` verb.
It answers each verb; tcp.py holds the server and the connections.

Verbs: ``enqueue``, ``enqueue_batch``, ``enqueue_many``, ``cancel``, ``ping``,
``waiting``, ``handled``, ``stats``, ``sweep`` (adopt spooled tasks now) and
``stop``.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from .. import __version__, conf
from ..exceptions import DatabaseUnavailable
from ..runtime import install_capture
from . import reads
from .dispatch import Dispatcher
from .intake import Intake
from .node import Conflict, ensure_free
from .periodic import Periodic
from .scheduler import Adopter, Delayed, Duties, interrupt_running
from .store import DATABASE_ERRORS, Dialect, Ready, Store
from .tcp import Server
from .workers import Pool

logger = logging.getLogger(__name__)
HEARTBEAT_ERRORS: tuple[type[BaseException], ...] = (*DATABASE_ERRORS, TimeoutError)


class Broker:
    """One broker process: server, writer, workers, delayed tasks and duties."""

    def __init__(
        self, host: str | None = None, port: int | None = None, workers: int | None = None
    ) -> None:
        settings = conf.get_settings()
        self.host = host or str(settings["HOST"])
        self.port = int(settings["PORT"] if port is None else port)
        self.node = conf.node_name(self.port)
        self.key = str(settings["SECRET"]).encode()
        self.max_frame = int(settings["MAX_FRAME"])
        self.idle_timeout = float(settings["IDLE_TIMEOUT"])
        self.frame_timeout = float(settings["FRAME_TIMEOUT"])
        self.allowed_clients = set(settings["ALLOWED_CLIENTS"])
        self.grace = float(settings["SHUTDOWN_GRACE"])
        self.code_version = str(settings["CODE_VERSION"])
        self.intake = Intake(int(settings["MAX_RETRIES"]), self.code_version)
        self.started = time.time()
        self.rejected = 0
        self.stopping = threading.Event()
        self.dispatcher = Dispatcher(int(settings["MEMORY_PAYLOADS"]))
        self.delayed = Delayed(self.dispatcher.push)
        self.store = Store(self.node, self.route)
        self.periodic = Periodic(self.store, self.route)
        size = int(settings["WORKERS"] if workers is None else workers)
        self.pool = Pool(self.store, self.dispatcher, size, self.delayed.add)
        self.duties = Duties()
        self.server = Server((self.host, self.port), self)
        self.port = self.server.server_address[1]
        self.heartbeat_interval = float(settings["HEARTBEAT_INTERVAL"])
        self.heartbeat_timeout = float(settings["HEARTBEAT_TIMEOUT"])
        self.hostname = socket.gethostname()
        self.conflict = Conflict(self.node, self.hostname, self.heartbeat_timeout)
        self.adopt = Adopter(self.store, self.heartbeat_timeout)
        self.sweep_interval = float(settings["SWEEP_INTERVAL"])

    # -- life ----------------------------------------------------------------

    def route(self, items: list[Ready]) -> None:
        """Send ready tasks to the workers and future ones to the delayed heap."""
        now = time.time()
        due = [i for i in items if i.run_after is None or i.run_after <= now]
        if len(due) != len(items):
            self.delayed.add([i for i in items if i.run_after is not None and i.run_after > now])
        if due:
            self.dispatcher.push(due)

    def serve(self) -> None:
        """Recover, serve until asked to stop, then stop gracefully.

        Raises NodeNameInUse, before touching any task, when a live broker
        already runs under this one's name, and DatabaseUnavailable when the
        database cannot be read at all (its first read is that check)."""
        try:
            ensure_free(self.node, self.hostname, self.heartbeat_interval, self.heartbeat_timeout)
        except DATABASE_ERRORS as exc:
            self.server.server_close()
            raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}".strip()) from exc
        except BaseException:
            self.server.server_close()
            raise
        install_capture()
        gc.collect()
        gc.freeze()  # what setup made lives as long as the broker: never scan it again
        self.store.start()
        self.heartbeat()
        interrupted = interrupt_running(self.store, "interrupted: broker stopped")
        self.pool.start()
        self.delayed.start()
        pages = reads.owned(self.store.dialect, self.node)
        next(pages)  # the snapshot of the tasks to recover is taken; serve meanwhile
        self.duties.every(0, self.pool.watch)
        self.duties.every(0, self.store.checkpoint)
        self.duties.every(0, self.store.nudge)  # the running marks (see Store.mark_running)
        self.duties.every(self.heartbeat_interval, self.heartbeat)
        self.duties.every(0.2, self.periodic.tick)
        self.duties.start()
        thread = threading.Thread(
            target=self.server.serve_forever,
            name="leek-server",
            kwargs={"poll_interval": 0.2},
            daemon=True,
        )
        thread.start()
        logger.info(
            "broker listening node=%s address=%s:%s workers=%s interrupted=%s pid=%s",
            self.node,
            self.host,
            self.port,
            self.pool.size,
            interrupted,
            os.getpid(),
            extra={"action": "broker_started"},
        )
        recovered = 0
        for page in pages:
            recovered += len(page)
            self.route(page)
        recovered += self._sweep()
        self.duties.every(self.sweep_interval, self._sweep)
        logger.info(
            "tasks recovered node=%s count=%s", self.node, recovered, extra={"action": "recovered"}
        )
        self.stopping.wait()
        self._stop(thread)

    def request_stop(self) -> None:
        self.stopping.set()

    def install_signals(self) -> None:
        def on_signal(signum: int, frame: Any) -> None:
            logger.info(
                "stopping on signal=%s",
                signal.Signals(signum).name,
                extra={"action": "broker_stopping"},
            )
            self.stopping.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def _stop(self, thread: threading.Thread) -> None:
        self.server.shutdown()
        self.server.close_clients()
        self.server.server_close()
        thread.join(5)
        self.duties.stop()
        self.delayed.stop()
        left = self.pool.stop(self.grace)
        for run in left:
            logger.warning(
                "task still running at the deadline task=%s name=%s; it will be "
                "requeued on the next start",
                run.task_id,
                run.name,
                extra={"action": "task_interrupted"},
            )
        self.heartbeat(stopped=True, timeout=5.0)  # best effort: stop within the grace
        self.store.stop()
        logger.info(
            "broker stopped node=%s handled=%s",
            self.node,
            sum(self.pool.handled.values()),
            extra={"action": "broker_stopped"},
        )

    def _sweep(self) -> int:
        found = self.adopt()
        if found:
            logger.info("adopted tasks count=%s", len(found), extra={"action": "tasks_adopted"})
            self.route(found)
        return len(found)

    def heartbeat(self, stopped: bool = False, timeout: float = 30.0) -> None:
        """Write this broker's BrokerNode row, waiting up to `timeout` seconds."""
        alive, size = self.pool.alive(), self.pool.size
        values = {
            "hostname": self.hostname,
            "host": self.host,
            "port": self.port,
            "pid": os.getpid(),
            "version": __version__,
            "code_version": self.code_version,
            "workers": size,
            "workers_alive": alive,
            "handled": sum(self.pool.handled.values()),
            "healthy": self.healthy()[0],
            "stopped": stopped,
            "note": self.healthy()[1][:255],
        }

        def write(cursor: Any, d: Dialect) -> None:
            if self.conflict.check(cursor, d):
                logger.error("%s", self.conflict.message, extra={"action": "node_name_conflict"})
            now = d.time(time.time())
            names = ", ".join(f"{k} = %s" for k in values)
            cursor.execute(
                d.sql(
                    f"UPDATE leek_brokernode SET {names}, heartbeat_at = %s "  # noqa: S608
                    "WHERE name = %s"
                ),
                (*values.values(), now, self.node),
            )
            if cursor.rowcount == 0:
                cols = ", ".join(values)
                marks = ", ".join(["%s"] * (len(values) + 3))
                cursor.execute(
                    d.sql(
                        f"INSERT INTO leek_brokernode ({cols}, heartbeat_at, "  # noqa: S608
                        f"started_at, name) VALUES ({marks})"
                    ),
                    (*values.values(), now, d.time(self.started), self.node),
                )

        try:
            self.store.call(write).wait(timeout)
            self.conflict.written = True  # the row is ours from here on
        except HEARTBEAT_ERRORS:
            pass  # the store logged it and reports the database unhealthy

    # -- verbs ---------------------------------------------------------------

    def healthy(self) -> tuple[bool, str]:
        alive, size = self.pool.alive(), self.pool.size
        if alive < size:
            return False, f"{size - alive} of {size} worker threads are dead"
        written, error = self.store.health()
        if not written:
            return False, f"database unavailable: {error}"
        if self.conflict.message:
            return False, self.conflict.message
        return True, "I'm OK"

    def answer(self, verb: str, data: Any) -> Any:
        """The value of any verb but the pushes (tcp.PUSHES; see `enqueue`)."""
        if verb == "ping":
            ok, message = self.healthy()
            return {"ok": ok, "message": message}
        if verb == "waiting":
            return self.waiting(data.get("queue"))
        if verb == "handled":
            queue = data.get("queue")
            handled = self.pool.handled
            return handled[queue] if queue else sum(handled.values())
        if verb == "cancel":
            return self.cancel(uuid.UUID(str(data["id"])))
        if verb == "stats":
            return self.stats()
        if verb == "sweep":
            return self._sweep()
        if verb == "stop":
            threading.Timer(0.05, self.request_stop).start()
            return "stopping"
        raise ValueError(
            f"unknown verb {verb!r}: expected enqueue, enqueue_batch, enqueue_many, "
            "cancel, ping, waiting, handled, stats, sweep or stop"
        )

    def enqueue(
        self, verb: str, data: Any, done: Callable[[Any, BaseException | None], None]
    ) -> None:
        """Insert the tasks of one of tcp.PUSHES; once they are committed, `done`
        gets the reply's value (see Intake.tasks), or the error."""
        tasks, value = self.intake.tasks(verb, data)

        def committed(inserted: Any, error: BaseException | None) -> None:
            done(None if error is not None else value, error)

        self.store.insert(tasks, committed)

    def cancel(self, task_id: uuid.UUID) -> bool:
        """Cancel a task that has not started; False when it has, or is unknown."""

        def mark(cursor: Any, d: Dialect) -> str | None:
            cursor.execute(
                d.sql(
                    "UPDATE leek_task SET status = 'cancelled', finished_at = %s "
                    "WHERE id = %s AND status = 'queued' RETURNING queue"
                ),
                (d.time(time.time()), d.pk(task_id)),
            )
            row = cursor.fetchone()
            return None if row is None else str(row[0])

        queue = self.store.call(mark).wait(30)
        if queue is None:
            return False
        if not self.delayed.cancel(task_id):
            self.dispatcher.cancel(task_id, queue)
        return True

    def waiting(self, queue: str | None = None) -> int:
        counts = Counter(self.dispatcher.counts()) + Counter(self.delayed.counts())
        return counts[queue] if queue else sum(counts.values())

    def stats(self) -> dict[str, Any]:
        ok, message = self.healthy()
        waiting = Counter(self.dispatcher.counts()) + Counter(self.delayed.counts())
        return {
            "node": self.node,
            "version": __version__,
            "code_version": self.code_version,
            "healthy": ok,
            "message": message,
            "uptime": round(time.time() - self.started, 3),
            "workers": self.pool.size,
            "workers_alive": self.pool.alive(),
            "running": len(self.pool.busy()),
            "waiting": dict(waiting),
            "payloads_in_memory": self.dispatcher.held(),
            "handled": dict(self.pool.handled),
            "rejected_frames": self.rejected,
            "commits": self.store.all_commits(),
            "code_drift": dict(self.intake.drift),
            "database": self.database_counts(),
        }

    def database_counts(self) -> dict[str, dict[str, int]]:
        """Tasks per status and queue, as the database has them."""
        from django.db.models import Count

        from ..models import Task

        counts: dict[str, dict[str, int]] = {}
        rows = Task.objects.order_by().values("status", "queue").annotate(n=Count("id"))
        for row in rows:
            counts.setdefault(row["status"], {})[row["queue"]] = row["n"]
        return counts
