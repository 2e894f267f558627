"""The `leek` command finds its Django project as django-admin does, and says
in one paragraph, with exit status 2, when it cannot."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, free_port


def leek(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The `leek` console script run in `cwd`, as a shell user would run it: no
    DJANGO_SETTINGS_MODULE, PYTHONPATH or LEEK_* variable but those in `env`."""
    script = shutil.which("leek", path=str(Path(sys.executable).parent))
    assert script is not None, "the leek console script is not installed next to python"
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH") and not k.startswith("LEEK_")
    }
    return subprocess.run(
        [script, *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bare_leek_in_a_directory_without_settings_says_how_to_name_them_and_exits_2(
    tmp_path: Path,
) -> None:
    done = leek("ping", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert "DJANGO_SETTINGS_MODULE" in done.stderr and "--settings" in done.stderr
    assert "--pythonpath" in done.stderr
    assert "Traceback" not in done.stderr


def test_settings_and_pythonpath_name_a_project_elsewhere(tmp_path: Path) -> None:
    port = free_port()
    args = ("--settings", "tests.settings", "--pythonpath", str(REPO), "ping")
    done = leek(*args, cwd=tmp_path, LEEK_PORT=str(port))
    assert done.returncode == 2, done.stderr
    assert f"no broker answered: tried 127.0.0.1:{port}" in done.stdout
    assert done.stderr == ""


def test_settings_and_pythonpath_also_work_after_the_verb(tmp_path: Path) -> None:
    port = free_port()
    args = ("ping", "--settings=tests.settings", f"--pythonpath={REPO}")
    done = leek(*args, cwd=tmp_path, LEEK_PORT=str(port))
    assert done.returncode == 2, done.stderr
    assert f"no broker answered: tried 127.0.0.1:{port}" in done.stdout


def test_settings_given_before_the_verb_are_kept_when_the_verb_has_options_after_it(
    tmp_path: Path,
) -> None:
    port = free_port()
    args = ("--settings=tests.settings", "ping", f"--pythonpath={REPO}")
    done = leek(*args, cwd=tmp_path, LEEK_PORT=str(port))
    assert f"no broker answered: tried 127.0.0.1:{port}" in done.stdout, done.stderr


def test_the_bundled_settings_module_is_the_default_in_the_repository() -> None:
    port = free_port()
    done = leek("ping", cwd=REPO, LEEK_PORT=str(port))
    assert done.returncode == 2, done.stderr
    assert f"no broker answered: tried 127.0.0.1:{port}" in done.stdout


def test_a_settings_module_that_raises_is_shown_as_its_error_and_line(tmp_path: Path) -> None:
    (tmp_path / "broken_settings.py").write_text('SECRET_KEY = "x"\nDEBUG = undefined_name\n')
    done = leek("--settings", "broken_settings", "ping", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert '"broken_settings" (from --settings) failed to import' in done.stderr
    assert "NameError: name 'undefined_name' is not defined" in done.stderr
    assert f"{tmp_path / 'broken_settings.py'}, line 2" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_settings_module_that_cannot_be_found_names_pythonpath(tmp_path: Path) -> None:
    done = leek("ping", cwd=tmp_path, DJANGO_SETTINGS_MODULE="mysite.settings")
    assert done.returncode == 2
    assert done.stderr == (
        'leek: the settings module "mysite.settings" (from DJANGO_SETTINGS_MODULE) failed '
        "to import: ModuleNotFoundError: No module named 'mysite'. Run leek in the directory "
        "that holds mysite, or give --pythonpath DIR.\n"
    )
