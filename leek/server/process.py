"""A worker process, as its worker thread in the broker drives it (child.py runs inside).

The thread starts the process warm (Django set up), hands it one attempt
at a time with the payload bytes it holds, forwards the attempt's progress to
the store, and waits for the Result within the task's time limit. At the limit
the process gets SIGTERM, then SIGKILL after KILL_GRACE seconds; a process
that dies mid-task fails the attempt with WorkerLost, which carries its exit
status or signal. Either way the next attempt gets a fresh process. A process
is also replaced after MAX_TASKS_PER_CHILD tasks, or once its resident memory
passes MAX_MEMORY_PER_CHILD MiB.

PROCESS_START says how a process starts. "forkserver" (the default): forked
from multiprocessing's forkserver, a fresh interpreter started by the broker
that set Django up once (preload.py), in milliseconds. "spawn": a fresh
interpreter each time, which sets Django up itself (a quarter of a second
here); for a project whose settings or apps start threads at import,
which a fork would not carry over. Neither inherits a thread, lock or
connection of the broker.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import conf
from ..exceptions import WorkerLost, WorkerUnavailable
from ..threads import Named, name_current
from . import child
from .attempt import Attempt, Result, failed, timed_out
from .pipe import Pipe

logger = logging.getLogger(__name__)

#: Seconds between SIGTERM and SIGKILL for a process past its time limit, or
#: still running at the end of a stop's grace.
KILL_GRACE = 2.0
#: Seconds a process that was asked to stop gets before it is killed.
STOP_TIMEOUT = 5.0

#: Held while a process forks from the forkserver and until it is ready.
_STARTING = threading.Lock()
#: The one thread every forkserver is started from: a forkserver dies with the
#: thread that started it (preload.py), so that thread lives as long as the
#: broker, whichever worker thread finds the forkserver gone.
_starter: concurrent.futures.ThreadPoolExecutor | None = None
_starter_made = threading.Lock()
#: The module the forkserver imports before its first fork.
PRELOAD = f"{__package__}.preload"


def _context() -> Any:
    """The multiprocessing context of PROCESS_START."""
    if conf.get("PROCESS_START") == "spawn":
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([PRELOAD])
    return context


def prepare() -> None:
    """Start the forkserver now, as a pool starts, so that it sets Django up
    while the broker goes on starting; a forkserver that ends is started again
    by the next process's start."""
    if conf.get("PROCESS_START") != "spawn":
        _context()
        _run_forkserver()


def _run_forkserver() -> None:
    """Start the forkserver, unless one runs, from the starter thread."""
    global _starter
    before = _forkserver_pid()
    if before is not None and _running(before):
        return
    with _starter_made:
        if _starter is None:
            _starter = concurrent.futures.ThreadPoolExecutor(
                1, "leek-fork-starter", initializer=name_current
            )
    _starter.submit(multiprocessing.forkserver.ensure_running).result()
    pid = _forkserver_pid()
    if before is None:
        logger.info("forkserver started pid=%s", pid, extra={"action": "forkserver_started"})
    elif pid != before:
        logger.info(
            "forkserver started again pid=%s ended=%s",
            pid,
            before,
            extra={"action": "forkserver_started"},
        )


def _forkserver() -> Any:
    """multiprocessing's record of the forkserver: its pid, socket, alive pipe."""
    return getattr(multiprocessing.forkserver, "_forkserver", None)


def _forkserver_pid() -> int | None:
    pid = getattr(_forkserver(), "_forkserver_pid", None)
    return pid if isinstance(pid, int) else None


def _running(pid: int) -> bool:
    """Whether child `pid` has not ended; it is left to be reaped by
    multiprocessing. False where that cannot be asked (no waitid): the
    starter thread then asks multiprocessing."""
    if not hasattr(os, "waitid"):
        return False
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        return False


def end_forkserver(*, for_exec: bool = False) -> None:
    """Kill the forkserver and wait until it is gone, so that the next start
    makes a new one: after a forkserver whose Django setup failed, or did not
    finish within PROCESS_START_TIMEOUT (the new one imports the project
    again), and before the broker executes itself again (reexec.py:
    `for_exec`), since the exec keeps the process but none of its state, and
    its next life starts a forkserver of its own, with the new code."""
    server = _forkserver()
    pid = _forkserver_pid()
    if pid is None:
        return
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    address = getattr(server, "_forkserver_address", None)
    stop = getattr(server, "_stop", None)  # reaps it, removes its socket, forgets it
    with contextlib.suppress(OSError):
        if stop is not None:
            stop()
        else:
            os.waitpid(pid, 0)
    if (
        for_exec
        and isinstance(address, str)
        and os.path.basename(os.path.dirname(address)).startswith("pymp-")
    ):
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(address))  # made for its socket; the exec skips its cleanup


