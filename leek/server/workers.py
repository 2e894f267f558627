"""The worker threads: run a task, record its success or failure, retry it.

Each worker takes the next ready task from the dispatcher, loads its payload
(from memory, or a page of payloads from the database), runs it with its
stdout and stderr captured, and hands the outcome to the store. A task
that raises is retried after an exponential backoff with jitter until its
retries are exhausted; then it fails for good and the ON_FAILURE hooks run.
"""

from __future__ import annotations

import ctypes
import logging
import random
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from django.db import close_old_connections, connection
from django.utils.module_loading import import_string

from .. import conf
from ..exceptions import PayloadError, Retry, TaskTimeout
from ..protocol.payload import dump_value, load_task
from ..runtime import CapturedOutput, TaskContext, bind_context
from .dispatch import Dispatcher
from .notify import notify_admins
from .rows import Job, Outcome, Ready
from .store import Store

logger = logging.getLogger(__name__)


class Running:
    """What one worker is running now, for the time-limit watchdog."""

    __slots__ = ("task_id", "name", "started", "deadline", "attempt", "abandoned")

    def __init__(
        self, task_id: uuid.UUID, name: str, started: float, deadline: float | None, attempt: int
    ) -> None:
        self.task_id, self.name, self.started = task_id, name, started
        self.deadline, self.attempt = deadline, attempt
        self.abandoned = False


