"""`manage.py leek ...`: the same verbs as the `leek` command."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from leek.cli import COMMANDS, run


class Command(BaseCommand):
    help = "Start, stop and question the leek broker (see `leek --help`)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        sub = parser.add_subparsers(dest="leek_command", required=True, metavar="COMMAND")
        for name, (help_text, add, _) in COMMANDS.items():
            add(sub.add_parser(name, help=help_text))

    def handle(self, *args: Any, **options: Any) -> None:
        options["command"] = options.pop("leek_command")
        if options["command"] == "start":
            from leek.cli import _add_log_handler

            _add_log_handler()
        status = run(argparse.Namespace(**options))
        if status:
            sys.exit(status)
