"""Bounded before authentication: strangers cannot exhaust a real broker.

Connections that have sent no valid frame wait without a thread, for
FIRST_FRAME_TIMEOUT at most, and make room for newcomers; authenticated ones
keep their place; the broker serves on through a lack of descriptors.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

import leek
from leek import conf
from leek.protocol.frame import Keys, encode
from leek.protocol.sockets import FrameSocket
from tests import tasks
from tests.conftest import BrokerProcess, proc_stat, wait_for

#: Idle connections the broker must shrug off.
IDLE = 2000


def status(pid: int, field: str) -> int:
    """A number from /proc/<pid>/status: VmRSS in kB, Threads."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_ticks(pid: int) -> int:
    """User and system time of the process, in clock ticks."""
    fields = proc_stat(pid)
    return int(fields[11]) + int(fields[12])


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def pid_of(broker: BrokerProcess) -> int:
    assert broker.proc is not None
    return broker.proc.pid


def figures() -> dict[str, int]:
    ok, stats = leek.stats()
    assert ok, stats
    return dict(stats["connections"])


def trusted(port: int) -> FrameSocket:
    """A connection that has sent a valid frame (a ping) and read its answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    frames = FrameSocket(sock, Keys.client(str(conf.get("SECRET")).encode()), 1 << 20, 10.0)
    frames.write((1, "ping", {}))
    frame = frames.read()
    assert frame is not None and frame.message == (1, True, {"ok": True, "message": "I'm OK"})
    return frames


def ping_on(frames: FrameSocket) -> Any:
    frames.write((2, "ping", {}))
    frame = frames.read()
    return None if frame is None else frame.message


def figures_on(frames: FrameSocket) -> dict[str, int]:
    """The broker's connection figures, asked on `frames`."""
    frames.write((3, "stats", {}))
    frame = frames.read()
    assert frame is not None and frame.message[1], frame
    return dict(frame.message[2]["connections"])


def accepted(numbers: dict[str, int]) -> int:
    """The connections the broker has accepted, besides the authenticated ones."""
    return numbers["unauthenticated"] + numbers["evicted"] + numbers["refused"]


def new_client() -> None:
    """The test's client drops its connection: its next call connects anew."""
    from leek.client import connection

    connection.close()


def closed_by_broker(sock: socket.socket, within: float = 10.0) -> bool:
    """True when the broker closes `sock` within `within` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def strangers(port: int, count: int, patient: bool = False) -> list[socket.socket]:
    """Up to `count` idle connections. Once the broker's backlog takes no more,
    stop; or, `patient`, give each up to 5 s and go on past the failures."""
    opened = []
    for _ in range(count):
        sock = socket.socket()
        sock.settimeout(5.0 if patient else 1.0)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            sock.close()
            if patient:
                continue
            break
        opened.append(sock)
    return opened


@pytest.fixture
def fresh_client(leek_settings: Any) -> Iterator[None]:
    """The test's client connects anew, and gives up after a second."""
    from leek.client import connection

    connection.close()
    leek_settings(CONNECT_TIMEOUT=1.0, REPLY_TIMEOUT=1.0, FALLBACK="raise")
    yield
    connection.close()


