"""A broker beyond loopback needs an explicit, strong secret: `leek start` and leek.E009."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest
from django.core import checks

import leek
from leek import conf
from tests import tasks
from tests.conftest import REPO, broker_env, free_port

GOOD = "k2JxXo9mJp0cVbXr5p2QhQ0y1mS7Yb0wTq6rD3eF8gH"  # 43 bytes, as secrets.token_urlsafe(32)


def start(host: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`leek start --host HOST`, for a broker that refuses to start."""
    return subprocess.run(
        [sys.executable, "-m", "leek.cli", "start", "--host", host],
        cwd=REPO,
        env={**broker_env(free_port()), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def refusal(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # one line, no traceback
    assert "LEEK_SECRET" in lines[0]
    assert conf.SECRET_COMMAND in lines[0]
    return lines[0]


def test_all_interfaces_without_a_secret_is_refused() -> None:
    line = refusal(start("0.0.0.0"))
    assert "not set" in line and "0.0.0.0" in line


def test_a_short_secret_is_refused() -> None:
    line = refusal(start("0.0.0.0", LEEK_SECRET="x" * 31))
    assert "31 bytes" in line


@pytest.mark.parametrize(
    "secret",
    [conf.DEVELOPMENT_SECRET_KEY, conf.derived_secret(conf.DEVELOPMENT_SECRET_KEY)],
    ids=["the key", "derived from it"],
)
def test_the_bundled_development_key_is_refused(secret: str) -> None:
    assert "development key" in refusal(start("0.0.0.0", LEEK_SECRET=secret))


def test_a_host_name_is_not_loopback() -> None:
    refusal(start("example.invalid"))


def test_the_bundled_settings_fall_back_to_the_development_key_leek_knows() -> None:
    source = (REPO / "settings" / "__init__.py").read_text()
    match = re.search(r'SECRET_KEY = env\.str\("SECRET_KEY", default="([^"]+)"\)', source)
    assert match is not None
    assert match.group(1) == conf.DEVELOPMENT_SECRET_KEY


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_loopback_addresses(host: str) -> None:
    assert conf.is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "10.0.0.5", "example.invalid"])
def test_addresses_beyond_loopback(host: str) -> None:
    assert not conf.is_loopback(host)


def test_a_good_explicit_secret_starts_on_all_interfaces(
    broker_factory: Any, leek_settings: Any
) -> None:
    leek_settings(SECRET=GOOD)
    broker = broker_factory(args=("--host", "0.0.0.0"), LEEK_SECRET=GOOD)
    assert leek.push_task_to_queue(tasks.add, 2, 3).result(timeout=10) == 5
    assert "refusing" not in broker.output()


def test_loopback_needs_no_secret(broker_factory: Any) -> None:
    broker_factory(args=("--host", "127.0.0.1"))
    assert leek.ping() == (True, "I'm OK")


def errors_of(settings: Any, **leek: Any) -> list[checks.CheckMessage]:
    settings.LEEK = leek
    from leek.checks import check_settings

    return [e for e in check_settings() if e.id == "leek.E009"]


def test_the_check_says_the_same(settings: Any) -> None:
    (error,) = errors_of(settings, HOST="0.0.0.0")
    assert "LEEK_SECRET is not set" in error.msg
    assert error.hint is not None and conf.SECRET_COMMAND in error.hint
    (error,) = errors_of(settings, HOST="0.0.0.0", SECRET="short")
    assert "5 bytes" in error.msg
    (error,) = errors_of(settings, HOST="10.1.2.3", SECRET=conf.DEVELOPMENT_SECRET_KEY)
    assert "development key" in error.msg
    assert errors_of(settings, HOST="0.0.0.0", SECRET=GOOD) == []
    assert errors_of(settings, HOST="127.0.0.1") == []


def test_the_check_reads_the_secret_from_the_environment(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEEK_SECRET", GOOD)
    assert errors_of(settings, HOST="0.0.0.0") == []
    monkeypatch.setenv("LEEK_SECRET", "short")
    assert len(errors_of(settings, HOST="0.0.0.0")) == 1
