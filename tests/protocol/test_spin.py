"""The spin: a thread polls its socket for a reply due within microseconds
before it sleeps on it, and sleeps at once while replies come slower, or while
another connection of its process is busy.

The peer is a process of its own on 127.0.0.1, as a broker is for a client."""

from __future__ import annotations

import itertools
import operator
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection as db

from leek.protocol.frame import Keys
from leek.protocol.sockets import FrameSocket

from ..conftest import BOTH_POOLS, BrokerFactory, wait_for

SECRET = b"s" * 32
#: A peer that answers every request frame, after `delay` seconds, in one
#: write or (`split`) in two, 20 ms apart.
PEER = """
import socket, sys, time
from leek.protocol.frame import Keys, encode, read_frame
delay, split = float(sys.argv[1]), sys.argv[2] == "1"
keys = Keys.broker(b"s" * 32)
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
conn, _ = server.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
stream = conn.makefile("rb")
while (frame := read_frame(stream, keys.receive, 1 << 20)) is not None:
    if delay:
        time.sleep(delay)
    reply = encode(keys.send, (frame.message[0], True, "pong"), frame.nonce)
    if split:
        conn.sendall(reply[:20])
        time.sleep(0.02)
        reply = reply[20:]
    conn.sendall(reply)
"""

Connect = Callable[..., FrameSocket]


