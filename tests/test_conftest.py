"""The fixtures' own promises: a broker a test starts is the one it talks to."""

from __future__ import annotations

import pytest

import leek
from tests import conftest
from tests.conftest import BrokerFactory

#: The fixtures' own free_port, before a test replaces it.
_free = conftest.free_port


def test_a_port_another_broker_took_first_is_left_for_another(
    broker_factory: BrokerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between free_port() and its start, another test's broker may take a
    broker's port; the factory then starts it on another port, and never
    hands the test the broker that took it."""
    first = broker_factory()
    ports = iter([first.port])
    monkeypatch.setattr(conftest, "free_port", lambda: next(ports, None) or _free())
    second = broker_factory()
    assert second.port != first.port
    assert "Address already in use" in broker_factory.processes[1].output()
    assert second.proc is not None
    assert leek.stats()[1]["pid"] == second.proc.pid


def test_a_port_given_that_another_broker_holds_fails_the_start(
    broker_factory: BrokerFactory,
) -> None:
    first = broker_factory()
    with pytest.raises(conftest.PortTaken, match="Address already in use"):
        broker_factory(port=first.port)
