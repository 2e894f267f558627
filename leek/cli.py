"""The `leek` command: start, stop and question the broker; repair the queue.

Exit status: 0 healthy, 1 the broker answers but is unhealthy (or rejects this
client's secret), 2 no broker could be reached. `--json` prints machine-readable
output. Like manage.py, it puts the current directory on sys.path and uses
DJANGO_SETTINGS_MODULE, defaulting to the bundled `settings`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

OK, UNHEALTHY, UNREACHABLE = 0, 1, 2

Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], str]] = {}


def command(
    name: str, help: str, module: str = "leek.commands"
) -> Callable[
    [Callable[[argparse.ArgumentParser], None]], Callable[[argparse.ArgumentParser], None]
]:  # noqa: A002, E501
    """Register a subcommand: the decorated function adds its arguments; the
    handler is `run_<name>` in `module`."""

    def register(
        add_arguments: Callable[[argparse.ArgumentParser], None],
    ) -> Callable[[argparse.ArgumentParser], None]:  # noqa: E501
        COMMANDS[name] = (help, add_arguments, module)
        return add_arguments

    return register


def _queue(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue", help="only this queue")


def _none(parser: argparse.ArgumentParser) -> None:
    return None


def _start(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (LEEK_HOST)")
    parser.add_argument("--port", type=int, help="port to listen on (LEEK_PORT)")
    parser.add_argument("--workers", type=int, help="worker threads (LEEK_WORKERS)")


def _retry(parser: argparse.ArgumentParser) -> None:
    _queue(parser)
    parser.add_argument("--since", help="only failures newer than this: 2h, 3d, 2026-01-31")
    parser.add_argument("--dry-run", action="store_true", help="say what would run, change nothing")


def _purge(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--older-than", required=True, help="age such as 30d, 12h, 90m")
    parser.add_argument(
        "--status",
        action="append",
        help="only this status (repeatable); default: every finished status",
    )
    parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")


command("start", "run the broker in the foreground")(_start)
command("stop", "ask the broker to stop gracefully")(_none)
command("ping", "is the broker up and healthy?")(_none)
command("waiting", "how many tasks wait")(_queue)
command("handled", "how many tasks the broker handled since it started")(_queue)
command("stats", "the broker's figures")(_none)
command("retry-failed", "requeue the tasks that failed for good and were not retried")(_retry)
command("purge", "delete old finished tasks, their outcomes, and rows of brokers long gone")(_purge)
command("schedule", "the periodic tasks and their next run", module="leek.schedule_cli")(_none)


def build_parser(prog: str = "leek") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="leek: a durable task broker for Django"
    )
    add_common(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(child)
    return parser


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(options: argparse.Namespace) -> int:
    """Run a parsed command; Django must be set up."""
    import importlib

    name = options.command
    module = importlib.import_module(COMMANDS[name][2])
    handler: Command = getattr(module, "run_" + name.replace("-", "_"))
    return handler(options)


def emit(options: argparse.Namespace, text: str, data: Any) -> None:
    """Print a readable line, or JSON with --json."""
    out = json.dumps(data, default=str, sort_keys=True) if options.json else text
    sys.stdout.write(out + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    sys.path.insert(0, os.getcwd())
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
    import django

    django.setup()
    if options.command == "start":
        _add_log_handler()
    return run(options)


def _add_log_handler() -> None:
    """Log to stderr when the project configured no handler for leek."""
    leek_logger = logging.getLogger("leek")
    if leek_logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    leek_logger.addHandler(handler)
    if leek_logger.level == logging.NOTSET:
        leek_logger.setLevel(logging.INFO)


if __name__ == "__main__":
    sys.exit(main())
