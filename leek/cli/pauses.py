"""`leek pause QUEUE` and `leek resume QUEUE`: stored in the database, obeyed by
every broker sharing it within about a second (leek/queues.py)."""

from __future__ import annotations

import argparse
import getpass
import socket
import sys

from .output import OK, UNHEALTHY, emit


def add_queue_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("queue", help="the queue's name")


def _who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in this environment
        user = "?"
    return f"{user}@{socket.gethostname()}"


def run_pause(options: argparse.Namespace) -> int:
    """Pause the queue: its tasks are accepted and wait until it is resumed."""
    from .. import queues

    try:
        changed = queues.pause(options.queue, _who())
    except ValueError as exc:
        sys.stderr.write(f"leek: {exc}\n")
        return UNHEALTHY
    said = "paused" if changed else "was paused already"
    emit(options, f"queue {options.queue} {said}", {"queue": options.queue, "changed": changed})
    return OK


def run_resume(options: argparse.Namespace) -> int:
    """Resume the queue: its waiting tasks start again."""
    from .. import queues

    try:
        changed = queues.resume(options.queue, _who())
    except ValueError as exc:
        sys.stderr.write(f"leek: {exc}\n")
        return UNHEALTHY
    said = "resumed" if changed else "was not paused"
    emit(options, f"queue {options.queue} {said}", {"queue": options.queue, "changed": changed})
    return OK
