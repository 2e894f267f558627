"""The names `leek` exports: loaded on first use, then found like any attribute."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import leek


@pytest.mark.parametrize("name", sorted(leek._EXPORTS))
def test_each_exported_name_is_its_module_s_object_and_is_kept_once_found(name: str) -> None:
    value = getattr(leek, name)
    assert value is getattr(importlib.import_module(leek._EXPORTS[name]), name)
    assert vars(leek)[name] is value  # the next use skips the module's __getattr__


def test_an_unknown_name_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'push_task'"):
        leek.push_task  # noqa: B018


def test_importing_leek_loads_no_client_until_a_name_is_used() -> None:
    code = (
        "import sys, leek; print('leek.client' in sys.modules); "
        "leek.ping; print('leek.client' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"DJANGO_SETTINGS_MODULE": "tests.settings", "PATH": ""},
    )
    assert done.stdout.split() == ["False", "True"]
