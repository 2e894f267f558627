"""Inside a worker process: set Django up once, then run the tasks its thread sends.

The broker starts each worker process from multiprocessing's forkserver, where
Django is set up already (preload.py), or with spawn (PROCESS_START): either
way no thread, lock or connection of the broker is inherited. It talks to the
process over one pipe (pipe.py). Messages, each a tuple of plain values
pickled by the standard pickler:

    broker → child   ("run", id, name, attempt, payload, timeout, node, max_retries)
                                                 run one attempt
                     ("stop",)                   exit
                     SIGTERM, the flag set       the task is past its time limit: exit
    child → broker   ("ready", pid)              Django is set up; send tasks
                     ("broken", traceback)       it cannot start; it exits
                     ("progress", percent, note) set_progress() in the task
                     ("done", Result's fields, rss)
                                                 the attempt ended; rss in bytes (0: not measured)

The task's payload travels as the bytes the broker holds and is unpickled only
here, once its signature is checked (attempt.py). The task's stdout and stderr
are captured at the file-descriptor level, so the output of C code and of
subprocesses is kept too. The child dies with its parent (Linux's
parent-death signal): the broker, or the forkserver, which dies with the
broker in turn; so no task outlives the broker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import traceback
from typing import Any

from ..ids import from_bytes
from ..threads import name_thread, prctl
from .pipe import Pipe

#: Linux prctl option: the signal a process gets when its parent thread ends.
PR_SET_PDEATHSIG = 1
#: The exit status of a worker process stopped at a task's time limit.
TIME_LIMIT_EXIT = 124


def main(conn: Any, stopping: Any) -> None:
    """The worker process: its entry point, given its end of the pipe (a
    multiprocessing Connection, which spawn knows how to hand over) and the
    flag its broker sets before it sends SIGTERM to stop a task at its limit."""
    die_with_parent()
    name_process("leek-worker")
    pipe = Pipe(conn)
    warm = sys.modules.get(f"{__package__}.preload")  # forked from the forkserver
    if warm is not None:
        _leave_forkserver()
        if warm.failure:  # its thread ends the forkserver (process.py)
            pipe.send(("broken", warm.failure))
            return
    # The broker decides when to stop: a Ctrl-C in a terminal, or a service
    # manager's SIGTERM to every process of the service, leaves the task
    # running for the broker's graceful stop. A SIGTERM after the broker set
    # the flag ends the task (its finally blocks run) and the process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: _on_sigterm(stopping))
    try:
        import django

        if warm is None:
            django.setup()
        from .. import conf
        from .attempt import perform

        settings = conf.get_settings()
        from django.utils.module_loading import import_string

        if int(settings["CHILD_NICE"]) > 0:
            os.nice(int(settings["CHILD_NICE"]))

        no_retry = tuple(import_string(path) for path in settings["NO_RETRY"])
        capture = Capture(int(settings["CAPTURE_LIMIT"]))
        connections = Connections()
        measure = int(settings["MAX_MEMORY_PER_CHILD"]) > 0  # the broker recycles on it
    except BaseException:
        pipe.send(("broken", traceback.format_exc()))
        return
    pipe.send(("ready", os.getpid()))
    from .attempt import Attempt

    sink = Sink(pipe)
    while True:
        try:
            message = pipe.receive()
        except (EOFError, OSError):  # the broker is gone
            return
        if message[0] != "run":
            return
        _, key, name, number, payload, timeout, node, max_retries = message
        attempt = Attempt(from_bytes(key), name, number, payload, timeout, node, max_retries)
        capture.start()
        try:
            result = perform(attempt, sink, None, no_retry)
        finally:
            capture.stop()
        result.stdout, result.stderr = capture.values()
        connections.tidy()
        pipe.send(("done", result_fields(result), rss() if measure else 0))


def run_message(attempt: Any) -> tuple[Any, ...]:
    """The message that runs `attempt`: its fields, the payload as the broker holds it."""
    return (
        "run",
        attempt.task_id.bytes,
        attempt.name,
        attempt.number,
        attempt.payload,
        attempt.timeout,
        attempt.node,
        attempt.max_retries,
    )


def result_fields(result: Any) -> tuple[Any, ...]:
    """A Result as a plain tuple, in the order of its fields (Result(*fields) again)."""
    return (
        result.succeeded,
        result.result,
        result.result_repr,
        result.exc_type,
        result.exc_message,
        result.traceback,
        result.retryable,
        result.countdown,
        result.stdout,
        result.stderr,
    )


class Sink:
    """set_progress() in a worker process: the progress goes to the broker."""

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe

    def progress(self, task_id: Any, percent: float, note: str) -> None:
        self.pipe.send(("progress", percent, note))


class Connections:
    """The process's database connections tidied after each task, as a
    request's end does (CONN_MAX_AGE, connections found broken): once a
    connection was ever opened in this process. Until then there is nothing
    to tidy, and a task that uses no database skips the look at every
    connection (4 µs a task, hot, of a round of about 100)."""

    def __init__(self) -> None:
        from django.db import close_old_connections, connections
        from django.db.backends.signals import connection_created

        self._close = close_old_connections
        connection_created.connect(self._opened, weak=False, dispatch_uid="leek.child.opened")
        # One the process's setup opened counts too.
        self.opened = any(c.connection is not None for c in connections.all(initialized_only=True))

    def _opened(self, **kwargs: Any) -> None:
        self.opened = True

    def tidy(self) -> None:
        if self.opened:
            self._close()


class Capture:
    """File descriptors 1 and 2 sent to files while a task runs (`start`
    to `stop`); the first `limit` characters of each kept. A file is read
    and emptied only when the task wrote to it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.files = [tempfile.TemporaryFile(buffering=0), tempfile.TemporaryFile(buffering=0)]  # noqa: SIM115
        self._out, self._err = (file.fileno() for file in self.files)
        # The process's own, for what it prints between tasks.
        self._saved_out, self._saved_err = os.dup(1), os.dup(2)

    def start(self) -> None:
        _flush()
        os.dup2(self._out, 1)
        os.dup2(self._err, 2)

    def stop(self) -> None:
        _flush()
        os.dup2(self._saved_out, 1)
        os.dup2(self._saved_err, 2)

    def values(self) -> tuple[str, str]:
        return self._text(self._out), self._text(self._err)

    def _text(self, fd: int) -> str:
        size = os.lseek(fd, 0, os.SEEK_END)
        if not size:
            return ""
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, min(size, 4 * self.limit)).decode(errors="replace")[: self.limit]
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        return text


