"""A project that uses leek without "leek" in INSTALLED_APPS is told how to fix it.

Each test runs a small project of its own in a subprocess: settings without
the app, and a `shop` app whose models import a task module, as projects do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from leek.checks import check_installed
from tests.conftest import free_port

SETTINGS = """
SECRET_KEY = "a-project-that-forgot-leek"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "shop"]
DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": {db!r}}}}}
USE_TZ = True
LEEK = {{"PORT": {port}}}
"""

TASKS = """
import leek


@leek.task
def welcome(n: int) -> str:
    return f"welcome, {n}"
"""


def project(tmp_path: Path) -> Path:
    """A project without leek in INSTALLED_APPS; its directory."""
    (tmp_path / "forgetful_settings.py").write_text(
        SETTINGS.format(db=str(tmp_path / "db.sqlite3"), port=free_port())
    )
    shop = tmp_path / "shop"
    shop.mkdir()
    (shop / "__init__.py").write_text("")
    (shop / "tasks.py").write_text(TASKS)
    (shop / "models.py").write_text("from . import tasks  # noqa: F401\n")
    return tmp_path


def run(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python *args` in the project's directory, with its settings and nothing
    of this repository's environment."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH") and not k.startswith("LEEK_")
    }
    return subprocess.run(
        [sys.executable, *args],
        cwd=directory,
        env={**env, "DJANGO_SETTINGS_MODULE": "forgetful_settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )


PUSH = """
import django

django.setup()

from django.core.exceptions import ImproperlyConfigured

from shop.tasks import welcome

try:
    welcome.delay(7)
except ImproperlyConfigured as exc:
    print(type(exc).__name__, exc.__cause__, exc.__context__)
    print(exc)
"""


def test_a_push_without_leek_installed_raises_improperly_configured_naming_the_fix(
    tmp_path: Path,
) -> None:
    done = run(project(tmp_path), "-c", textwrap.dedent(PUSH))
    assert done.returncode == 0, done.stderr
    kind, message = done.stdout.splitlines()
    assert kind == "AppNotInstalled None None"  # one error, nothing chained to it
    assert 'INSTALLED_APPS lacks "leek"' in message
    assert 'add "leek" to INSTALLED_APPS, then run `manage.py migrate`' in message


def test_manage_py_check_reports_leek_missing_from_installed_apps(tmp_path: Path) -> None:
    done = run(project(tmp_path), "-m", "django", "check")
    report = done.stderr
    assert done.returncode == 1
    assert '(leek.E008) INSTALLED_APPS lacks "leek", and this project imports leek.' in report
    assert 'HINT: Add "leek" to INSTALLED_APPS, then run `manage.py migrate`' in report


def test_the_installed_app_check_is_silent_when_installed_apps_lists_leek() -> None:
    assert check_installed() == []


def test_an_app_of_the_project_labelled_leek_is_not_taken_for_leek(tmp_path: Path) -> None:
    directory = project(tmp_path)
    (directory / "shop" / "apps.py").write_text(
        "from django.apps import AppConfig\n\n\n"
        "class ShopConfig(AppConfig):\n"
        '    name = "shop"\n'
        '    label = "leek"\n'
    )
    settings = directory / "forgetful_settings.py"
    settings.write_text(settings.read_text().replace('"shop"]', '"shop.apps.ShopConfig"]'))
    done = run(directory, "-c", textwrap.dedent(PUSH))
    assert done.returncode == 0, done.stderr
    kind, message = done.stdout.splitlines()
    assert kind == "AppNotInstalled None None"
    assert 'INSTALLED_APPS lacks "leek"' in message