@pytest.fixture
def peer() -> Iterator[Connect]:
    """Connects a client FrameSocket to a new answering process."""
    processes: list[subprocess.Popen[str]] = []
    sockets: list[socket.socket] = []

    def connect(spin: float, delay: float = 0.0, split: bool = False) -> FrameSocket:
        process = subprocess.Popen(
            [sys.executable, "-c", PEER, str(delay), "1" if split else "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        assert process.stdout is not None
        port = int(process.stdout.readline())
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sockets.append(sock)
        return FrameSocket(sock, Keys.client(SECRET), 1 << 20, timeout=10, spin=spin)

    yield connect
    for sock in sockets:
        sock.close()
    for process in processes:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def at_least(count: int, more: Callable[[], int], rounds: int) -> int:
    """`more()` added up until it reaches `count`, called at most `rounds`
    times. On a loaded host (the suite's other processes starting brokers)
    some frames or answers come later than the spin, and the waits after them
    sleep until they come sooner again: over more requests the waits that
    polled add up."""
    total = 0
    for _ in range(rounds):
        if total >= count:
            break
        total += more()
    return total


def grew_over(figure: Callable[[dict[str, Any]], int], pushes: int) -> int:
    """How much a figure of the broker's stats grew over `pushes` pushes of
    tasks due in an hour (which run nothing meanwhile)."""
    import leek

    before = figure(leek.stats()[1])
    for _ in range(pushes):
        leek.enqueue(operator.add, (1, 2), delay=3600)
    return int(figure(leek.stats()[1]) - before)


def ask(frames: FrameSocket, request_id: int) -> None:
    nonce = frames.write((request_id, "ping", {}))
    reply = frames.read()
    assert reply is not None
    assert reply.message == (request_id, True, "pong")
    assert reply.nonce == nonce


def test_a_reply_that_comes_within_the_spin_is_read_without_sleeping(peer: Connect) -> None:
    frames = peer(spin=0.01)
    for request_id in range(1, 51):
        ask(frames, request_id)
    # A reply later than 10 ms (a loaded host) makes the next few sleep; most spin.
    assert frames.spun >= 10, (frames.spins, frames.spun)


def test_no_spin_no_polling(peer: Connect) -> None:
    frames = peer(spin=0.0)
    for request_id in range(1, 21):
        ask(frames, request_id)
    assert (frames.spins, frames.spun) == (0, 0)


def test_replies_slower_than_the_spin_are_waited_for_asleep(peer: Connect) -> None:
    frames = peer(spin=0.001, delay=0.03)
    for request_id in range(1, 11):
        ask(frames, request_id)
    # The first wait spins (nothing was known of the peer) and finds nothing;
    # from then on the waits of 30 ms keep the thread from spinning.
    assert frames.spun == 0
    assert frames.spins <= 1


def test_a_frame_that_arrives_in_two_parts_is_read_whole(peer: Connect) -> None:
    frames = peer(spin=0.005, split=True)
    for request_id in range(1, 6):
        ask(frames, request_id)
    assert frames.spun >= 1  # the first part of a reply, at least once


def test_a_connection_does_not_spin_while_another_of_its_process_is_busy(
    peer: Connect,
) -> None:
    one, other = peer(spin=0.01), peer(spin=0.01)
    for request_id in range(1, 21):  # in turns: each reads just after the other did
        ask(one, request_id)
        ask(other, request_id)
    # Of 40 reads, one may spin where its thread was held up past the window.
    assert one.spins + other.spins <= 5, (one.spins, other.spins)
    request_ids = itertools.count(21)

    def hundred() -> int:  # one alone, once the other is quiet
        before = one.spun
        for _ in range(100):
            ask(one, next(request_ids))
        return one.spun - before

    assert at_least(10, hundred, rounds=5) >= 10, (one.spins, one.spun)


def test_a_client_spins_on_a_brokers_replies_and_a_broker_on_its_requests(
    broker_factory: BrokerFactory, leek_settings: Callable[..., None]
) -> None:
    import leek
    from leek.client import connection

    broker_factory(LEEK_SPIN="0.005")
    leek_settings(SPIN=0.005)
    for _ in range(50):
        assert leek.ping()[0]
    # Whether a spin catches its frame depends on the host's load (on cores
    # all busy, the spinner holds the one its peer waits for, and its waits
    # soon turn it off): that each side polls is what is checked here; the
    # tests above check what a spin receives, against a peer of their own.
    frames = connection._local.connection.frames
    assert frames.spins >= 1, (frames.spins, frames.spun)
    ok, figures = leek.stats()
    # A round of pings writes nothing: the broker polls for the next one on
    # either database.
    assert figures["connections"]["spins"] >= 1, figures["connections"]


@BOTH_POOLS
def test_a_broker_polls_for_the_next_push_on_postgresql_only_while_no_task_runs(
    broker_factory: BrokerFactory, leek_settings: Callable[..., None], pool: str
) -> None:
    """After a round that wrote, the loop polls for the next request: on
    SQLite always, on PostgreSQL only while none of the broker's tasks runs,
    as its wait for the database's answer does (a task needs the cores)."""
    import leek
    from tests import tasks

    broker_factory(LEEK_SPIN="0.005", LEEK_POOL=pool, LEEK_WORKERS="1")
    leek_settings(SPIN=0.005)

    def spins_over(pushes: int) -> int:
        """The loop's waits for a frame that polled."""
        return grew_over(lambda figures: figures["connections"]["spins"], pushes)

    # The stats requests around each round write nothing, and the loop may
    # poll after them: a round polled after its pushes when most of its
    # pushes were polled for. On a loaded host one round in a few may not.
    assert any(spins_over(50) >= 10 for _ in range(5))
    running = leek.push_task_to_queue(tasks.sleep, 5)  # outlasts the 50 pushes
    wait_for(lambda: leek.stats()[1]["running"], equals=1)
    busy = spins_over(50)
    assert running.result(timeout=30) == 5
    if db.vendor == "sqlite":
        assert busy >= 10
    else:
        # It may poll around the stats requests (answered aside), which
        # write nothing.
        assert busy <= 3, busy


@BOTH_POOLS
def test_a_broker_polls_for_postgresqls_answer_only_while_no_task_runs(
    broker_factory: BrokerFactory, leek_settings: Callable[..., None], pool: str
) -> None:
    import leek
    from tests import tasks

    broker_factory(LEEK_SPIN="0.005", LEEK_POOL=pool, LEEK_WORKERS="1")
    leek_settings(SPIN=0.005)

    def polled_over(pushes: int) -> int:
        """The broker's waits for the database that polled."""
        return grew_over(lambda figures: figures["database_spins"]["spins"], pushes)

    idle = polled_over(30)
    if db.vendor == "sqlite":
        assert idle == 0  # SQLite answers within the call: there is nothing to wait for
        return
    idle += at_least(10 - idle, lambda: polled_over(30), rounds=10)
    assert idle >= 10
    running = leek.push_task_to_queue(tasks.sleep, 3)
    wait_for(lambda: leek.stats()[1]["running"], equals=1)
    assert polled_over(30) == 0  # a task needs the cores meanwhile
    assert running.result(timeout=30) == 3
    wait_for(lambda: polled_over(5) >= 1)  # and once it has ended, they poll again