def _on_sigterm(stopping: Any) -> None:
    if stopping.value:
        raise SystemExit(TIME_LIMIT_EXIT)


def rss() -> int:
    """This process's resident memory in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _flush() -> None:
    """Python's own buffers of stdout and stderr written out (a task may
    have replaced or closed either)."""
    try:
        sys.stdout.flush()
    except Exception:  # noqa: S110 - its output is its own
        pass
    try:
        sys.stderr.flush()
    except Exception:  # noqa: S110
        pass


def _leave_forkserver() -> None:
    """Close this process's copy of the forkserver's "alive" pipe, which
    multiprocessing hands every process it forks: the forkserver ends when
    its last writer closes it, which must be the broker alone, or the
    forkserver would outlive a broker that exits (or executes itself again)
    while a worker process still runs."""
    server = getattr(sys.modules.get("multiprocessing.forkserver"), "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(fd, int):
        with contextlib.suppress(OSError):
            os.close(fd)
        server._forkserver_alive_fd = None  # type: ignore[union-attr]


def name_process(name: str) -> None:
    """Name this process as `top` and `ps -o comm` show it (its command line
    stays Python's): its main thread's name (threads.py)."""
    name_thread(name)


def die_with_parent() -> None:
    """Ask Linux to kill this process when the thread that started it ends (a
    broker's, or the forkserver's); exit now if that is already gone."""
    parent = os.getppid()
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
