"""Every leek setting with its default, read once.

Settings come from the ``LEEK`` dict in Django settings; any key can be
overridden from the environment as ``LEEK_<KEY>`` (parsed by django-environ to
the default's type). The merged result is cached and reset when Django's
``setting_changed`` signal fires (``override_settings`` in tests).
"""

from __future__ import annotations

import hashlib
import os
import socket
from datetime import timedelta
from functools import cache
from typing import Any

import environ
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

#: Each default with a note on what it does.
DEFAULTS: dict[str, Any] = {
    # Address the broker listens on, and the address clients connect to.
    "HOST": "127.0.0.1",
    "PORT": 8002,
    # Extra brokers a client may fail over to, as "host:port" strings. The first
    # broker tried is always HOST:PORT.
    "BROKERS": [],
    # Shared secret that signs every frame (HMAC-SHA256). Empty: derived from
    # Django's SECRET_KEY, so a client and broker of the same project agree.
    "SECRET": "",
    # Worker threads per broker. 0: the broker accepts and commits tasks but runs
    # none; they run when it starts again with workers, or on another broker
    # that adopts them once this one has stopped or gone silent.
    "WORKERS": 4,
    # Where tasks run: "threads" runs them on the worker threads, in the
    # broker's process; "processes" gives each worker thread a process of its
    # own to run them in (crash isolation, hard time limits, every core).
    "POOL": "threads",
    # Queues with a lane of their own: {"pdfs": {"workers": 2, "pool":
    # "processes"}}; a key left out takes WORKERS or POOL. Every other queue
    # shares the default lane of WORKERS workers in POOL.
    "QUEUES": {},
    # processes pool: tasks a worker process runs before a fresh one replaces
    # it, and the resident memory in MiB past which it is replaced after its
    # task (0: no limit).
    "MAX_TASKS_PER_CHILD": 0,
    "MAX_MEMORY_PER_CHILD": 0,
    # processes pool: niceness added to each worker process, so that while
    # tasks keep every core busy the broker (and the database, and the web
    # processes of the machine) still run first when they have work (0: none).
    "CHILD_NICE": 10,
    # How many times a task that raises is run again (0 = run once).
    "MAX_RETRIES": 3,
    # Backoff before retry n: min(RETRY_BACKOFF * 2**(n-1), RETRY_BACKOFF_MAX)
    # seconds, with up to RETRY_JITTER of it added at random.
    "RETRY_BACKOFF": 1.0,
    "RETRY_BACKOFF_MAX": 600.0,
    "RETRY_JITTER": 0.25,
    # Exception classes (dotted paths) that fail a task at once, never retried.
    "NO_RETRY": [],
    # Default time limit of a task in seconds (None: no limit).
    "TIMEOUT": None,
    # Hard limit of one frame's body in bytes; larger frames are refused.
    "MAX_FRAME": 16 * 1024 * 1024,
    # Send a push made inside transaction.atomic() when the transaction commits.
    "ON_COMMIT": True,
    # What a client does when no broker answers: "database" writes the task row
    # itself (the broker picks it up), "raise" raises BrokerUnavailable.
    "FALLBACK": "database",
    # Seconds a client waits to connect, and for a reply, before giving up.
    "CONNECT_TIMEOUT": 2.0,
    "REPLY_TIMEOUT": 30.0,
    # Seconds a broker waits for a frame that has started before dropping it,
    # and for a silent connection before closing it.
    "FRAME_TIMEOUT": 10.0,
    "IDLE_TIMEOUT": 300.0,
    # Client addresses allowed to connect (empty: any address).
    "ALLOWED_CLIENTS": [],
    # Seconds between sweeps for spooled tasks and orphans of dead brokers.
    "SWEEP_INTERVAL": 2.0,
    # Seconds between broker heartbeats, and after which a silent broker is dead.
    "HEARTBEAT_INTERVAL": 5.0,
    "HEARTBEAT_TIMEOUT": 30.0,
    # Seconds running tasks get to finish after SIGTERM or `leek stop`.
    "SHUTDOWN_GRACE": 30.0,
    # Name of this broker in the database, unique among the brokers sharing it:
    # a broker recovers the unfinished tasks under its name when it starts.
    # Empty: "<this machine's hostname>:<PORT>".
    "NODE_NAME": "",
    # Version of the deployed code, compared between clients and brokers.
    # Empty: read from the environment's LEEK_CODE_VERSION or left unknown.
    "CODE_VERSION": "",
    # SQLite only: synchronous mode of the WAL ("NORMAL", or "FULL" to survive
    # a power cut), set on every connection leek's app sees.
    "SQLITE_SYNCHRONOUS": "NORMAL",
    # Most bytes of a task's stdout and stderr kept for the admin.
    "CAPTURE_LIMIT": 64 * 1024,
    # Dotted paths of callables run as hook(task_id, name, outcome) when a task
    # fails for good; outcome has exc_type, exc_message, traceback, attempt,
    # stdout and stderr.
    "ON_FAILURE": [],
    # Email ADMINS when a task fails for good.
    "NOTIFY_ADMINS_ON_FAILURE": False,
    # Periodic tasks declared in settings.
    "SCHEDULE": {},
    # Most tasks whose payload the broker keeps in memory; past this, workers
    # load payloads from the database as they take tasks.
    "MEMORY_PAYLOADS": 10_000,
    # -- task lifecycle: crash loops --
    # Directory where a broker keeps a small file naming the task each of its
    # workers is running, read at its next start, so that an attempt cut short
    # by the broker's death counts even when its running mark had not reached
    # the database. It must outlive the broker's process (not a private /tmp
    # that a service manager empties at each restart). Empty: leek-<uid> in the
    # system's temporary directory.
    "STATE_DIR": "",
}

