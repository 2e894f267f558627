"""The verb table: one list of verbs behind `leek`, `manage.py leek` and the old imports."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from leek.cli import VERBS, repair
from tests.conftest import REPO, broker_env, free_port

NAMES = [
    "start",
    "stop",
    "reload",
    "ping",
    "waiting",
    "handled",
    "stats",
    "cluster",
    "top",
    "retry-failed",
    "purge",
    "pause",
    "resume",
    "schedule",
]


def listed_verbs(help_text: str) -> list[str]:
    """The verbs an argparse --help lists under COMMAND, in order."""
    return re.findall(r"^    (\S+)", help_text, re.MULTILINE)


def test_the_verb_table_lists_every_verb_once() -> None:
    assert [verb.name for verb in VERBS] == NAMES


def test_leek_help_lists_every_verb_without_django_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
    done = subprocess.run(
        [sys.executable, "-m", "leek.cli", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert listed_verbs(done.stdout) == NAMES


def test_manage_py_leek_help_offers_the_same_verbs() -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", "leek", "--help"],
        cwd=REPO,
        env=broker_env(free_port()),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert listed_verbs(done.stdout) == NAMES


def test_the_leek_script_pinging_no_broker_exits_2() -> None:
    script = shutil.which("leek", path=str(Path(sys.executable).parent))
    assert script is not None, "the leek console script is not installed next to python"
    port = free_port()
    done = subprocess.run(
        [script, "ping"], cwd=REPO, env=broker_env(port), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert f"127.0.0.1:{port}" in done.stdout


@pytest.mark.parametrize("args", [("--queues", ","), ("--pool", "forks")])
def test_leek_start_refuses_a_bad_queue_list_or_pool_before_it_starts(
    args: tuple[str, ...],
) -> None:
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "leek.cli", "start", *args],
        cwd=REPO,
        env=broker_env(port),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert ("name at least one queue" if args[0] == "--queues" else "invalid choice") in done.stderr


def test_importing_leek_repair_warns_and_gives_the_functions_of_leek_cli_repair(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "leek.repair", raising=False)
    with pytest.warns(DeprecationWarning, match="leek.cli.repair"):
        old = importlib.import_module("leek.repair")
    assert (old.requeue, old.retry_failed, old.purge, old.forget_brokers) == (
        repair.requeue,
        repair.retry_failed,
        repair.purge,
        repair.forget_brokers,
    )


def leek_run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`leek ARGS` with LEEK_* `env` on top of a broker's, as a shell user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "leek.cli", *args],
        cwd=REPO,
        env={**broker_env(free_port()), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("LEEK_SHUTDOWN_TIMEOUT", "abc", "LEEK_SHUTDOWN_TIMEOUT='abc' is not a number"),
        ("LEEK_WORKERS", "2.5", "LEEK_WORKERS='2.5' is not a whole number"),
        ("LEEK_SPREAD", "maybe", "LEEK_SPREAD='maybe' is not true or false"),
        ("LEEK_SCHEDULE", "{not json", "LEEK_SCHEDULE='{not json' is not JSON"),
    ],
)
@pytest.mark.parametrize("verb", ["start", "ping"])
def test_a_leek_variable_that_does_not_read_is_named_and_nothing_starts(
    verb: str, variable: str, value: str, said: str
) -> None:
    done = leek_run(verb, **{variable: value})
    assert done.returncode == 1, done.stderr
    assert said in done.stderr
    assert "Traceback" not in done.stderr
