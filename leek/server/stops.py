"""What stops a running attempt from outside its worker: its time limit, and a cancel.

Both act on a pool's Running under the pool's lock (workers.py), from another
thread: the watchdog from the broker's duties, a cancel from the connection
that asked for it.

Time limits. A worker process is killed at its task's limit (process.py). A
thread cannot be killed: the watchdog (`watch`, a broker duty) raises
TaskTimeout in it, which pure-Python code meets at its next bytecode and a
blocking C call only when it returns. The attempt is recorded by the thread
itself when it stops, so a task is never recorded failed while its code still
runs. A thread still running STUCK_AFTER seconds past its limit is stuck: it
is no longer counted, and a new thread takes its place while fewer than
`size` threads are stuck; past that, the broker reports itself unhealthy.

Cancels. Cancelling a running task (cancel.py) flags its Running first, so
that its attempt, however it ends, is final and never retried; once the
database shows the task cancelled, the thread's task sees
``current_task().cancelled`` (threads) or its worker process is killed
(processes), and the attempt is recorded as it ended (a killed process's as
TaskCancelled).
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING

from ..exceptions import TaskTimeout
from ..logs import task_extra

if TYPE_CHECKING:
    from .workers import Pool, Running

logger = logging.getLogger(__name__)

#: Seconds past its time limit after which a thread that has not stopped is stuck.
STUCK_AFTER = 5.0


# -- the watchdog --------------------------------------------------------------


def watch(pool: Pool) -> None:
    """Stop threads past their time limit; set aside stuck threads and
    replace them; replace dead workers (a broker duty)."""
    now = time.time()
    replace = 0
    with pool._lock:
        for thread, run in list(pool.running.items()):
            if not thread.is_alive():
                if not pool._stopping.is_set():
                    del pool.running[thread]
                    logger.error(
                        "worker thread died thread=%s",
                        thread.name,
                        extra={"action": "worker_died"},
                    )
                    replace += 1
                continue
            if run is None or run.done or not run.deadline or now <= run.deadline:
                continue
            if not run.timed_out:
                run.timed_out = now
                raise_in(thread, TaskTimeout)
                logger.warning(
                    "task timed out task=%s name=%s limit=%.1fs",
                    run.task_id,
                    run.name,
                    run.deadline - run.started,
                    extra=task_extra("task_timed_out", run.task_id, run.name, attempt=run.attempt),
                )
            elif now - run.timed_out > STUCK_AFTER and len(pool.stuck) < pool.size:
                del pool.running[thread]
                pool.stuck.add(thread)
                logger.error(
                    "worker thread stuck past its time limit thread=%s task=%s",
                    thread.name,
                    run.task_id,
                    extra=task_extra("worker_stuck", run.task_id, run.name, attempt=run.attempt),
                )
                replace += 1
        pool.stuck = {t for t in pool.stuck if t.is_alive()}
    for _ in range(replace):
        if not pool._stopping.is_set():
            pool._spawn()


def raise_in(thread: threading.Thread, exc: type[BaseException] | None) -> None:
    """Raise `exc` in `thread` at its next bytecode; None drops one still pending."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident or 0), None if exc is None else ctypes.py_object(exc)
    )


# -- cancelling a running task -------------------------------------------------


def flag(pool: Pool, task_id: uuid.UUID) -> Running | None:
    """Mark the attempt of `task_id` running in `pool` as cancelled, so it ends
    final whatever it does; None when no worker runs it now."""
    with pool._lock:
        for run in pool.running.values():
            if run is not None and run.task_id == task_id:
                run.cancelled = True
                return run
    return None


def unflag(pool: Pool, run: Running) -> None:
    """The cancel did not happen after all: the attempt ends as it would have."""
    with pool._lock:
        run.cancelled = False


def interrupt(pool: Pool, run: Running) -> None:
    """Stop a flagged attempt: set the flag its task reads (threads), or
    kill its worker process while it still runs it (processes)."""
    with pool._lock:
        run.stop.set()
        if pool.kind != "processes" or run.done:
            return
        for thread, current in pool.running.items():
            if current is run and thread in pool.processes:
                logger.info(
                    "worker process killed by a cancel task=%s name=%s",
                    run.task_id,
                    run.name,
                    extra={"action": "task_cancelled_running"},
                )
                pool.processes[thread].halt()