class Pool:
    """WORKERS threads serving the dispatcher; a worker that dies or overruns is replaced."""

    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        size: int,
        retry_later: Callable[[list[Ready]], None],
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.size = size
        self.retry_later = retry_later
        self.handled: Counter[str] = Counter()
        self.running: dict[threading.Thread, Running | None] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._seq = 0
        settings = conf.get_settings()
        self.default_timeout: float | None = settings["TIMEOUT"]
        self.capture_limit = int(settings["CAPTURE_LIMIT"])
        self.no_retry = tuple(import_string(path) for path in settings["NO_RETRY"])
        self.hooks = [import_string(path) for path in settings["ON_FAILURE"]]
        if settings["NOTIFY_ADMINS_ON_FAILURE"]:
            self.hooks.append(notify_admins)

    def start(self) -> None:
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> None:
        with self._lock:
            self._seq += 1
            thread = threading.Thread(
                target=self._loop, name=f"leek-worker-{self._seq}", daemon=True
            )
            self.running[thread] = None
        thread.start()

    def alive(self) -> int:
        with self._lock:
            return sum(
                1 for t, r in self.running.items() if t.is_alive() and not (r and r.abandoned)
            )

    def busy(self) -> list[Running]:
        with self._lock:
            return [r for r in self.running.values() if r is not None and not r.abandoned]

    def stop(self, grace: float) -> list[Running]:
        """Stop taking tasks; wait up to `grace` seconds; return what still runs."""
        self._stopping = True
        self.dispatcher.close()
        deadline = time.monotonic() + grace
        for thread in list(self.running):
            thread.join(max(0.0, deadline - time.monotonic()))
        return self.busy()

    def watch(self) -> None:
        """Time out overrunning tasks and replace dead or stuck workers (a broker duty)."""
        now = time.time()
        for thread, run in list(self.running.items()):
            if run is not None and not run.abandoned and run.deadline and now > run.deadline:
                self._time_out(thread, run)
            elif not thread.is_alive() and not self._stopping:
                with self._lock:
                    self.running.pop(thread, None)
                logger.error(
                    "worker thread died thread=%s", thread.name, extra={"action": "worker_died"}
                )
                self._spawn()

    def _time_out(self, thread: threading.Thread, run: Running) -> None:
        run.abandoned = True
        limit = (run.deadline or 0) - run.started
        logger.warning(
            "task timed out task=%s name=%s limit=%.1fs",
            run.task_id,
            run.name,
            limit,
            extra={"action": "task_timed_out"},
        )
        # Raise TaskTimeout inside the thread: pure-Python code stops at its next
        # bytecode; a blocking C call (socket read, sleep) only when it returns.
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(thread.ident or 0), ctypes.py_object(TaskTimeout)
        )
        self.store.record(
            Outcome(
                run.task_id,
                run.name,
                run.attempt,
                run.started,
                time.time(),
                False,
                exc_type="leek.exceptions.TaskTimeout",
                exc_message=f"timed out after {limit:g} s",
                final=True,
            )
        )
        with self._lock:
            self.running.pop(thread, None)
        if not self._stopping:
            self._spawn()

    def _loop(self) -> None:
        me = threading.current_thread()
        try:
            while not self._stopping:
                while not self.store.room() and not self._stopping:
                    pass  # outcomes wait to be written: take no task meanwhile
                taken = self.dispatcher.take(timeout=1.0)
                if taken is None:
                    continue
                ready, ahead = taken
                try:
                    self._run(me, ready, ahead)
                except TaskTimeout:
                    pass  # the watchdog recorded it; this thread is no longer counted
                except Exception:
                    # A fault of leek's own, such as the database going away while
                    # a payload loads: try the task again in a second, on a fresh
                    # connection; this worker goes on.
                    logger.exception(
                        "worker could not run task=%s", ready.id, extra={"action": "worker_error"}
                    )
                    connection.close()
                    self.retry_later(
                        [Ready(ready.id, ready.priority, ready.queue, time.time() + 1.0, ready.job)]
                    )
                if me not in self.running:
                    return
        finally:
            close_old_connections()
            connection.close()

    def _run(self, me: threading.Thread, ready: Ready, ahead: list[uuid.UUID]) -> None:
        job = ready.job
        if job is None:
            found = self.store.jobs([ready.id, *ahead])
            self.dispatcher.keep(
                {i: j for i, (s, j) in found.items() if i != ready.id and s == "queued"}
            )
            if ready.id not in found or found[ready.id][0] not in ("queued", "running"):
                return  # cancelled or deleted while it waited
            job = found[ready.id][1]
        started = time.time()
        attempt, name = job.attempts + 1, job.name
        timeout = job.timeout if job.timeout is not None else self.default_timeout
        run = Running(ready.id, name, started, started + timeout if timeout else None, attempt)
        with self._lock:
            self.running[me] = run
        self.store.mark_running(ready.id, attempt, started)
        output = CapturedOutput(self.capture_limit)
        outcome: Outcome
        try:
            fn, args, kwargs = load_task(job.payload)
            context = TaskContext(ready.id, name, attempt, self.store, self.store.node)
            with bind_context(context, output):
                value = fn(*args, **kwargs)
            outcome = Outcome(
                ready.id,
                name,
                attempt,
                started,
                time.time(),
                True,
                result=dump_value(value),
                result_repr=_short_repr(value),
            )
        except TaskTimeout:
            raise
        except Exception as exc:
            outcome = self._failure(ready, job, attempt, started, exc)
        finally:
            with self._lock:
                if self.running.get(me) is run:
                    self.running[me] = None
        if run.abandoned:
            return
        outcome.stdout, outcome.stderr = output.values()
        self.store.record(outcome)
        self.handled[ready.queue] += 1
        if not outcome.succeeded and outcome.final:
            self._run_hooks(ready, name, outcome)

    def _failure(
        self, ready: Ready, job: Job, attempt: int, started: float, exc: Exception
    ) -> Outcome:
        name = job.name
        retryable = not isinstance(exc, (PayloadError, *self.no_retry))
        final = not retryable or attempt > job.max_retries
        retry_at = None
        if not final:
            countdown = (
                exc.countdown
                if isinstance(exc, Retry) and exc.countdown is not None
                else backoff(attempt)
            )
            retry_at = time.time() + countdown
            retry = Job(job.payload, name, attempt, job.max_retries, job.timeout)
            self.retry_later([Ready(ready.id, ready.priority, ready.queue, retry_at, retry)])
        remote = type(exc)
        return Outcome(
            ready.id,
            name,
            attempt,
            started,
            time.time(),
            False,
            exc_type=f"{remote.__module__}.{remote.__qualname__}",
            exc_message=str(exc),
            traceback="".join(traceback.format_exception(exc)),
            final=final,
            retry_at=retry_at,
        )

    def _run_hooks(self, ready: Ready, name: str, outcome: Outcome) -> None:
        for hook in self.hooks:
            try:
                hook(ready.id, name, outcome)
            except Exception:
                logger.exception(
                    "failure hook raised hook=%s task=%s",
                    hook,
                    ready.id,
                    extra={"action": "hook_failed"},
                )


def backoff(attempt: int) -> float:
    """Seconds before retry number `attempt`: exponential, capped, with jitter."""
    settings = conf.get_settings()
    base = min(
        float(settings["RETRY_BACKOFF"]) * 2 ** (attempt - 1), float(settings["RETRY_BACKOFF_MAX"])
    )
    jitter = float(settings["RETRY_JITTER"]) * random.random()  # noqa: S311 - not for secrets
    return float(base * (1 + jitter))


def _short_repr(value: Any, limit: int = 2000) -> str:
    try:
        text = repr(value)
    except Exception as exc:
        text = f"<unrepresentable {type(value).__name__}: {exc}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"
