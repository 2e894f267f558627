"""The `leek` command: start, stop and question the broker; repair the queue.

Exit status: 0 healthy, 1 the broker answers but is unhealthy (or rejects this
client's secret), 2 no broker could be reached, or no settings module could be
imported. `--json` prints machine-readable output. Like django-admin, it takes
`--settings` and `--pythonpath`, else DJANGO_SETTINGS_MODULE; with neither, a
module named `settings` (the bundled project's); see `project.py`.

`VERBS` lists every verb once; `leek` and `manage.py leek` both build their
parser from it with `add_verbs`. The handler modules read no Django setting
when imported, so this table imports before django.setup() and `leek --help`
needs no settings.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..exceptions import SettingsUnavailable
from . import broker, cluster, pauses, project, repair, schedule, top
from .output import OK, UNHEALTHY, UNREACHABLE, emit

__all__ = [
    "OK",
    "UNHEALTHY",
    "UNREACHABLE",
    "VERBS",
    "Verb",
    "add_verbs",
    "build_parser",
    "emit",
    "main",
    "run",
]


def no_arguments(parser: argparse.ArgumentParser) -> None:
    """For a verb that takes no options of its own."""


@dataclass(frozen=True, slots=True)
class Verb:
    """One verb of the `leek` command: its name and help, what adds its options,
    and the handler that runs it and returns the exit status."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int]


VERBS = (
    Verb("start", "run the broker in the foreground", broker.add_start_arguments, broker.run_start),
    Verb("stop", "ask the broker to stop gracefully", no_arguments, broker.run_stop),
    Verb(
        "reload",
        "reload the broker gracefully: it lets running tasks finish, then runs the new code",
        broker.add_reload_arguments,
        broker.run_reload,
    ),
    Verb("ping", "is the broker up and healthy?", no_arguments, broker.run_ping),
    Verb("waiting", "how many tasks wait", broker.add_queue_argument, broker.run_waiting),
    Verb(
        "handled",
        "how many tasks the broker handled since it started",
        broker.add_queue_argument,
        broker.run_handled,
    ),
    Verb("stats", "the broker's figures", no_arguments, broker.run_stats),
    Verb(
        "cluster",
        "the brokers sharing the database: workers, heartbeat, tasks owned",
        no_arguments,
        cluster.run_cluster,
    ),
    Verb(
        "top",
        "a live view of the brokers, queues, tasks and failures",
        top.add_top_arguments,
        top.run_top,
    ),
    Verb(
        "retry-failed",
        "requeue the tasks that failed for good and were not retried",
        repair.add_retry_arguments,
        repair.run_retry_failed,
    ),
    Verb(
        "purge",
        "delete old finished tasks, their outcomes, and rows of brokers long gone",
        repair.add_purge_arguments,
        repair.run_purge,
    ),
    Verb(
        "pause",
        "start no task of a queue (pushes are still accepted) until it is resumed",
        pauses.add_queue_name,
        pauses.run_pause,
    ),
    Verb("resume", "start a paused queue's tasks again", pauses.add_queue_name, pauses.run_resume),
    Verb(
        "schedule",
        "the periodic tasks and their next run",
        no_arguments,
        schedule.run_schedule,
    ),
)


def add_verbs(parser: argparse.ArgumentParser, *, project_arguments: bool = False) -> None:
    """Add --json and one subcommand per verb; the parsed options carry the
    verb's name as `command` and the Verb itself as `verb`.

    `project_arguments` lets each verb take --settings and --pythonpath too, as
    the `leek` command does (manage.py has Django's own)."""
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for verb in VERBS:
        child = sub.add_parser(verb.name, help=verb.help, description=verb.help)
        verb.add_arguments(child)
        if verb.name == "start":
            child.add_argument(
                "--skip-checks",
                action="store_true",
                help="start without running Django's system checks first",
            )
        if project_arguments:
            project.add_project_arguments(child, after_verb=True)
        child.set_defaults(verb=verb)


