"""Imported once, by the forkserver that starts worker processes: Django is set up there.

multiprocessing's forkserver is a fresh interpreter the broker starts (no
thread, lock or connection of the broker's), which imports the modules it is
told to preload, this one, and then forks a worker process from itself at
each start (process.py). So each worker process starts with Django, the
settings and the apps already loaded, in milliseconds, instead of setting them
up in an interpreter of its own (a quarter of a second, paid again at each
recycle, time limit or crash).

The import never raises, or the forkserver would die at its start and take
every start with it. When the setup fails, `failure` keeps its traceback:
each process forked from here sends it to its worker thread as its own start's
failure (child.py), and the thread ends this forkserver (process.py), so that
the next start imports the project anew, as a fresh interpreter would.

The forkserver ends with the broker twice over. multiprocessing's "alive"
pipe: it exits when the pipe's last writer, the broker, is gone (each worker
process closes its own copy as it starts). And a parent-death signal, for a
broker that dies while the forkserver still sets Django up (or hangs there),
before it reads that pipe. Linux sends that signal when the *thread* that
started the process ends, so the broker starts every forkserver from one
thread that lives as long as it does (process.py). The worker processes die
with the forkserver (their own parent-death signal).
"""

from __future__ import annotations

import sys
import traceback

#: The traceback of Django's setup in this forkserver when it failed, else "".
failure = ""


def _warm() -> None:
    global failure
    try:
        from .child import die_with_parent, name_process

        name_process("leek-forkserver")
        die_with_parent()
        _broker_path()
        import django

        django.setup()
        _close_connections()
    except BaseException:  # noqa: BLE001 - reported by each worker process instead
        failure = traceback.format_exc()


def _broker_path() -> None:
    """Take the broker's sys.path (its project directory, `--pythonpath`),
    which multiprocessing hands the forkserver's `main` for this and (up to
    Python 3.13) does not apply; the processes forked from here would apply it
    too late for the settings imported here."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == "multiprocessing.forkserver":
            path = frame.f_locals.get("sys_path")
            if isinstance(path, list):
                sys.path[:] = path
            return
        frame = frame.f_back  # type: ignore[assignment]


def _close_connections() -> None:
    """Close what the setup opened (an app's ready() that queries): processes
    forked from here must not share a connection's socket or file, nor a
    connection pool's (Django 5.1's pool on PostgreSQL, with its threads)."""
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        connection.close()
        if connection.alias in getattr(type(connection), "_connection_pools", {}):
            connection.close_pool()  # type: ignore[attr-defined] # PostgreSQL's, Django 5.1+


_warm()
