"""leek.calls: management commands run as tasks."""

from __future__ import annotations

import pytest
from django.core.management import CommandError

from leek.calls import run_command


@pytest.mark.django_db  # `check` reads the database on newer Django versions
def test_run_command_returns_and_echoes_the_output(capsys: pytest.CaptureFixture[str]) -> None:
    text = run_command("check", deploy=False)
    assert "System check identified no issues" in text
    assert "System check identified no issues" in capsys.readouterr().out


def test_a_failing_command_raises_its_error() -> None:
    with pytest.raises(CommandError, match="Unknown command"):
        run_command("no_such_command")
    with pytest.raises(TypeError, match="Unknown option"):
        run_command("check", shout=True)