class _Watch:
    """One thread that kills the forkserver when a start from it (one at a
    time: _STARTING) waits for the fork past its deadline, which ends the
    wait; the starting thread then reaps it (end_forkserver) before the next
    start. A Timer a start would cost 0.2 ms of CPU."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._deadline: float | None = None
        self._server: int | None = None  # the forkserver the start waits for
        self._thread: threading.Thread | None = None
        self.fired = False  # the last armed deadline passed: the forkserver was killed

    def arm(self, deadline: float, server: int) -> None:
        with self._changed:
            self._deadline, self._server, self.fired = deadline, server, False
            if self._thread is None:
                self._thread = Named(target=self._run, name="leek-fork-watch", daemon=True)
                self._thread.start()
            self._changed.notify()

    def disarm(self) -> None:
        with self._changed:
            self._deadline = None

    def _run(self) -> None:
        while True:
            with self._changed:
                while self._deadline is None or self._deadline > time.monotonic():
                    wait = None if self._deadline is None else self._deadline - time.monotonic()
                    self._changed.wait(wait)
                self._deadline, self.fired = None, True
                if self._server:  # never 0: that would signal the broker's whole group
                    with contextlib.suppress(OSError):
                        os.kill(self._server, signal.SIGKILL)


_WATCH = _Watch()


class WorkerProcess:
    """One worker process and its end of the pipe; driven by one worker thread."""

    def __init__(self, name: str, max_tasks: int, max_memory: int) -> None:
        self.name = name
        self.max_tasks = max_tasks  # 0: no limit
        self.max_memory = max_memory * 1024 * 1024  # bytes; 0: no limit
        self.tasks = 0
        self.pid: int | None = None
        self._process: Any = None
        self._pipe: Pipe | None = None
        self._stopping: Any = None  # set before a SIGTERM that must end the task

    @property
    def alive(self) -> bool:
        """Whether a process was started and has not been seen to end (a
        process that dies while idle is seen at the next `run`)."""
        return self._pipe is not None

    def start(self) -> None:
        """Start a fresh process and wait until it is ready; WorkerUnavailable,
        with the process's traceback, when it cannot start.

        From a forkserver, one start at a time, until the process is ready (a
        few milliseconds). A process that says the forkserver is broken (its
        Django setup failed) gets it ended, and reaped, before the next start
        begins: that start meets a forkserver that works or none, never one
        on its way out, and a new one imports the project again."""
        self.close()
        context = _context()
        forked = context.get_start_method() == "forkserver"
        with _STARTING if forked else contextlib.nullcontext():
            if forked:
                _run_forkserver()
            message = self._launch(context, forked)
            if forked and message[0] != "ready":
                end_forkserver()
        if message[0] != "ready":
            self.close()
            raise WorkerUnavailable(f"worker process cannot start:\n{message[1]}", reported=True)
        self.pid = int(message[1])

    def _launch(self, context: Any, forked: bool) -> tuple[Any, ...]:
        """Start the process; its first message, within PROCESS_START_TIMEOUT.

        A forkserver that has not forked the process by then (its Django
        setup hangs, an app's ready() waiting on the network, say; or it was
        stopped) is ended, which ends the wait, and the start is reported as
        one that cannot start; the next start makes a new forkserver."""
        timeout = float(conf.get("PROCESS_START_TIMEOUT"))
        deadline = time.monotonic() + timeout
        ours, theirs = context.Pipe()
        self._stopping = context.Value("b", 0, lock=False)
        process = context.Process(
            target=child.main, args=(theirs, self._stopping), name=self.name, daemon=True
        )
        server = _forkserver_pid() if forked else None
        try:
            if server is not None:
                _WATCH.arm(deadline, server)
            process.start()
        except (OSError, EOFError) as exc:  # the forkserver ended meanwhile; the next makes one
            theirs.close()
            ours.close()
            if server is not None and _WATCH.fired:
                end_forkserver()  # killed by the watch: reaped before the next start
                raise WorkerUnavailable(
                    f"worker process cannot start: the forkserver did not fork it within "
                    f"{timeout:g} s (PROCESS_START_TIMEOUT): the project's setup there (its "
                    "settings, an app's ready()) does not finish, or it was stopped",
                    reported=True,
                ) from exc
            raise WorkerUnavailable(f"worker process did not start: {exc!r}") from exc
        finally:
            if server is not None:
                _WATCH.disarm()
        theirs.close()
        pipe = Pipe(ours)
        self._process, self._pipe, self.tasks = process, pipe, 0
        try:
            message: tuple[Any, ...] = pipe.receive(max(deadline - time.monotonic(), 0.001))
        except TimeoutError as exc:
            self.close()
            raise WorkerUnavailable(
                f"worker process cannot start: not ready within {timeout:g} s "
                "(PROCESS_START_TIMEOUT): the project's setup in it (its settings, an "
                "app's ready()) does not finish",
                reported=True,
            ) from exc
        except (EOFError, OSError) as exc:
            lost = WorkerLost.of(self._reap())
            raise WorkerUnavailable(f"worker process ended at start: {lost}") from exc
        return message

    def run(self, attempt: Attempt, progress: Callable[[float, str], None]) -> Result | None:
        """Run one attempt in the process, within its time limit.

        Returns the process's Result, or a TaskTimeout or WorkerLost failure
        when the process had to be killed or died while it ran the task; None
        when it had died before it got the task (the attempt never began).
        The process is then gone, and the next `run` needs a `start`."""
        limit = attempt.timeout or None
        deadline = None if limit is None else time.monotonic() + limit
        pipe = self._pipe
        if pipe is None:  # not started: the attempt never begins
            return None
        try:
            pipe.send(child.run_message(attempt))
        except OSError:  # nobody reads the pipe: the process ended while idle
            self._reap()
            return None
        try:
            wait = limit  # the whole limit while no message came: the socket keeps it set
            while True:
                try:
                    message = pipe.receive(wait)
                except TimeoutError:
                    message = None
                if message is None or message[0] == "progress":
                    if deadline is not None and time.monotonic() >= deadline:
                        self._kill()
                        return timed_out(attempt.timeout)
                    if message is not None:
                        progress(message[1], message[2])
                    if deadline is not None:
                        wait = max(deadline - time.monotonic(), 0.001)
                    continue
                result = Result(*message[1])
                self.tasks += 1
                self._recycle_if_due(int(message[2]))
                return result
        except (EOFError, OSError):
            return failed(WorkerLost.of(self._reap()))

    def _recycle_if_due(self, rss: int) -> None:
        reason = ""
        if self.max_tasks and self.tasks >= self.max_tasks:
            reason = f"ran {self.tasks} tasks"
        elif self.max_memory and rss > self.max_memory:
            reason = f"uses {rss // (1024 * 1024)} MiB"
        if reason:
            logger.info(
                "worker process recycled pid=%s reason=%s",
                self.pid,
                reason,
                extra={"action": "process_recycled"},
            )
            self.stop()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Ask the process to exit between tasks; kill it if it does not."""
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                self._pipe.send(("stop",))
        if self._process is not None:
            self._process.join(timeout)
            if self._process.is_alive():
                self._kill()
        self.close()

    def halt(self) -> None:
        """Kill the process now (SIGKILL), whatever it runs: the end of a stop's grace."""
        if self._process is not None:
            with contextlib.suppress(OSError):
                self._process.kill()

    def _kill(self) -> None:
        """SIGTERM, then SIGKILL after KILL_GRACE seconds."""
        process = self._process
        if process is None:
            return
        self._stopping.value = 1
        with contextlib.suppress(OSError):
            process.terminate()
        process.join(KILL_GRACE)
        if process.is_alive():
            with contextlib.suppress(OSError):
                process.kill()
            process.join(KILL_GRACE)
        self._reap()

    def _reap(self) -> int | None:
        """Wait for the process to end, forget it; its exit status."""
        exitcode = None
        if self._process is not None:
            self._process.join(KILL_GRACE)
            exitcode = self._process.exitcode
        self.close()
        return exitcode

    def close(self) -> None:
        """Forget the process (it has exited, or is killed) and close the pipe."""
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                self._pipe.close()
        if self._process is not None:
            if self._process.is_alive():
                with contextlib.suppress(OSError):
                    self._process.kill()
                self._process.join(KILL_GRACE)
            with contextlib.suppress(ValueError):
                self._process.close()
        self._process = self._pipe = None
        self.pid = None