def build_parser(prog: str = "leek") -> argparse.ArgumentParser:
    """The `leek` command's parser."""
    parser = argparse.ArgumentParser(
        prog=prog, description="leek: a durable task broker for Django"
    )
    project.add_project_arguments(parser)
    add_verbs(parser, project_arguments=True)
    return parser


def run(options: argparse.Namespace) -> int:
    """Run the parsed verb and return its exit status; Django must be set up.

    `start` runs Django's system checks first, as manage.py runs them before
    a command, unless --skip-checks: an error refuses the start. The other
    verbs run none, so that a setting the checks refuse does not hide a
    running broker's answer. `start` then logs to stderr when the project
    configured no handler."""
    from .. import conf

    verb: Verb = options.verb
    if verb.name == "start" and _reloading(options) and not _reload_supervisor(options):
        from . import reload

        reload.set_up()  # to its supervisor: a refusal from here on is not an import's
    problem = conf.unreadable()
    if problem:  # a LEEK_* variable that does not read as its setting's type
        sys.stderr.write(f"error: {problem}\n")
        return UNHEALTHY
    if verb.name == "start":
        checks = not options.skip_checks and not _reload_supervisor(options)
        problem = system_check_errors() if checks else None
        if problem:
            sys.stderr.write(f"error: {problem}\n")
            if _reloading(options):  # the broker of --reload: a file may fix it
                from . import reload

                sys.stderr.write("waiting for a file to change to start again\n")
                return reload.wait_for_change()
            return UNHEALTHY
        problem = add_log_handler(getattr(options, "port", None))
        if problem:
            sys.stderr.write(f"error: {problem}\n")
            return UNHEALTHY
    return verb.handler(options)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: sys.argv), set Django up and run the verb.

    Without an importable settings module it writes one paragraph saying so
    to stderr and returns 2, with no traceback."""
    options = build_parser().parse_args(argv)
    try:
        project.find(options)
    except SettingsUnavailable as exc:
        sys.stderr.write(f"leek: {exc}\n")
        return project.NO_SETTINGS
    import django

    django.setup()
    return run(options)


def _reloading(options: argparse.Namespace) -> bool:
    """Whether this `start` runs under --reload (as its supervisor, or as the
    broker the supervisor starts again after each change)."""
    return bool(options.reload or options.force_reload)


def _reload_supervisor(options: argparse.Namespace) -> bool:
    """Whether this `start` is --reload's supervisor: its broker runs the
    checks each time it starts, as runserver's child does."""
    from . import reload

    return _reloading(options) and reload.supervising()


def system_check_errors() -> str | None:
    """Run Django's system checks as manage.py does: warnings go to stderr,
    and errors come back as the report that refuses the verb (None when there
    is none)."""
    from django.core.management.base import BaseCommand, SystemCheckError

    try:
        BaseCommand(stderr=sys.stderr).check()
    except SystemCheckError as exc:
        return str(exc).removeprefix("SystemCheckError: ")
    return None


def add_log_handler(port: int | None = None) -> str | None:
    """Log to stderr, in LOG_FORMAT, when the project configured no handler
    for leek; each record names the broker on `port` (None: PORT) as its node.
    Returns why it cannot (LOG_FORMAT is neither "text" nor "json"), or None."""
    from .. import conf, logs

    leek_logger = logging.getLogger("leek")
    if leek_logger.handlers or logging.getLogger().handlers:
        return None
    log_format = conf.get("LOG_FORMAT")
    if log_format not in logs.FORMATS:
        return f"LEEK['LOG_FORMAT'] is {log_format!r}: use one of {', '.join(logs.FORMATS)}"
    leek_logger.addHandler(logs.handler(log_format, conf.node_name(port)))
    if leek_logger.level == logging.NOTSET:
        leek_logger.setLevel(logging.INFO)
    return None
