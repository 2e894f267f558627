"""The handlers of the `leek` command's verbs (see cli.py for the parser)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .cli import OK, UNHEALTHY, UNREACHABLE, emit
from .exceptions import BrokerUnavailable, DatabaseUnavailable, LeekError, NodeNameInUse


def _call(options: argparse.Namespace, verb: str, data: Any) -> tuple[int, Any]:
    from .client import connection

    try:
        return OK, connection.call(verb, data)
    except BrokerUnavailable as exc:
        status, message = UNREACHABLE, str(exc)
    except LeekError as exc:  # it answered: an error, or a secret that does not match
        status, message = UNHEALTHY, str(exc)
    emit(options, f"error: {message}", {"ok": False, "error": message})
    return status, None


def run_start(options: argparse.Namespace) -> int:
    from . import conf
    from .server.broker import Broker

    try:
        broker = Broker(options.host, options.port, options.workers)
    except OSError as exc:  # the address is taken, or not this machine's
        host = options.host or conf.get("HOST")
        port = conf.get("PORT") if options.port is None else options.port
        sys.stderr.write(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}\n")
        return UNHEALTHY
    broker.install_signals()
    try:
        broker.serve()
    except NodeNameInUse as exc:
        sys.stderr.write(f"error: {exc}\n")
        return UNHEALTHY
    except DatabaseUnavailable as exc:
        sys.stderr.write(f"error: database unavailable at start: {exc}\n")
        return UNHEALTHY
    return OK


def run_stop(options: argparse.Namespace) -> int:
    status, value = _call(options, "stop", {})
    if status == OK:
        emit(options, "broker is stopping", {"ok": True, "message": value})
    return status


def run_ping(options: argparse.Namespace) -> int:
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
    return _count(options, "waiting")


def run_handled(options: argparse.Namespace) -> int:
    return _count(options, "handled")


def run_stats(options: argparse.Namespace) -> int:
    status, value = _call(options, "stats", {})
    if status != OK:
        return status
    lines = [f"{key}: {value[key]}" for key in sorted(value)]
    emit(options, "\n".join(lines), value)
    return OK if value["healthy"] else UNHEALTHY


def run_retry_failed(options: argparse.Namespace) -> int:
    from .repair import retry_failed

    try:
        count = retry_failed(queue=options.queue, since=options.since, dry_run=options.dry_run)
    except (LeekError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return UNHEALTHY
    verb = "would requeue" if options.dry_run else "requeued"
    emit(
        options,
        f"{verb} {count} failed tasks",
        {"ok": True, "count": count, "dry_run": options.dry_run},
    )
    return OK


def run_purge(options: argparse.Namespace) -> int:
    from .repair import forget_brokers, purge

    try:
        count = purge(options.older_than, statuses=options.status, dry_run=options.dry_run)
        brokers = forget_brokers(options.older_than, dry_run=options.dry_run)
    except (LeekError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return UNHEALTHY
    verb = "would delete" if options.dry_run else "deleted"
    emit(
        options,
        f"{verb} {count} tasks and {brokers} rows of gone brokers",
        {"ok": True, "count": count, "brokers": brokers, "dry_run": options.dry_run},
    )
    return OK
