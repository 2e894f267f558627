"""The system checks of the push path's settings, as `manage.py check` runs them."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import checks

# Django 6 runs the model checks of JSONField against the database (its features).
pytestmark = pytest.mark.django_db


def messages(settings: Any, code: str, **leek: Any) -> list[str]:
    settings.LEEK = leek
    return [m.msg for m in checks.run_checks() if m.id == code]


@pytest.mark.parametrize("value", [0, -5, "60", None, True])
def test_a_replay_window_that_is_not_a_positive_number_is_an_error(
    settings: Any, value: Any
) -> None:
    assert messages(settings, "leek.E012", REPLAY_WINDOW=value) == [
        f"LEEK['REPLAY_WINDOW'] must be a number of seconds greater than zero, got {value!r}."
    ]


def test_a_write_wait_of_zero_is_an_error(settings: Any) -> None:
    [message] = messages(settings, "leek.E012", WRITE_WAIT=0)
    assert "WRITE_WAIT" in message


def test_an_unknown_atomic_push_mode_is_an_error(settings: Any) -> None:
    assert messages(settings, "leek.E012", ATOMIC_PUSH="outbox ") == [
        "LEEK['ATOMIC_PUSH'] is 'outbox '."
    ]


def test_accept_unsigned_rows_must_be_a_boolean(settings: Any) -> None:
    [message] = messages(settings, "leek.E012", ACCEPT_UNSIGNED_ROWS="no")
    assert "True or False, got 'no'" in message


@pytest.mark.parametrize("key", ["BROKER_BACKOFF", "BROKER_BACKOFF_MAX"])
@pytest.mark.parametrize("value", [0, -1.0, "5", None, False])
def test_a_broker_backoff_that_is_not_a_positive_number_is_an_error(
    settings: Any, key: str, value: Any
) -> None:
    assert messages(settings, "leek.E012", **{key: value}) == [
        f"LEEK[{key!r}] must be a number of seconds greater than zero, got {value!r}."
    ]


def test_a_broker_backoff_longer_than_its_maximum_is_an_error(settings: Any) -> None:
    assert messages(settings, "leek.E012", BROKER_BACKOFF=10, BROKER_BACKOFF_MAX=5.0) == [
        "LEEK['BROKER_BACKOFF'] (10) is greater than LEEK['BROKER_BACKOFF_MAX'] (5.0)."
    ]


def test_spread_must_be_a_boolean(settings: Any) -> None:
    [message] = messages(settings, "leek.E012", SPREAD="yes")
    assert "LEEK['SPREAD'] must be True or False, got 'yes'" in message


def test_too_few_replay_nonces_is_an_error(settings: Any) -> None:
    [message] = messages(settings, "leek.E002", REPLAY_NONCES=0)
    assert "REPLAY_NONCES" in message


def test_the_defaults_and_good_values_pass(settings: Any) -> None:
    assert messages(settings, "leek.E012") == []
    good = {"REPLAY_WINDOW": 5, "WRITE_WAIT": 2.5, "ATOMIC_PUSH": "outbox", "SPREAD": False}
    good |= {"BROKER_BACKOFF": 1, "BROKER_BACKOFF_MAX": 1.0}
    assert messages(settings, "leek.E012", ACCEPT_UNSIGNED_ROWS=True, **good) == []


@pytest.mark.parametrize("key", ["HEARTBEAT_INTERVAL", "HEARTBEAT_TIMEOUT"])
@pytest.mark.parametrize("value", [0, -1.0, "5", None, True])
def test_a_heartbeat_setting_that_is_not_a_positive_number_is_an_error(
    settings: Any, key: str, value: Any
) -> None:
    assert messages(settings, "leek.E015", **{key: value}) == [
        f"LEEK[{key!r}] must be a number of seconds greater than zero, got {value!r}."
    ]


def test_a_heartbeat_interval_more_than_half_the_timeout_is_an_error(settings: Any) -> None:
    assert messages(settings, "leek.E015", HEARTBEAT_INTERVAL=20, HEARTBEAT_TIMEOUT=30.0) == [
        "LEEK['HEARTBEAT_INTERVAL'] (20) is more than half of LEEK['HEARTBEAT_TIMEOUT'] (30.0)."
    ]
    assert messages(settings, "leek.E015", HEARTBEAT_INTERVAL=15, HEARTBEAT_TIMEOUT=30) == []
    assert messages(settings, "leek.E015") == []  # the defaults, 5 and 30


@pytest.mark.parametrize("value", [-0.001, 0.5, "0.0003", None, True])
def test_a_spin_that_is_not_seconds_from_zero_to_the_most_is_an_error(
    settings: Any, value: Any
) -> None:
    assert messages(settings, "leek.E017", SPIN=value) == [
        f"LEEK['SPIN'] must be a number of seconds from 0 to 0.01, got {value!r}."
    ]
    for fine in (0, 0.0003, 0.01):
        assert messages(settings, "leek.E017", SPIN=fine) == []


@pytest.mark.parametrize("value", [0, -0.001, 0.5, "0.0002", None, True])
def test_a_switch_interval_that_is_not_seconds_above_zero_is_an_error(
    settings: Any, value: Any
) -> None:
    assert messages(settings, "leek.E018", SWITCH_INTERVAL=value) == [
        "LEEK['SWITCH_INTERVAL'] must be a number of seconds above 0 and at most 0.1, "
        f"got {value!r}."
    ]
    for fine in (0.0001, 0.0002, 0.005, 0.1):
        assert messages(settings, "leek.E018", SWITCH_INTERVAL=fine) == []


@pytest.mark.parametrize("key", ["SHUTDOWN_GRACE", "SHUTDOWN_TIMEOUT"])
@pytest.mark.parametrize("value", [-1, "30", None, True])
def test_shutdown_seconds_that_are_not_a_number_are_an_error(
    settings: Any, key: str, value: Any
) -> None:
    assert messages(settings, "leek.E020", **{key: value}) == [
        f"LEEK[{key!r}] must be a number of seconds, 0 or more, got {value!r}."
    ]


def test_a_shutdown_timeout_within_the_grace_is_an_error(settings: Any) -> None:
    for grace, timeout in ((30, 30), (30, 20), (0, 0)):
        [message] = messages(settings, "leek.E020", SHUTDOWN_GRACE=grace, SHUTDOWN_TIMEOUT=timeout)
        assert message == (
            f"LEEK['SHUTDOWN_TIMEOUT'] ({timeout!r}) is not more than "
            f"LEEK['SHUTDOWN_GRACE'] ({grace!r})."
        )
    for fine in ((30, 40), (0, 0.5), (5, 20)):
        assert (
            messages(settings, "leek.E020", SHUTDOWN_GRACE=fine[0], SHUTDOWN_TIMEOUT=fine[1]) == []
        )
    assert messages(settings, "leek.E020") == []  # the defaults


def test_a_leek_variable_that_does_not_read_is_an_error_and_the_only_one(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEEK_HEARTBEAT_INTERVAL", "5s")
    settings.LEEK = {"SPIN": "not checked: the settings cannot be read"}
    found = [(m.id, m.msg) for m in checks.run_checks() if (m.id or "").startswith("leek.")]
    assert found == [("leek.E021", "LEEK_HEARTBEAT_INTERVAL='5s' is not a number.")]


def test_process_start_must_be_forkserver_or_spawn(settings: Any) -> None:
    assert messages(settings, "leek.E019", PROCESS_START="fork") == [
        "LEEK['PROCESS_START'] is 'fork'."
    ]
    for fine in ("forkserver", "spawn"):
        assert messages(settings, "leek.E019", PROCESS_START=fine) == []


@pytest.mark.parametrize("value", [0, -5, "60", None, True])
def test_a_process_start_timeout_that_is_not_seconds_above_zero_is_an_error(
    settings: Any, value: Any
) -> None:
    assert messages(settings, "leek.E019", PROCESS_START_TIMEOUT=value) == [
        f"LEEK['PROCESS_START_TIMEOUT'] must be seconds above 0, got {value!r}."
    ]
    for fine in (0.5, 60):
        assert messages(settings, "leek.E019", PROCESS_START_TIMEOUT=fine) == []


def test_reload_on_new_code_must_be_a_boolean(settings: Any) -> None:
    assert messages(settings, "leek.E016", RELOAD_ON_NEW_CODE="yes") == [
        "LEEK['RELOAD_ON_NEW_CODE'] must be True or False, got 'yes'."
    ]
    assert messages(settings, "leek.E016", RELOAD_ON_NEW_CODE=True, CODE_VERSION="A") == []


def test_reload_on_new_code_without_a_code_version_is_a_warning(settings: Any) -> None:
    [message] = messages(settings, "leek.W016", RELOAD_ON_NEW_CODE=True)
    assert "CODE_VERSION is empty" in message
    assert messages(settings, "leek.W016", RELOAD_ON_NEW_CODE=True, CODE_VERSION="A") == []


@pytest.mark.parametrize("value", [-1, "4", 2.5, None])
def test_a_prefetch_that_is_not_a_whole_number_of_at_least_zero_is_an_error(
    settings: Any, value: Any
) -> None:
    assert messages(settings, "leek.E002", PREFETCH=value) == [
        f"LEEK['PREFETCH'] must be a whole number of at least 0, got {value!r}."
    ]


def test_a_lane_with_a_bad_prefetch_is_an_error(settings: Any) -> None:
    [message] = messages(settings, "leek.E007", QUEUES={"pdfs": {"prefetch": -2}})
    assert "has prefetch -2, not a whole number of at least 0" in message


def test_a_prefetch_of_zero_and_a_lane_of_its_own_pass(settings: Any) -> None:
    queues = {"pdfs": {"workers": 2, "prefetch": 8}}
    assert messages(settings, "leek.E002", PREFETCH=0, QUEUES=queues) == []
    assert messages(settings, "leek.E007", PREFETCH=0, QUEUES=queues) == []