#: The synchronous modes SQLite takes (SQLITE_SYNCHRONOUS).
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

_ENV = environ.Env()


def _from_env(key: str, default: Any) -> Any:
    name = f"LEEK_{key}"
    if name not in os.environ:
        return default
    if isinstance(default, bool):
        return _ENV.bool(name)
    if isinstance(default, int):
        return _ENV.int(name)
    if isinstance(default, float) or key == "TIMEOUT":
        return _ENV.float(name)
    if isinstance(default, list):
        return _ENV.list(name)
    if isinstance(default, dict):
        return _ENV.json(name)
    return _ENV.str(name)


@cache
def get_settings() -> dict[str, Any]:
    """The merged settings: defaults, then settings.LEEK, then LEEK_* variables."""
    user = getattr(settings, "LEEK", {}) or {}
    merged = {key: _from_env(key, user.get(key, default)) for key, default in DEFAULTS.items()}
    for key in ("RETRY_BACKOFF", "RETRY_BACKOFF_MAX", "TIMEOUT"):
        if isinstance(merged[key], timedelta):
            merged[key] = merged[key].total_seconds()
    if not merged["SECRET"]:
        merged["SECRET"] = hashlib.sha256(
            b"leek.frame-signing:" + settings.SECRET_KEY.encode()
        ).hexdigest()
    if not merged["CODE_VERSION"]:
        merged["CODE_VERSION"] = os.environ.get("LEEK_CODE_VERSION", "")
    return merged


def node_name(port: int | None = None) -> str:
    """The name of the broker listening on `port` (None: PORT) of this machine.

    NODE_NAME when set, else "<hostname>:<port>": not HOST, as brokers on
    several machines often listen on the same address (0.0.0.0, or 127.0.0.1
    for a broker per web server)."""
    settings = get_settings()
    explicit = str(settings["NODE_NAME"])
    return explicit or f"{socket.gethostname()}:{settings['PORT'] if port is None else port}"


def get(key: str) -> Any:
    """One setting's value."""
    return get_settings()[key]


def sqlite_synchronous() -> str | None:
    """SQLITE_SYNCHRONOUS in upper case, or None when it is not one of
    SYNCHRONOUS_MODES (the system check leek.E003 reports it)."""
    mode = str(get("SQLITE_SYNCHRONOUS")).upper()
    return mode if mode in SYNCHRONOUS_MODES else None


def unknown_keys() -> list[str]:
    """Keys of settings.LEEK that leek does not know (reported by a system check)."""
    return sorted(set(getattr(settings, "LEEK", {}) or {}) - set(DEFAULTS))


def brokers() -> list[tuple[str, int]]:
    """The broker addresses a client tries, in order."""
    conf = get_settings()
    found = [(str(conf["HOST"]), int(conf["PORT"]))]
    for item in conf["BROKERS"]:
        host, _, port = str(item).rpartition(":")
        address = (host or str(conf["HOST"]), int(port))
        if address not in found:
            found.append(address)
    return found


@receiver(setting_changed)
def _reset(**kwargs: Any) -> None:
    if kwargs.get("setting") in ("LEEK", "SECRET_KEY"):
        get_settings.cache_clear()