@pytest.fixture
def descriptors_for_idle() -> Iterator[None]:
    """Room for IDLE sockets in this process (and the brokers it starts)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = IDLE + 512
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE's hard limit is {hard}; {IDLE} idle connections need {need}")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_silent_connection_is_closed_after_the_first_frame_timeout(
    broker_factory: Any,
) -> None:
    broker = broker_factory(LEEK_FIRST_FRAME_TIMEOUT="0.5")
    with socket.create_connection(("127.0.0.1", broker.port)) as sock:
        assert closed_by_broker(sock)  # not IDLE_TIMEOUT (300 s) later
    wait_for(lambda: figures()["expired"] == 1)


def test_a_first_frame_sent_a_byte_at_a_time_is_closed_at_the_deadline(
    broker_factory: Any,
) -> None:
    broker = broker_factory(LEEK_FIRST_FRAME_TIMEOUT="0.5", LEEK_FRAME_TIMEOUT="60")
    frame = encode(Keys.client(str(conf.get("SECRET")).encode()).send, (1, "ping", {}))
    with socket.create_connection(("127.0.0.1", broker.port)) as sock:
        deadline = time.monotonic() + 10
        with contextlib.suppress(OSError):
            for byte in frame[:-1]:  # never the last one
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
                if time.monotonic() > deadline:
                    break
        assert closed_by_broker(sock, within=0.1)  # closed long before FRAME_TIMEOUT


def test_an_authenticated_connection_outlives_the_first_frame_timeout(
    broker_factory: Any,
) -> None:
    broker = broker_factory(LEEK_FIRST_FRAME_TIMEOUT="0.3")
    frames = trusted(broker.port)
    time.sleep(1.0)  # well past the first-frame deadline
    assert ping_on(frames) == (2, True, {"ok": True, "message": "I'm OK"})
    frames.close()


@pytest.mark.parametrize(
    "caps",
    [{}, {"LEEK_MAX_CONNECTIONS": "5000", "LEEK_MAX_UNAUTHENTICATED": "5000"}],
    ids=["default caps: strangers make room", "caps above: strangers held without threads"],
)
def test_two_thousand_idle_connections_do_not_stop_a_ping(
    broker_factory: Any, fresh_client: None, descriptors_for_idle: None, caps: dict[str, str]
) -> None:
    broker = broker_factory(LEEK_FIRST_FRAME_TIMEOUT="120", **caps)
    pid = pid_of(broker)
    old = trusted(broker.port)
    rss_before, threads_before = status(pid, "VmRSS"), status(pid, "Threads")
    idle = strangers(broker.port, IDLE, patient=True)
    try:
        assert len(idle) >= IDLE * 0.9
        wait_for(lambda: accepted(figures_on(old)) >= len(idle))
        new_client()
        assert leek.ping() == (True, "I'm OK")  # a new client, answered within its second
        assert ping_on(old)[1] is True  # the authenticated connection kept its place
        rss_after, threads_after = status(pid, "VmRSS"), status(pid, "Threads")
        held = figures()["unauthenticated"]
        assert held == (len(idle) if caps else 128 - 1)  # less the newest client's
    finally:
        for sock in idle:
            sock.close()
        old.close()
    assert threads_after - threads_before < 50, (threads_before, threads_after)
    growth = (rss_after - rss_before) / 1024
    assert growth < 64, f"RSS grew {growth:.1f} MiB for {len(idle)} idle connections"
    print(f"rss before={rss_before} kB after={rss_after} kB threads={threads_after}")  # noqa: T201


def test_strangers_make_room_for_a_client_and_the_authenticated_keep_theirs(
    broker_factory: Any, fresh_client: None
) -> None:
    broker = broker_factory(LEEK_MAX_CONNECTIONS="4", LEEK_FIRST_FRAME_TIMEOUT="60")
    new_client()
    kept = [trusted(broker.port) for _ in range(3)]
    wait_for(lambda: figures_on(kept[0])["open"] == 3)  # the first client's has gone
    idle = [socket.create_connection(("127.0.0.1", broker.port)) for _ in range(10)]
    try:
        assert all(closed_by_broker(sock) for sock in idle[:-1])  # the oldest went first
        assert leek.ping() == (True, "I'm OK")  # a new client takes the last idle one's place
        assert closed_by_broker(idle[-1])
        assert all(ping_on(frames)[1] for frames in kept)
        numbers = figures()
        assert (numbers["refused"], numbers["evicted"], numbers["authenticated"]) == (0, 10, 4)
    finally:
        for sock in idle:
            sock.close()
        for frames in kept:
            frames.close()


def test_a_full_broker_of_authenticated_connections_refuses_politely(
    broker_factory: Any,
) -> None:
    broker = broker_factory(LEEK_MAX_CONNECTIONS="20")
    pid = pid_of(broker)
    threads_before = status(pid, "Threads")
    kept = [trusted(broker.port) for _ in range(19)]  # and the test client's: 20
    threads_full = status(pid, "Threads")
    try:
        for _ in range(30):
            with socket.create_connection(("127.0.0.1", broker.port)) as sock:
                assert closed_by_broker(sock, within=5)  # at once, not at a deadline
        assert all(ping_on(frames)[1] for frames in kept)
        numbers = figures()
        assert (numbers["refused"], numbers["open"], numbers["authenticated"]) == (30, 20, 20)
        assert status(pid, "Threads") <= threads_full  # no thread for the refused
        assert threads_full - threads_before <= 19 + 2  # a thread per connection held
    finally:
        for frames in kept:
            frames.close()
    wait_for(lambda: "connection refused" in broker.output())
    assert broker.output().count("connection refused") == 1  # once per interval, with its count


def test_out_of_descriptors_the_broker_serves_its_connections_and_recovers(
    broker_factory: Any, fresh_client: None
) -> None:
    from leek.server.admission import LOG_INTERVAL

    broker = broker_factory(LEEK_FIRST_FRAME_TIMEOUT="60")
    pid = pid_of(broker)
    old = trusted(broker.port)
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    # Below what it has open: every accept fails (EMFILE), whatever room it keeps.
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (descriptors(pid) - 1, hard))
    started = time.monotonic()
    flood = strangers(broker.port, 300)
    try:
        wait_for(lambda: "cannot accept connections" in broker.output())
        cpu = cpu_ticks(pid)
        assert ping_on(old)[1] is True  # the open connection is served
        time.sleep(1.0)
        spent = cpu_ticks(pid) - cpu
        assert spent < 0.5 * os.sysconf("SC_CLK_TCK"), f"{spent} ticks in a second: spinning"
    finally:
        for sock in flood:
            sock.close()
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    new_client()
    wait_for(lambda: leek.ping()[0])  # once the backlog the flood left is accepted and gone
    assert leek.push_task_to_queue(tasks.add, 1, 2).result(timeout=10) == 3
    assert ping_on(old)[1] is True
    logged = broker.output().count("cannot accept connections")
    assert 1 <= logged <= 1 + (time.monotonic() - started) // LOG_INTERVAL
    assert figures()["accept_failures"] > logged
    old.close()


def test_at_a_low_descriptor_limit_the_broker_keeps_a_reserve(
    broker_factory: Any, fresh_client: None
) -> None:
    from leek.server.admission import CLOSING, RESERVE

    broker = broker_factory(LEEK_FIRST_FRAME_TIMEOUT="60", LEEK_MAX_UNAUTHENTICATED="1000")
    pid = pid_of(broker)
    old = trusted(broker.port)
    limit = descriptors(pid) + RESERVE + 40
    _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))
    wait_for(lambda: figures_on(old)["limit"] < 100)  # measured within a second
    flood = strangers(broker.port, 300)
    try:
        # The whole flood accepted: a newcomer amid it may be refused while the
        # strangers made to leave wait to be closed (CLOSING).
        wait_for(lambda: accepted(figures_on(old)) >= len(flood))
        assert figures_on(old)["evicted"] > 0
        assert limit - descriptors(pid) >= RESERVE - CLOSING - 2  # the reserve stays free
        assert ping_on(old)[1] is True
        new_client()
        handle = leek.push_task_to_queue(tasks.add, 2, 2)  # a new client makes its way in
        assert handle.result(timeout=10) == 4
        assert "cannot accept connections" not in broker.output()
    finally:
        for sock in flood:
            sock.close()
        old.close()


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="needs a database reached over a socket"
)
def test_near_its_descriptor_limit_the_broker_reconnects_to_its_database(
    broker_factory: Any, fresh_client: None
) -> None:
    from leek.server.admission import RESERVE

    broker = broker_factory(
        LEEK_FIRST_FRAME_TIMEOUT="60",
        LEEK_MAX_UNAUTHENTICATED="1000",
        LEEK_HEARTBEAT_INTERVAL="0.2",
    )
    pid = pid_of(broker)
    old = trusted(broker.port)
    limit = descriptors(pid) + RESERVE + 40
    _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))
    wait_for(lambda: figures_on(old)["limit"] < 100)
    flood = strangers(broker.port, 300)
    try:
        wait_for(lambda: figures_on(old)["evicted"] > 0)  # every place is taken
        with connection.cursor() as cursor:  # every connection of the broker's is cut
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            assert cursor.fetchone()[0] > 0
        wait_for(lambda: "closed by the database, reconnecting" in broker.output())
        wait_for(lambda: ping_on(old)[2]["ok"], timeout=30)  # reconnected from the reserve
        new_client()
        assert leek.push_task_to_queue(tasks.add, 4, 4).result(timeout=10) == 8
        assert "cannot accept connections" not in broker.output()
    finally:
        for sock in flood:
            sock.close()
        old.close()
