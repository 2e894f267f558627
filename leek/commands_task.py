"""Django management commands as tasks: what the admin pushes when someone
picks a command rather than a task function."""

from __future__ import annotations

import io
import sys
from typing import Any

from django.core.management import call_command


def run_command(name: str, *args: Any, **options: Any) -> str:
    """Run the management command `name` with these arguments and options, as
    `call_command` would, and return what it wrote to stdout.

    Its stdout and stderr are also written to the worker's streams, so the
    broker keeps them with the task's outcome. A command that fails raises, and
    the task fails with its error (CommandError, unknown options: TypeError).
    """
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(name, *args, stdout=out, stderr=err, **options)
    finally:
        sys.stdout.write(out.getvalue())
        sys.stderr.write(err.getvalue())
    return out.getvalue()
