"""The Django project the `leek` command serves, found as django-admin finds one.

The settings module is `--settings`, else DJANGO_SETTINGS_MODULE, else a
module named `settings` (the bundled project's, at the repository's root).
The current directory goes first on sys.path, as manage.py puts its own, and
`--pythonpath DIR` before it. `manage.py leek` needs none of this: Django's
own --settings and --pythonpath serve it.

A project that cannot be found, or whose settings module fails to import, is
a SettingsUnavailable whose message is one paragraph for the user: what was
tried and how to name the project, never a chained traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from ..exceptions import SettingsUnavailable

#: The module used when neither --settings nor DJANGO_SETTINGS_MODULE names one.
DEFAULT = "settings"
#: The exit status when no settings module imports, as for a bad command line.
NO_SETTINGS = 2


def add_project_arguments(parser: argparse.ArgumentParser, *, after_verb: bool = False) -> None:
    """Add --settings and --pythonpath. After a verb they default to nothing at
    all, so that they do not undo the same options given before it."""
    default = argparse.SUPPRESS if after_verb else None
    parser.add_argument(
        "--settings",
        metavar="MODULE",
        default=default,
        help='the settings module, e.g. "mysite.settings" '
        f'(default: DJANGO_SETTINGS_MODULE, else "{DEFAULT}")',
    )
    parser.add_argument(
        "--pythonpath",
        metavar="DIR",
        default=default,
        help='a directory to put first on the Python path, e.g. "/srv/mysite"',
    )


def find(options: argparse.Namespace) -> str:
    """Put the project's directories on sys.path, import its settings module
    and name it in DJANGO_SETTINGS_MODULE (worker processes inherit it);
    returns its name.

    Raises SettingsUnavailable when no module is named and none called
    `settings` is importable, or when the named one fails to import."""
    sys.path.insert(0, os.getcwd())
    if options.pythonpath:
        sys.path.insert(0, os.path.abspath(options.pythonpath))
    module: str
    if options.settings:
        module, source = options.settings, "--settings"
    elif os.environ.get("DJANGO_SETTINGS_MODULE"):
        module, source = os.environ["DJANGO_SETTINGS_MODULE"], "DJANGO_SETTINGS_MODULE"
    else:
        module, source = DEFAULT, ""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if not source and exc.name == DEFAULT:
            raise SettingsUnavailable(
                f"no Django settings: DJANGO_SETTINGS_MODULE is not set and no module "
                f'"{DEFAULT}" is importable from {os.getcwd()}. Give --settings mysite.settings '
                "(with --pythonpath DIR when the project lives elsewhere), set "
                "DJANGO_SETTINGS_MODULE=mysite.settings, or run leek in the directory that "
                f"holds a {DEFAULT} module."
            ) from None
        raise _failed(module, source, exc) from None
    except Exception as exc:
        raise _failed(module, source, exc) from None
    os.environ["DJANGO_SETTINGS_MODULE"] = module
    return module


def _failed(module: str, source: str, exc: Exception) -> SettingsUnavailable:
    """The error for a settings module that raised `exc` on import: the error
    itself, and where in the settings it was raised."""
    given = f"(from {source})" if source else "(the default)"
    text = f'the settings module "{module}" {given} failed to import: '
    text += f"{type(exc).__name__}: {exc}"
    top = module.partition(".")[0]
    if isinstance(exc, ModuleNotFoundError) and exc.name in (module, top):
        return SettingsUnavailable(
            f"{text}. Run leek in the directory that holds {top}, or give --pythonpath DIR."
        )
    if not isinstance(exc, SyntaxError):  # its message already names the file and line
        where = _where(module, exc)
        if where:
            text += f" ({where})"
    return SettingsUnavailable(text)


def _where(module: str, exc: Exception) -> str:
    """The line of the settings module that raised `exc`, else the last line of
    Python that did; "" when no frame is plain Python."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename[:1] != "<"]
    if not frames:
        return ""
    stem = os.sep + module.replace(".", os.sep)
    ours = [f for f in frames if f.filename.endswith(stem + ".py") or stem + os.sep in f.filename]
    frame = (ours or frames)[-1]
    return f"{frame.filename}, line {frame.lineno}"
