"""What the admin may run: registered tasks, listed commands, allowed periodic paths.

Staff in the admin are not trusted with code. The "Create a task" page pushes a
registered ``@leek.task`` function, or a management command that
``LEEK["ADMIN_COMMANDS"]`` lists; a command in `REFUSED_COMMANDS` (or named
like a shell or a development server) never runs from the admin, listed or not.

A periodic task runs the callable at a dotted path, so its path must be one of:

* the task of the ``LEEK["SCHEDULE"]`` entry of the same name (the site's own
  settings, synced by the broker);
* a registered ``@leek.task`` function;
* ``leek.calls.run_command`` with a command of `admin_commands` as its first
  argument;
* a path that ``LEEK["PERIODIC_ALLOWED"]`` lists, unless it is in a module whose
  functions run their input (`UNSAFE_MODULES`: ``builtins.exec``, ``os.system``).

The admin's form and the broker, before it imports anything, both ask
`periodic_refusal`. A task is registered once its module is imported: the
admin and the broker import the ``tasks`` module of every installed app
(`discover_tasks`); a task defined elsewhere is registered when something
imports its module at start (an AppConfig.ready), or is listed in PERIODIC_ALLOWED.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import conf
from .schedules import parse_entries

if TYPE_CHECKING:
    from .client.decorator import TaskFunction

#: Commands never run from the admin, even when ADMIN_COMMANDS lists them: they
#: execute their input (shells, scripts, test runners, servers), write rows or
#: files from it (fixtures, project templates), or disclose the database or the
#: settings in their output (dumpdata, diffsettings), or manage accounts.
REFUSED_COMMANDS = frozenset(
    {
        "shell",
        "dbshell",
        "runserver",
        "testserver",
        "test",
        "loaddata",
        "dumpdata",
        "diffsettings",
        "createsuperuser",
        "changepassword",
        "startapp",
        "startproject",
        # django-extensions and django-debug-toolbar
        "shell_plus",
        "runscript",
        "runserver_plus",
        "runprofileserver",
        "debugsqlshell",
    }
)
#: The callable a command task runs (leek/calls.py).
RUN_COMMAND = "leek.calls.run_command"
#: Modules whose functions run their input as code or commands: a periodic
#: path in one of them is refused even when PERIODIC_ALLOWED lists it.
UNSAFE_MODULES = (
    "builtins",
    "os",
    "posix",
    "subprocess",
    "importlib",
    "runpy",
    "code",
    "codeop",
    "pickle",
    "marshal",
    "ctypes",
    "pty",
    "shutil",
    "sys",
    "leek.calls",
    "django.core.management",
)


def refused_command(name: str) -> bool:
    """Whether the command `name` never runs from the admin: one of
    REFUSED_COMMANDS, or named like a shell or a development server."""
    return name in REFUSED_COMMANDS or "shell" in name or name.startswith("runserver")


def listed_commands() -> list[str]:
    """LEEK["ADMIN_COMMANDS"] as a list of names (empty when it is not a list
    of strings: the system check leek.E010 reports it)."""
    listed = conf.get("ADMIN_COMMANDS")
    if isinstance(listed, str) or not isinstance(listed, Sequence):
        return []
    return [name for name in listed if isinstance(name, str)]


def admin_commands() -> list[str]:
    """The management commands the admin offers: those ADMIN_COMMANDS lists
    that exist in this project and are not refused, sorted."""
    from django.core.management import get_commands

    known = get_commands()
    return sorted({n for n in listed_commands() if n in known and not refused_command(n)})


def allowed_paths() -> list[str]:
    """LEEK["PERIODIC_ALLOWED"] as a list of dotted paths (empty when it is not
    a list of strings: the system check leek.E010 reports it)."""
    listed = conf.get("PERIODIC_ALLOWED")
    if isinstance(listed, str) or not isinstance(listed, Sequence):
        return []
    return [path for path in listed if isinstance(path, str)]


def unsafe_path(path: str) -> bool:
    """Whether `path` names a callable of UNSAFE_MODULES."""
    return any(path.startswith(f"{module}.") for module in UNSAFE_MODULES)


def discover_tasks() -> None:
    """Import the ``tasks`` module of every installed app, so that the
    ``@leek.task`` functions defined there are registered."""
    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("tasks")


def registered_tasks() -> Mapping[str, TaskFunction[Any, Any]]:
    """Every ``@leek.task`` function registered so far, by dotted path."""
    from .client.decorator import registry

    return registry


def scheduled_tasks() -> dict[str, str]:
    """The task of each valid LEEK["SCHEDULE"] entry, by the entry's name."""
    entries, _ = parse_entries(conf.get("SCHEDULE") or {})
    return {name: values["task"] for name, values in entries.items()}


def periodic_refusal(
    name: str, path: str, args: Sequence[Any] = (), scheduled: Mapping[str, str] | None = None
) -> str:
    """Why the periodic task `name` may not run the callable at `path` with
    `args` first ("" when it may); `scheduled` is `scheduled_tasks()`, read
    again when None. It imports nothing: call `discover_tasks` first for the
    registered tasks of the installed apps."""
    if (scheduled_tasks() if scheduled is None else scheduled).get(name) == path:
        return ""
    if path in registered_tasks():
        return ""
    if path == RUN_COMMAND:
        command = args[0] if args else None
        if isinstance(command, str) and command in admin_commands():
            return ""
        return (
            f"{RUN_COMMAND} runs only the management commands LEEK['ADMIN_COMMANDS'] "
            f"lists, as its first argument; got {command!r}"
        )
    if path in allowed_paths():
        if unsafe_path(path):
            return (
                f"{path} runs its input as code or commands; it is refused even though "
                "LEEK['PERIODIC_ALLOWED'] lists it"
            )
        return ""
    return f"{path} is not a registered @leek.task function nor listed in LEEK['PERIODIC_ALLOWED']"
