"""The fixtures' own promises: a broker a test starts is the one it talks to,
and it starts without compiling leek again."""

from __future__ import annotations

from pathlib import Path

import pytest

import leek
from tests import conftest
from tests.conftest import BrokerFactory, wait_for

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


def test_a_free_port_lies_below_the_ports_outgoing_connections_take() -> None:
    # A connection's own port comes from the ephemeral range: one there could
    # be taken between a broker's SIGKILL and its restart on the same port.
    low = conftest.ephemeral_low()
    ports = {_free() for _ in range(20)}
    assert all(conftest.LISTEN_LOW <= port < low for port in ports)
    assert len(ports) > 1


def test_a_port_given_that_another_broker_holds_fails_the_start(
    broker_factory: BrokerFactory,
) -> None:
    first = broker_factory()
    with pytest.raises(conftest.PortTaken, match="Address already in use"):
        broker_factory(port=first.port)


def test_the_processes_the_tests_start_keep_bytecode_caches(
    broker_factory: BrokerFactory,
) -> None:
    """Where the environment turns bytecode caches off, a broker the tests
    start would compile leek's modules again at each start."""
    broker = broker_factory()
    assert broker.proc is not None
    environ = Path(f"/proc/{broker.proc.pid}/environ").read_bytes().split(b"\0")
    assert not [v for v in environ if v.startswith(b"PYTHONDONTWRITEBYTECODE=")]
    assert (conftest.REPO / "leek" / "server" / "__pycache__").is_dir()


def test_wait_for_a_value_says_the_value_it_last_got() -> None:
    answers = iter([(True, 5), (True, 6)])
    assert wait_for(lambda: next(answers), equals=(True, 6), interval=0) == (True, 6)
    with pytest.raises(AssertionError, match=r"not \(True, 6\) within .* last gave \(True, 5\)"):
        wait_for(lambda: (True, 5), timeout=0.05, equals=(True, 6))
    with pytest.raises(AssertionError, match="not true within .* last gave 0"):
        wait_for(lambda: 0, timeout=0.05)
