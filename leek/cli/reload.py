"""`leek start --reload`: the broker starts again when a Python file it loaded changes.

It runs on Django's autoreloader (django.utils.autoreload), as runserver
does, in two processes. The command itself becomes a supervisor: it starts
the broker in a child process, and starts a new one each time the child exits
with RELOAD. The child serves as `leek start` does and watches the files of
the modules it has loaded (with POOL "threads", the task modules it ran
included), plus what `autoreload_started` receivers add. When one changes,
the child stops as on SIGTERM: it stops accepting pushes, its running tasks
get SHUTDOWN_GRACE to finish, its queued tasks stay in the database; then it
exits with RELOAD, and the next child recovers them and runs the new code.

A child whose start the system checks refuse (a setting being edited) prints
their report and waits for a file to change, then starts again
(`wait_for_change`), as runserver's does. A child that ends before Django
is set up (a settings module that does not import: a syntax error, a name
misspelt) has said why: the supervisor then waits for one of
the files it loaded itself to change (the settings module among them), and
starts a child again. It is for development: `refusal`
says why not when DEBUG is off and the reload is not forced. SIGTERM and
SIGINT to the supervisor are passed on to the child, and the supervisor
exits with the child's status once it has stopped. The child runs in a
process group of its own, so that a terminal's Ctrl-C reaches it once,
through the supervisor (a second one cuts its stop short). The child dies
with the supervisor (Linux's parent-death signal).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.utils import autoreload

from ..threads import Named

logger = logging.getLogger(__name__)

#: The exit status of a broker that stopped to be started again (Django's:
#: autoreload.trigger_reload exits with it).
RELOAD = 3
#: Linux prctl option: the signal a process gets when its parent ends.
PR_SET_PDEATHSIG = 1
#: The variable that names, to the broker the supervisor starts, the pipe it
#: writes to once Django is set up (`set_up`).
READY_FD = "LEEK_RELOAD_READY_FD"
#: Seconds the supervisor waits for its watching thread to end.
WATCH_JOIN = 5.0


def refusal(forced: bool) -> str:
    """Why the broker must not reload itself ("" when it may): DEBUG is off and
    the reload is not forced."""
    if forced or settings.DEBUG:
        return ""
    return (
        "--reload is for development and DEBUG is off: to run new code in production, "
        "stop the broker (`leek stop` or SIGTERM) and start it again; "
        "pass --force-reload to reload all the same"
    )


def supervising() -> bool:
    """Whether this process is the supervisor (not yet the broker it starts)."""
    return os.environ.get(autoreload.DJANGO_AUTORELOAD_ENV) != "true"


def supervise() -> int:
    """Run the broker in a child process, again after each reload; the exit
    status of the last child (128 + the signal that ended one killed by a signal)."""
    env = {**os.environ, autoreload.DJANGO_AUTORELOAD_ENV: "true"}
    args = autoreload.get_child_arguments()
    child: subprocess.Popen[bytes] | None = None
    stopping = threading.Event()

    def forward(signum: int, frame: Any) -> None:
        stopping.set()
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        ready, env[READY_FD] = _ready_pipe()
        # preexec_fn is safe here: the supervisor runs no other thread (its
        # watch while no child runs has ended). The child has a process
        # group of its own: a Ctrl-C in the terminal reaches the supervisor
        # alone, which passes it on once (a second stop signal would cut the
        # child's stop short).
        try:
            child = subprocess.Popen(
                args, env=env, close_fds=False, preexec_fn=_die_with_parent, process_group=0
            )
        finally:
            os.close(int(env[READY_FD]))
        if stopping.is_set():  # a signal came while no child ran
            child.send_signal(signal.SIGTERM)
        status = child.wait()
        was_set_up = _was_set_up(ready)
        if status > 0 and status != RELOAD and not was_set_up and not stopping.is_set():
            # It said why; the files loaded here include the settings module.
            sys.stderr.write("waiting for a file to change to start again\n")
            if not _changed_before(stopping):
                return status
        elif status != RELOAD or stopping.is_set():
            return 128 - status if status < 0 else status
        logger.info("broker restarting with the new code", extra={"action": "broker_reloading"})


def set_up() -> None:
    """In the broker the supervisor started: tell it that Django is set up,
    so that a start refused from here on ends the command as it would
    without --reload (an address taken, a database away)."""
    fd = os.environ.pop(READY_FD, None)
    if fd is None:
        return
    with contextlib.suppress(OSError):  # the supervisor's, whatever else it is
        os.write(int(fd), b"1")
        os.close(int(fd))


def _ready_pipe() -> tuple[int, str]:
    """A pipe for `set_up`: its read end, and its write end's number, open
    in the child the supervisor starts next."""
    read, write = os.pipe()
    os.set_inheritable(write, True)
    os.set_blocking(read, False)
    return read, str(write)


def _was_set_up(ready: int) -> bool:
    """Whether the child that ended wrote to the pipe `ready` (which closes)."""
    try:
        return bool(os.read(ready, 1))
    except BlockingIOError:  # a process of the child's still holds the write end
        return False
    finally:
        os.close(ready)


def _changed_before(stopping: threading.Event) -> bool:
    """Watch the files the supervisor loaded until one changes (True) or a
    stop signal comes (False); the watching thread has ended on return."""
    reloader = autoreload.get_reloader()
    changed = threading.Event()
    thread = _watch(reloader, changed.set)
    while not changed.wait(0.1) and not stopping.is_set():
        pass
    reloader.stop()
    thread.join(WATCH_JOIN)
    return changed.is_set() and not stopping.is_set()


def serve(broker: Any) -> bool:
    """Serve `broker` (a leek.server.broker.Broker) until it stops; stop it
    gracefully when a watched file changes. True when it stopped for that."""
    reloader = autoreload.get_reloader()
    changed: list[str] = []
    reloading = threading.Event()

    def note(sender: Any, file_path: Any, **kwargs: Any) -> None:
        changed.append(str(file_path))  # answers None: Django decides whether to reload

    def reload() -> None:
        logger.info(
            "file changed path=%s: the broker stops and starts again once its "
            "running tasks end (within %gs)",
            changed[-1] if changed else "?",
            broker.grace,
            extra={"action": "file_changed"},
        )
        reloading.set()
        broker.request_stop()

    autoreload.file_changed.connect(note, weak=False)
    logger.info(
        "watching for file changes reloader=%s",
        type(reloader).__name__,
        extra={"action": "reload_watching"},
    )
    _watch(reloader, reload)
    try:
        broker.serve()
    finally:
        reloader.stop()
        autoreload.file_changed.disconnect(note)
    return reloading.is_set()


def wait_for_change() -> int:
    """For a broker whose start the system checks refused: wait until a
    watched file changes (the settings module, say), as runserver's child
    waits after a check error; then RELOAD, and the supervisor starts the
    broker again. 1 when a stop signal comes first."""
    reloader = autoreload.get_reloader()
    ended = threading.Event()
    changed = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        ended.set()

    def reload() -> None:
        changed.set()
        ended.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _watch(reloader, reload)
    ended.wait()
    reloader.stop()
    return RELOAD if changed.is_set() else 1


def _watch(reloader: Any, changed: Callable[[], None]) -> threading.Thread:
    """Run Django's `reloader` on a thread of its own until it stops;
    `changed` runs there when a watched file changes. The thread."""

    def watch() -> None:
        autoreload.autoreload_started.send(sender=reloader)
        try:
            reloader.run_loop()
        except SystemExit:  # autoreload.trigger_reload: a watched file changed
            changed()

    thread = Named(target=watch, name="leek-reloader", daemon=True)
    thread.start()
    return thread


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the supervisor ends (elsewhere, nothing)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
