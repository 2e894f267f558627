"""`manage.py leek ...`: the same verbs as the `leek` command."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from leek.cli import add_verbs, run


class Command(BaseCommand):
    help = "Start, stop and question the leek broker (see `leek --help`)."
    # Django's system checks: `start` runs them itself (leek.cli.run), the
    # other verbs none, so that a running broker answers `ping` whatever the
    # checks would say of the settings.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        add_verbs(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        status = run(argparse.Namespace(**options))
        if status:
            sys.exit(status)
