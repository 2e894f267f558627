"""The verbs that start the broker, stop it and ask it questions.

`start` runs the broker in this process; the others call a running broker over
the protocol and exit UNREACHABLE when none answers.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ..exceptions import BrokerUnavailable, DatabaseUnavailable, LeekError, NodeNameInUse
from .output import OK, UNHEALTHY, UNREACHABLE, emit

#: Seconds `leek reload --wait` waits by default for the broker's new life.
RELOAD_WAIT = 120.0


def add_start_arguments(parser: argparse.ArgumentParser) -> None:
    """--host, --port, --workers and --pool, each overriding its LEEK setting;
    --queues; --reload and --force-reload."""
    parser.add_argument("--host", help="address to listen on (LEEK_HOST)")
    parser.add_argument("--port", type=int, help="port to listen on (LEEK_PORT)")
    parser.add_argument("--workers", type=int, help="worker threads (LEEK_WORKERS)")
    parser.add_argument(
        "--pool",
        choices=("threads", "processes"),
        help="run tasks on the worker threads or in a process each (LEEK_POOL)",
    )
    parser.add_argument(
        "--queues",
        type=_names,
        help="serve only these queues, comma-separated (default: every queue)",
    )
    parser.add_argument(
        "--reload",
        action="store_true",
        help="start again, after the running tasks, when a Python file changes (needs DEBUG)",
    )
    parser.add_argument(
        "--force-reload",
        action="store_true",
        help="--reload even with DEBUG off",
    )


def _names(text: str) -> list[str]:
    """Queue names from "default,pdfs"."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one queue, such as default,pdfs")
    return names


def add_queue_argument(parser: argparse.ArgumentParser) -> None:
    """--queue: one queue only."""
    parser.add_argument("--queue", help="only this queue")


def _call(options: argparse.Namespace, verb: str, data: Any) -> tuple[int, Any]:
    """The broker's answer to `verb`; on failure, print why and return its exit status."""
    from ..client import connection

    try:
        return OK, connection.call(verb, data)
    except BrokerUnavailable as exc:
        status, message = UNREACHABLE, str(exc)
    except LeekError as exc:  # it answered: an error, or a secret that does not match
        status, message = UNHEALTHY, str(exc)
    emit(options, f"error: {message}", {"ok": False, "error": message})
    return status, None


def run_start(options: argparse.Namespace) -> int:
    """Serve in the foreground until a signal stops the broker; UNHEALTHY if it
    cannot start. With --reload, the broker runs in a child process started
    again after each change (reload.py): UNHEALTHY at once when DEBUG is off and
    the reload is not forced."""
    from .. import conf
    from ..server import metrics
    from ..server.broker import Broker
    from . import reload

    refusal = _exposure_refusal(options) or metrics.refusal()
    if refusal:
        sys.stderr.write(f"error: {refusal}\n")
        return UNHEALTHY
    reloading = options.reload or options.force_reload
    if reloading:
        refusal = reload.refusal(options.force_reload)
        if refusal:
            sys.stderr.write(f"error: {refusal}\n")
            return UNHEALTHY
        if reload.supervising():
            return reload.supervise()
    try:
        broker = Broker(options.host, options.port, options.workers, options.pool, options.queues)
    except OSError as exc:  # the address is taken, or not this machine's
        host = options.host or conf.get("HOST")
        port = conf.get("PORT") if options.port is None else options.port
        where = exc.filename or f"{host}:{port}"
        sys.stderr.write(f"error: cannot listen on {where}: {exc.strerror or exc}\n")
        return UNHEALTHY
    except ValueError as exc:  # a setting that does not read (manage.py check says which)
        sys.stderr.write(f"error: {exc}\n")
        return UNHEALTHY
    broker.install_signals()
    try:
        if not reloading:
            broker.serve()
        elif reload.serve(broker):
            return reload.RELOAD
        if broker.reloads.reason:  # asked to execute itself again, and it could not
            return UNHEALTHY
    except NodeNameInUse as exc:
        sys.stderr.write(f"error: {exc}\n")
        return UNHEALTHY
    except DatabaseUnavailable as exc:
        sys.stderr.write(f"error: database unavailable at start: {exc}\n")
        return UNHEALTHY
    return OK


