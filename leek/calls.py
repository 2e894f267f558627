"""The callables leek pushes as tasks itself, pickled by reference in stored rows.

`run_command` is what the admin's "Create a task" page pushes for a management
command; `run_path` is what every periodic run executes. Both are looked up by
their dotted path when a worker unpickles a payload, so they never move without
an alias at their old path (leek/commands_task.py, leek/server/periodic.py).
"""

from __future__ import annotations

import io
import sys
from typing import Any

from django.core.management import call_command
from django.utils.module_loading import import_string


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


def run_path(path: str, *args: Any, **kwargs: Any) -> Any:
    """Import the callable at `path` and call it: what a periodic run executes.

    Importing at run time makes a wrong path a visible task failure."""
    target = import_string(path)
    if callable(target):
        return target(*args, **kwargs)
    if hasattr(target, "func") and hasattr(target, "takes_context"):  # a tasks-framework Task
        from .backends import TaskCall

        return TaskCall(path, str(target.backend), bool(target.takes_context))(*args, **kwargs)
    raise TypeError(f"{path} is a {type(target).__name__}, not a callable")
