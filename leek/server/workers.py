"""The workers: threads that take ready tasks and run them, on themselves or in a process.

Each worker is a thread of the broker. It takes the next ready task from the
dispatcher, loads its payload (from memory, or a page of payloads from the
database), shows it running, and has it run once (attempt.py): on the thread
itself with POOL "threads", or in the worker process the thread drives with
POOL "processes" (process.py), so that task code never runs in the broker's
interpreter. Either way the Result becomes the attempt's Outcome here: a
failure is retried after an exponential backoff with jitter until the task's
retries are exhausted, then it fails for good and the ON_FAILURE hooks run, in
the broker, whichever pool ran it. Each attempt's start and end are told
(lifecycle.py: a log record and a leek signal each) on its worker thread.

A running attempt is stopped from outside its worker at its time limit or by
a cancel (stops.py).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

from django.db import close_old_connections, connection
from django.utils.module_loading import import_string

from .. import conf
from ..exceptions import TaskTimeout, WorkerUnavailable
from ..logs import task_extra
from ..protocol.spin import RUNS
from ..runtime import CapturedOutput, Flag
from ..threads import Named
from . import lifecycle, stops
from .attempt import Attempt, Result, cancelled, perform, timed_out
from .dispatch import GATE_POLL, Dispatcher
from .lease import Lease
from .limits import RateLimits
from .metrics import OFF, Metrics
from .notify import failure_hooks, run_hooks
from .outcome import outcome_of
from .process import WorkerProcess
from .process import prepare as prepare_processes
from .rows import Outcome, Ready
from .store import Store

logger = logging.getLogger(__name__)

#: Where tasks run: on the worker threads, or in a process each thread drives.
POOLS = ("threads", "processes")
#: Failed starts of a worker process in a row after which the pool is broken.
START_FAILURES = 3
#: Seconds a worker waits before it starts a process again once the pool is
#: broken: the first wait, doubled after each failure up to the last.
RESTART_FIRST = 1.0
RESTART_MAX = 30.0


class Running:
    """What one worker is running now, for the watchdog and the stats."""

    __slots__ = (
        "task_id",
        "name",
        "started",
        "deadline",
        "attempt",
        "timed_out",
        "done",
        "cancelled",
        "stop",
    )

    def __init__(
        self, task_id: uuid.UUID, name: str, started: float, deadline: float | None, attempt: int
    ) -> None:
        self.task_id, self.name, self.started = task_id, name, started
        self.deadline, self.attempt = deadline, attempt
        self.timed_out = 0.0  # when the watchdog raised TaskTimeout in the thread
        self.done = False
        self.cancelled = False  # a cancel asked it to stop: its attempt is final
        self.stop = Flag()  # what the task's current_task().cancelled reads


class Pool:
    """`size` worker threads serving the dispatcher; one that dies is replaced."""

    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        size: int,
        retry_later: Callable[[list[Ready]], None],
        kind: str = "threads",
        lane: str = "",
        limits: RateLimits | None = None,
    ) -> None:
        if kind not in POOLS:
            raise ValueError(f"POOL must be one of {', '.join(POOLS)}, got {kind!r}")
        self.store = store
        self.dispatcher = dispatcher
        self.size = size
        self.kind = kind
        self.lane = lane  # the queue whose lane this pool serves ("": the default lane)
        self.retry_later = retry_later
        self.limits = limits  # the rate limits a task waits for before it starts
        self.handled: Counter[str] = Counter()
        self.running: dict[threading.Thread, Running | None] = {}
        self.stuck: set[threading.Thread] = set()
        self.processes: dict[threading.Thread, WorkerProcess] = {}
        self.broken = ""  # why worker processes cannot start, while they cannot
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._halted = False  # the stop's grace is over: killed attempts are not outcomes
        self._seq = 0
        settings = conf.get_settings()
        self.default_timeout: float | None = settings["TIMEOUT"]
        self.capture_limit = int(settings["CAPTURE_LIMIT"])
        self.max_tasks = int(settings["MAX_TASKS_PER_CHILD"])
        self.max_memory = int(settings["MAX_MEMORY_PER_CHILD"])
        self.no_retry = tuple(import_string(path) for path in settings["NO_RETRY"])
        self.hooks = failure_hooks()
        self.metrics: Metrics = OFF
        #: The broker's lease (Lanes.gate); None for a pool outside a broker.
        self.lease: Lease | None = None

    # -- life ----------------------------------------------------------------

    def start(self) -> None:
        if self.kind == "processes" and self.size:
            prepare_processes()
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> None:
        with self._lock:
            self._seq += 1
            name = (
                f"leek-worker-{self.lane}-{self._seq}" if self.lane else f"leek-worker-{self._seq}"
            )
            thread = Named(target=self._loop, name=name, daemon=True)
            self.running[thread] = None
        thread.start()

    def stop(self, grace: float) -> list[Running]:
        """Stop taking tasks; wait up to `grace` seconds for the running ones;
        kill the worker processes still running one. Returns what still ran."""
        self._stopping.set()
        self.dispatcher.close()
        deadline = time.monotonic() + grace
        for thread in list(self.running):
            thread.join(max(0.0, deadline - time.monotonic()))
        left = self.busy()
        if self.kind == "processes":
            self._halted = True  # their tasks stay running: the next start requeues them
            for process in list(self.processes.values()):
                process.halt()
            for thread in list(self.running):
                thread.join(1.0)
        return left

    # -- what the broker reports -----------------------------------------------

    def alive(self) -> int:
        """Workers able to take a task: threads alive, not stuck, whose
        process (in processes mode) could start."""
        with self._lock:
            threads = sum(1 for t in self.running if t.is_alive())
        return 0 if self.broken else threads

    def busy(self) -> list[Running]:
        with self._lock:
            return [r for r in self.running.values() if r is not None and not r.done]

    def tally(self, queue: str) -> None:
        """Count a task of `queue` handled. Under the lock: a queue's first
        count runs Counter.__missing__, Python code the interpreter may
        switch threads in, and two workers ending at once lost one."""
        with self._lock:
            self.handled[queue] += 1

    def handled_by_queue(self) -> Counter[str]:
        """Tasks handled since the start, per queue (a copy)."""
        with self._lock:
            return Counter(self.handled)

    # -- the watchdog ----------------------------------------------------------

    def watch(self) -> None:
        """The watchdog (stops.py): a broker duty."""
        stops.watch(self)

    # -- one worker ------------------------------------------------------------

    def _loop(self) -> None:
        me = threading.current_thread()
        process = None
        if self.kind == "processes":
            process = WorkerProcess(me.name, self.max_tasks, self.max_memory)
            with self._lock:
                self.processes[me] = process
        failures = 0  # failed starts of this worker's process in a row
        try:
            while not self._stopping.is_set():
                if process is not None and not process.alive:
                    if not self._start(process, failures):
                        failures += 1
                        continue
                    failures = 0
                while not self.store.room() and not self._stopping.is_set():
                    pass  # outcomes wait to be written: take no task meanwhile
                regains = self.lease.regains if self.lease is not None else 0
                taken = self.dispatcher.take(timeout=1.0)
                if taken is None:
                    continue
                ready, ahead = taken
                recorded = False  # then the store tells the dispatcher (Dispatcher.done)
                try:
                    recorded = self._run(me, ready, ahead, process, regains)
                except TaskTimeout:
                    pass  # raised after its attempt ended: nothing left to stop
                except Exception:
                    # A fault of leek's own, such as the database going away while
                    # a payload loads: try the task again in a second, on a fresh
                    # connection; this worker goes on.
                    logger.exception(
                        "worker could not run task=%s",
                        ready.id,
                        extra=task_extra("worker_error", ready.id, queue=ready.queue),
                    )
                    connection.close()
                    self.retry_later(
                        [Ready(ready.id, ready.priority, ready.queue, time.time() + 1.0, ready.job)]
                    )
                finally:
                    if not recorded:
                        self.dispatcher.done(ready.id)
                if me not in self.running:
                    return  # set aside as stuck, and replaced
        finally:
            if process is not None:
                process.stop()
                with self._lock:
                    self.processes.pop(me, None)
            with self._lock:
                self.stuck.discard(me)
            close_old_connections()
            connection.close()

    def _start(self, process: WorkerProcess, failures: int) -> bool:
        """Start the thread's process, after `failures` failed starts in a row.

        A process that says it cannot start (its traceback), or that fails
        START_FAILURES times in a row, makes the pool broken, which the broker
        reports, and is tried again after a wait that grows. One that merely
        ended at start (killed from outside) is tried again at once."""
        try:
            process.start()
        except WorkerUnavailable as exc:
            message = str(exc)
            if exc.reported or failures + 1 >= START_FAILURES:
                if message != self.broken:
                    logger.error("%s", message, extra={"action": "process_unavailable"})
                self.broken = message
                self._stopping.wait(min(RESTART_FIRST * 2**failures, RESTART_MAX))
            else:
                logger.warning(
                    "worker process did not start, starting another error=%s",
                    message,
                    extra={"action": "process_restarted"},
                )
            return False
        self.broken = ""
        return True

    def _run(
        self,
        me: threading.Thread,
        ready: Ready,
        ahead: list[uuid.UUID],
        process: WorkerProcess | None,
        regains: int = 0,
    ) -> bool:
        """Run the task once; True when its outcome went to the store.
        `regains`: the lease's regains when the task was taken."""
        job = ready.job
        if job is None:
            try:
                found = self.store.jobs([ready.id, *ahead])
            except BaseException:
                self.dispatcher.keep({}, ahead)
                raise
            self.dispatcher.keep(
                {i: j for i, (s, j) in found.items() if i != ready.id and s == "queued"}, ahead
            )
            if ready.id not in found or found[ready.id][0] not in ("queued", "running"):
                return False  # cancelled or deleted while it waited
            job = found[ready.id][1]
        if job.expires is not None and job.attempts == 0 and time.time() >= job.expires:
            self.store.controls.expire(ready.id)  # not started by its expiry: it never runs
            return False
        if self.limits is not None and self.limits.defer(ready, job):
            return False  # it waits, queued, for its rate limit's token: its attempts as they were
        if process is not None and not process.alive and not self._start(process, 0):
            # Its process died while it waited for this task, and cannot start:
            # the task has not begun, so it waits again, its attempts as they were.
            self.retry_later([Ready(ready.id, ready.priority, ready.queue, time.time(), job)])
            return False
        if not self._still_ours(ready, regains):
            logger.warning(
                "task not started: another broker took it over while this one's lease "
                "was lost task=%s",
                ready.id,
                extra=task_extra("task_lost_before_start", ready.id, job.name, queue=ready.queue),
            )
            return False
        started = time.time()
        epoch = self.store.epoch  # the claim it starts under: its writes need it still
        number = job.attempts + 1
        timeout = job.timeout if job.timeout is not None else self.default_timeout
        attempt = Attempt(
            ready.id, job.name, number, job.payload, timeout, self.store.node, job.max_retries
        )
        deadline = started + timeout if timeout and process is None else None
        run = Running(ready.id, job.name, started, deadline, number)
        with self._lock:
            self.running[me] = run
        self.store.mark_running(ready.id, number, started, epoch)
        lifecycle.started(ready.id, job.name, ready.queue, number)
        with RUNS:
            if process is None:
                ran: Result | None = self._on_thread(me, run, attempt)
            else:
                ran = process.run(
                    attempt, lambda pct, note: self.store.progress(ready.id, pct, note)
                )
        if process is not None:
            with self._lock:
                run.done = True  # a cancel kills no process from here on
        if ran is None:  # its process had ended while idle: the task never began
            with self._lock:
                self.running[me] = None
            self.retry_later([Ready(ready.id, ready.priority, ready.queue, time.time(), job)])
            return False
        result = ran
        with self._lock:
            if self.running.get(me) is run:
                self.running[me] = None
        if process is not None and self._halted:
            return False  # killed by the stop: it stays running, and runs again at the next start
        if run.cancelled:  # read after the lock: a cancel flags a run only while it is listed
            if process is not None and not result.succeeded:
                result = cancelled()
            result.retryable = False
        outcome, retry = outcome_of(ready, job, number, started, result)
        outcome.epoch = epoch
        if retry is not None:
            self.retry_later([retry])
        self.store.record(outcome, lambda: self.dispatcher.done(ready.id))
        self.tally(ready.queue)
        self.metrics.finished(ready.queue, outcome)
        lifecycle.finished(ready.queue, outcome)
        if run.cancelled:
            return True  # asked for: no failure to tell
        if not outcome.succeeded and outcome.final:
            self._run_hooks(ready, job.name, outcome)
        return True

    def _still_ours(self, ready: Ready, regains: int) -> bool:
        """Whether a task this worker took may start: at once while the lease
        has held since the take (no read); else, once it holds again, as the
        database has it. A task taken just before the lease ran out (the
        broker paused, the database away) may have been adopted since, and
        the regain's check (Broker.drop_lost) does not see a task a worker holds."""
        lease = self.lease
        if lease is None or (lease.regains == regains and lease.held()):
            return True
        while not lease.held():
            if self._stopping.wait(GATE_POLL):
                return False  # it stays queued in the database for the next start
        return ready.id in self.store.still_mine([ready.id])

    # -- cancelling a running task ---------------------------------------------

    def flag(self, task_id: uuid.UUID) -> Running | None:
        """Mark the attempt of `task_id` as cancelled (stops.py)."""
        return stops.flag(self, task_id)

    def unflag(self, run: Running) -> None:
        """Undo `flag` (stops.py)."""
        stops.unflag(self, run)

    def interrupt(self, run: Running) -> None:
        """Stop a flagged attempt (stops.py)."""
        stops.interrupt(self, run)

    def _on_thread(self, me: threading.Thread, run: Running, attempt: Attempt) -> Result:
        """Run the attempt on this thread, its output captured."""
        output = CapturedOutput(self.capture_limit)
        try:
            result = perform(attempt, self.store, output, self.no_retry, run.stop)
            with self._lock:
                run.done = True  # the watchdog raises nothing in this thread from here on
                stops.raise_in(me, None)  # and what it raised too late is dropped
        except TaskTimeout:
            result = timed_out(attempt.timeout)
            with self._lock:
                run.done = True
        result.stdout, result.stderr = output.values()
        return result

    def _run_hooks(self, ready: Ready, name: str, outcome: Outcome) -> None:
        run_hooks(self.hooks, outcome)