def _exposure_refusal(options: argparse.Namespace) -> str | None:
    """Why the broker must not start as configured, in one line: a bind beyond
    loopback without a strong explicit secret, or a TLS setting that does not
    load; None when it may start."""
    from .. import conf
    from ..protocol import tls

    host = options.host or str(conf.get("HOST"))
    port = conf.get("PORT") if options.port is None else options.port
    if not conf.is_loopback(host):
        problem = conf.public_secret_problem()
        if problem:
            where = f"{host}:{port}"
            return f"refusing to listen on {where}, beyond loopback: {problem}. {conf.SECRET_HINT}"
    problems = tls.problems(conf.get("TLS"), broker=True)
    if problems:
        return f"LEEK['TLS'] {'; '.join(problems)}"
    return None


def run_stop(options: argparse.Namespace) -> int:
    """Ask the broker to stop gracefully."""
    status, value = _call(options, "stop", {})
    if status == OK:
        emit(options, "broker is stopping", {"ok": True, "message": value})
    return status


def add_reload_arguments(parser: argparse.ArgumentParser) -> None:
    """--wait: until the broker serves again."""
    parser.add_argument(
        "--wait",
        type=float,
        nargs="?",
        const=RELOAD_WAIT,
        metavar="SECONDS",
        help=f"wait until the broker serves again, up to SECONDS ({RELOAD_WAIT:g} by default)",
    )


def run_reload(options: argparse.Namespace) -> int:
    """Ask the broker to reload gracefully (leek/server/reexec.py); with
    --wait, return once its new life answers: UNHEALTHY when it does not in time."""
    before: Any = None
    if options.wait is not None:
        status, before = _call(options, "stats", {})
        if status != OK:
            return status
    status, value = _call(options, "reload", {})
    if status != OK:
        return status
    if before is None or value != "reloading":
        emit(options, f"broker is {value}", {"ok": True, "message": value})
        return OK
    started = _restarted(before["node"], before["started"], options.wait)
    if started is None:
        message = f"the broker did not serve again within {options.wait:g} s"
        emit(options, f"error: {message}", {"ok": False, "error": message})
        return UNHEALTHY
    emit(options, "broker reloaded", {"ok": True, "message": "reloaded", "started": started})
    return OK


def _restarted(node: str, before: float, timeout: float) -> float | None:
    """The start time of the new life of the broker named `node`, once it
    answers; None past `timeout`."""
    from ..client import connection

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stats = connection.call("stats", {})
        except LeekError:  # it is between lives: not listening yet, or refusing
            stats = {}
        if stats.get("node") == node and stats.get("started") != before:
            return float(stats["started"])
        time.sleep(0.1)
    return None


def run_ping(options: argparse.Namespace) -> int:
    """Print the broker's health; UNHEALTHY when it reports a fault."""
    status, value = _call(options, "ping", {})
    if status != OK:
        return status
    emit(options, value["message"], value)
    return OK if value["ok"] else UNHEALTHY


def _count(options: argparse.Namespace, verb: str) -> int:
    status, value = _call(options, verb, {"queue": options.queue})
    if status == OK:
        where = f" in queue {options.queue}" if options.queue else ""
        emit(
            options,
            f"{value} tasks {verb}{where}",
            {"ok": True, verb: value, "queue": options.queue},
        )
    return status


def run_waiting(options: argparse.Namespace) -> int:
    """Print how many tasks wait, in every queue or in --queue."""
    return _count(options, "waiting")


def run_handled(options: argparse.Namespace) -> int:
    """Print how many tasks the broker handled since it started."""
    return _count(options, "handled")


def run_stats(options: argparse.Namespace) -> int:
    """Print the broker's figures; UNHEALTHY when it reports a fault."""
    status, value = _call(options, "stats", {})
    if status != OK:
        return status
    lines = [f"{key}: {value[key]}" for key in sorted(value)]
    emit(options, "\n".join(lines), value)
    return OK if value["healthy"] else UNHEALTHY
