"""Every leek setting with its default, read once.

Settings come from the ``LEEK`` dict in Django settings; any key can be
overridden from the environment as ``LEEK_<KEY>`` (parsed by django-environ to
the default's type). The merged result is cached and reset when Django's
``setting_changed`` signal fires (``override_settings`` in tests).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import socket
from collections.abc import Callable
from datetime import timedelta
from functools import cache
from typing import Any

import environ
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

#: Each default with a note on what it does.
DEFAULTS: dict[str, Any] = {
    # Address the broker listens on, and the address clients connect to.
    "HOST": "127.0.0.1",
    "PORT": 8002,
    # More brokers a client sends to, as "host:port" strings, besides HOST:PORT.
    # Every verb but a push tries HOST:PORT first, then these in order.
    "BROKERS": [],
    # Spread pushes over HOST:PORT and BROKERS: each thread connects to the next
    # healthy broker in turn and keeps it while it works. False: pushes try
    # HOST:PORT first, then BROKERS in order, as the other verbs do.
    "SPREAD": True,
    # Seconds every thread of a process skips a broker that failed a push
    # (refused, reset, timed out, could not commit), doubled at each failure
    # that follows, up to BROKER_BACKOFF_MAX (leek/client/spread.py).
    "BROKER_BACKOFF": 5.0,
    "BROKER_BACKOFF_MAX": 60.0,
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
    # shares the default lane of WORKERS workers in POOL. "rate_limit": "30/m"
    # limits the starts of the queue's tasks across every broker sharing the
    # database (leek/ratelimit.py); none by default.
    "QUEUES": {},
    # processes pool: tasks a worker process runs before a fresh one replaces
    # it, and the resident memory in MiB past which it is replaced after its
    # task (0: no limit).
    "MAX_TASKS_PER_CHILD": 0,
    "MAX_MEMORY_PER_CHILD": 0,
    # processes pool: niceness added to each worker process, so that while
    # tasks keep every core busy the broker's threads still run first when they
    # have work (0: none). It counts within the broker's group of processes (its
    # service's cgroup, else its session): the kernel shares the cores between
    # groups first, so the database's and the web server's processes are weighed
    # against the whole group (CPUWeight= in a systemd unit).
    "CHILD_NICE": 10,
    # processes pool: how a worker process starts. "forkserver": forked, in
    # milliseconds, from a process that set Django up once; "spawn": a fresh
    # interpreter that sets Django up itself, for settings or apps that start
    # threads at import (a fork does not carry them over).
    "PROCESS_START": "forkserver",
    # processes pool: seconds a worker process has to start and say it is
    # ready (its Django setup, or the forkserver's, included).
    "PROCESS_START_TIMEOUT": 60.0,
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
    # Seconds a client waits for a reply, a broker for a connection's next
    # request and for PostgreSQL's answer to a push's insert (on PostgreSQL,
    # after a push only while none of its tasks runs), polling the socket
    # before the thread sleeps on it: waking a sleeping thread costs more
    # than a short reply takes (tens of microseconds, more on a virtual
    # machine). Only while that wait's recent ones were shorter than this,
    # and one thread of a process at a time (leek/protocol/spin.py). 0:
    # always sleep.
    "SPIN": 0.0003,
    # Seconds a broker's thread may hold the interpreter lock while another
    # waits for it (sys.setswitchinterval; Python's default is 0.005). Worker
    # threads running Python code hold it that long each time a connection's
    # push needs it back, and a push needs it back a few dozen times.
    "SWITCH_INTERVAL": 0.0002,
    # Client addresses allowed to connect (empty: any address).
    "ALLOWED_CLIENTS": [],
    # Seconds between sweeps for spooled tasks and orphans of dead brokers.
    "SWEEP_INTERVAL": 2.0,
    # Seconds between broker heartbeats, and after which a silent broker is dead;
    # the interval at most half the timeout (leek.E015).
    "HEARTBEAT_INTERVAL": 5.0,
    "HEARTBEAT_TIMEOUT": 30.0,
    # Seconds running tasks get to finish after SIGTERM, `leek stop` or a reload.
    "SHUTDOWN_GRACE": 30.0,
    # Seconds a stop may take in all, its grace included: past them the broker
    # logs each thread's stack and exits at once, status 1 (server/deadline.py).
    "SHUTDOWN_TIMEOUT": 40.0,
    # Name of this broker in the database, unique among the brokers sharing it:
    # a broker recovers the unfinished tasks under its name when it starts.
    # Empty: "<this machine's hostname>:<PORT>".
    "NODE_NAME": "",
    # Version of the deployed code, compared between clients and brokers.
    # Empty: read from the environment's LEEK_CODE_VERSION or left unknown.
    "CODE_VERSION": "",
    # A broker that receives tasks from clients of another CODE_VERSION reloads
    # itself gracefully, as on SIGHUP, once per version (leek/server/reexec.py).
    # False: it logs the difference and shows it in `leek stats` and the admin.
    "RELOAD_ON_NEW_CODE": False,
    # SQLite only: synchronous mode of the WAL ("NORMAL", or "FULL" to survive
    # a power cut), set on every connection leek's app sees.
    "SQLITE_SYNCHRONOUS": "NORMAL",
    # Most bytes of a task's stdout and stderr kept for the admin.
    "CAPTURE_LIMIT": 64 * 1024,
    # What `leek start` writes to stderr when the project configured no log
    # handler: "text" lines, or "json", one object per line (leek.logs).
    "LOG_FORMAT": "text",
    # Dotted paths of callables run as hook(task_id, name, outcome) when a task
    # fails for good; outcome has exc_type, exc_message, traceback, attempt,
    # stdout and stderr.
    "ON_FAILURE": [],
    # Email ADMINS when a task fails for good.
    "NOTIFY_ADMINS_ON_FAILURE": False,
    # Periodic tasks declared in settings.
    "SCHEDULE": {},
    # Tasks per worker a lane keeps waiting in memory, ready to start: its
    # bound is PREFETCH times its workers ("prefetch" in a lane of QUEUES
    # sets the bound itself). A push that finds its lane at the bound is
    # committed owned by no broker, and the first broker with room in that
    # queue claims it (leek/server/share.py), so idle brokers on the same
    # database take work that any broker accepted. The bound applies while
    # another live broker with workers shares the database; a broker alone
    # keeps every task. 0: no bound, every task a broker accepts waits on it.
    "PREFETCH": 4,
    # Most tasks whose payload the broker keeps in memory; past this, workers
    # load payloads from the database as they take tasks.
    "MEMORY_PAYLOADS": 10_000,
    # Most delayed tasks (retries waiting for their backoff included) whose
    # payload the broker keeps in memory, the soonest due; the others' are
    # loaded from the database when they are due.
    "MEMORY_DELAYED": 1000,
    # What staff may run from the admin (leek/allowlist.py).
    # Management commands the admin's "Create a task" page offers, by name
    # (e.g. ["check", "clearsessions"]); shells, servers and the like are
    # refused even when listed.
    "ADMIN_COMMANDS": [],
    # Dotted paths of callables a periodic task may run besides registered
    # @leek.task functions and the entries of SCHEDULE.
    "PERIODIC_ALLOWED": [],
    # -- signed rows: payloads and results at rest --
    # Load a task payload or result blob that carries no signature (rows
    # written before leek signed them) instead of failing its task, and log
    # it to leek.security. Only for an upgrade's window while older web
    # processes still push or spool tasks; it lets whoever can write a row run
    # code, so turn it off again. A blob with a signature that does not match
    # is refused either way.
    "ACCEPT_UNSIGNED_ROWS": False,
    # -- The client keeps every push --
    # How a push made inside transaction.atomic() reaches the broker (with
    # ON_COMMIT): "on_commit" sends it once the transaction has committed;
    # "outbox" writes its task row in the transaction itself, so the task
    # exists if and only if the transaction commits, and wakes a broker after
    # the commit. The outbox needs leek's models on the atomic block's database.
    "ATOMIC_PUSH": "on_commit",
    # The frame format:
    # Seconds a request frame's stamp may be from the broker's clock, either
    # way. The broker also refuses frames stamped before it started and
    # frames whose nonce it has seen within the window.
    "REPLAY_WINDOW": 60.0,
    # Most nonces a broker remembers (about 120 bytes each); past it, it
    # forgets the oldest and refuses every frame stamped before them.
    "REPLAY_NONCES": 500_000,
    # -- store errors: a write the broker waits for --
    # Seconds the broker's own waits for a write last (a sweep's claim, a
    # periodic run's claim, a cancel) before it goes on without the result; a
    # write that commits later still counts: its tasks run, its cancel holds.
    "WRITE_WAIT": 30.0,
    # -- exposure on the network --
    # TLS on every connection between clients and brokers (empty: plain TCP).
    # Broker: "cert" (PEM chain) and "key"; with "require_client_cert": True it
    # takes only clients whose certificate "ca" signed. Client: "ca" to verify
    # the broker with (absent: the system's CAs), "server_name" the name its
    # certificate must carry (absent: the host connected to, IP addresses
    # included), "client_cert" and "client_key" for mutual TLS.
    "TLS": {},
    # Most client connections a broker holds at once; fewer when its descriptor
    # limit leaves less room (a reserve stays free for the database). Past it a
    # new connection is closed at once, unless an unauthenticated one can go.
    "MAX_CONNECTIONS": 1000,
    # Most connections that have not sent a valid frame yet. A new connection
    # past it, or past MAX_CONNECTIONS, closes the oldest of them, so idle or
    # slow strangers never lock out a client; authenticated ones keep their place.
    "MAX_UNAUTHENTICATED": 128,
    # Seconds a new connection has to send its first valid frame (TLS handshake
    # included) before it is closed.
    "FIRST_FRAME_TIMEOUT": 5.0,
    # -- task lifecycle: crash loops --
    # Directory where a broker keeps a small file naming the task each of its
    # workers is running, read at its next start, so that an attempt cut short
    # by the broker's death counts even when its running mark had not reached
    # the database. It must outlive the broker's process (not a private /tmp
    # that a service manager empties at each restart). Empty: leek-<uid> in the
    # system's temporary directory.
    "STATE_DIR": "",
    # -- operating --
    # "host:port" where the broker serves its Prometheus metrics page
    # (/metrics), e.g. "127.0.0.1:9808"; needs the prometheus_client package
    # (pip install leek[metrics]). The page has no authentication: keep it on
    # loopback or a private network. Empty: no metrics, nothing listens.
    "METRICS": "",
}

#: The SECRET_KEY the bundled settings (settings/) fall back to. A broker that
#: listens beyond loopback refuses a LEEK secret that is it, or derived from it.
DEVELOPMENT_SECRET_KEY = "leek-insecure-development-key-change-me"  # noqa: S105
#: Bytes a LEEK secret needs before a broker listens beyond loopback.
PUBLIC_SECRET_BYTES = 32
#: One line that prints a good secret.
SECRET_COMMAND = 'python -c "import secrets; print(secrets.token_urlsafe(48))"'  # noqa: S105
#: What to do about a secret unfit for a public bind (leek start and leek.E009).
SECRET_HINT = (
    f"Set LEEK_SECRET (LEEK['SECRET']) to {PUBLIC_SECRET_BYTES} bytes or more, the same "
    f"for the broker and its clients, e.g. the output of: {SECRET_COMMAND}"
)

#: The synchronous modes SQLite takes (SQLITE_SYNCHRONOUS).
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
#: The ways a push inside transaction.atomic() can go (ATOMIC_PUSH).
ATOMIC_PUSHES = ("on_commit", "outbox")

_ENV = environ.Env()


#: How a LEEK_* variable is read, and what it must be, by the type of its
#: setting's default.
_READERS: dict[type, tuple[Callable[[str], Any], str]] = {
    int: (int, "a whole number"),
    float: (float, "a number"),
    list: (lambda raw: environ.Env.parse_value(raw, list), "a comma-separated list"),
    dict: (json.loads, "JSON"),
}
#: The words a LEEK_* variable of a True or False setting may say, either case.
TRUE_WORDS = frozenset({"1", "true", "yes", "on", "y"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", "n", ""})


def _from_env(key: str, default: Any) -> Any:
    """LEEK_<key> read as the type of its default; ValueError naming the
    variable and what it should be when it does not read so."""
    name = f"LEEK_{key}"
    if name not in os.environ:
        return default
    raw = os.environ[name]
    if isinstance(default, bool):
        word = raw.strip().lower()
        if word not in TRUE_WORDS | FALSE_WORDS:
            raise ValueError(f"{name}={raw!r} is not true or false (1/0, true/false, yes/no)")
        return word in TRUE_WORDS
    reader = _READERS.get(float if key == "TIMEOUT" else type(default))
    if reader is None:
        return _ENV.str(name)
    read, kind = reader
    try:
        return read(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not {kind}") from None


def unreadable() -> str | None:
    """Why the settings cannot be read (a LEEK_* variable that does not read
    as its setting's type), in one line; None when they can."""
    try:
        get_settings()
    except ValueError as exc:
        return str(exc)
    return None


@cache
def get_settings() -> dict[str, Any]:
    """The merged settings: defaults, then settings.LEEK, then LEEK_* variables."""
    user = getattr(settings, "LEEK", {}) or {}
    merged = {key: _from_env(key, user.get(key, default)) for key, default in DEFAULTS.items()}
    for key in ("RETRY_BACKOFF", "RETRY_BACKOFF_MAX", "TIMEOUT"):
        if isinstance(merged[key], timedelta):
            merged[key] = merged[key].total_seconds()
    if not merged["SECRET"]:
        merged["SECRET"] = derived_secret(settings.SECRET_KEY)
    if not merged["CODE_VERSION"]:
        merged["CODE_VERSION"] = os.environ.get("LEEK_CODE_VERSION", "")
    return merged


def derived_secret(secret_key: str) -> str:
    """The LEEK secret of a project that sets none: derived from its SECRET_KEY."""
    return hashlib.sha256(b"leek.frame-signing:" + secret_key.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    """True for an address only this machine reaches: 127.0.0.0/8, ::1, localhost."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, or "" for every interface
        return False


def public_secret_problem() -> str | None:
    """Why the LEEK secret is unfit for a broker reachable beyond loopback, or None.

    It must be set explicitly (LEEK["SECRET"] or LEEK_SECRET), be at least
    PUBLIC_SECRET_BYTES long, and be neither the bundled development
    SECRET_KEY nor the secret derived from it."""
    user = getattr(settings, "LEEK", {}) or {}
    explicit = str(_from_env("SECRET", user.get("SECRET", "")) or "")
    if not explicit:
        return "LEEK_SECRET is not set, so frames are signed with a key derived from SECRET_KEY"
    size = len(explicit.encode())
    if size < PUBLIC_SECRET_BYTES:
        return f"LEEK_SECRET is {size} bytes long, fewer than {PUBLIC_SECRET_BYTES}"
    if explicit in (DEVELOPMENT_SECRET_KEY, derived_secret(DEVELOPMENT_SECRET_KEY)):
        return "LEEK_SECRET is the bundled development key, or derived from it"
    return None


def node_name(port: int | None = None) -> str:
    """The name of the broker listening on `port` (None: PORT) of this machine.

    NODE_NAME when set, else "<hostname>:<port>": not HOST, as brokers on
    several machines often listen on the same address (0.0.0.0, or 127.0.0.1
    for a broker per web server)."""
    settings = get_settings()
    explicit = str(settings["NODE_NAME"])
    return explicit or f"{socket.gethostname()}:{settings['PORT'] if port is None else port}"


def metrics_address(value: str) -> tuple[str, int]:
    """The (host, port) of a METRICS value such as "127.0.0.1:9808" or
    "[::1]:9808"; ValueError naming what is wrong."""
    host, colon, port = str(value).strip().rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f'LEEK["METRICS"] must be "host:port" with a port from 1 to 65535, got {value!r}'
        )
    return host, int(port)


def get(key: str) -> Any:
    """One setting's value."""
    return get_settings()[key]


def sqlite_synchronous() -> str | None:
    """SQLITE_SYNCHRONOUS in upper case, or None when it is not one of
    SYNCHRONOUS_MODES (the system check leek.E003 reports it)."""
    mode = str(get("SQLITE_SYNCHRONOUS")).upper()
    return mode if mode in SYNCHRONOUS_MODES else None


def atomic_push() -> str:
    """ATOMIC_PUSH; ImproperlyConfigured when it is not one of ATOMIC_PUSHES."""
    mode = str(get("ATOMIC_PUSH"))
    if mode not in ATOMIC_PUSHES:
        raise ImproperlyConfigured(
            f'LEEK["ATOMIC_PUSH"] must be one of {", ".join(map(repr, ATOMIC_PUSHES))}, '
            f"got {mode!r}"
        )
    return mode


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
