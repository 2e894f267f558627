"""Replays: the broker's guard on its own, then captured frames sent again to real brokers."""

from __future__ import annotations

import io
import os
import pickle
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import leek
from leek import conf
from leek.client import connection
from leek.exceptions import ReplayedFrame, StaleFrame
from leek.models import Task
from leek.protocol.frame import Keys, read_frame
from leek.protocol.sockets import FrameSocket
from leek.server.replay import ReplayGuard
from tests import tasks
from tests.conftest import BrokerProcess, leek_cli, task_message, wait_for
from tests.protocol.wire import Recorder, client_keys, exchange, messages, refusal, request

# -- the guard -----------------------------------------------------------------


class Clock:
    """A clock the test sets."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def guard(capacity: int = 1000, window: float = 60.0) -> tuple[ReplayGuard, Clock]:
    clock = Clock(1_000_000.0)
    return ReplayGuard(window, capacity, started=clock.now - 1, clock=clock), clock


def test_a_nonce_passes_once() -> None:
    replay, clock = guard()
    replay.check(clock.now, b"a" * 16)
    replay.check(clock.now, b"b" * 16)
    with pytest.raises(ReplayedFrame, match="seen before") as caught:
        replay.check(clock.now, b"a" * 16)
    assert caught.value.nonce == b"a" * 16  # the broker's refusal names it
    assert replay.counts() == {"stale": 0, "replayed": 1, "remembered": 2}


@pytest.mark.parametrize(
    ("offset", "passes"), [(-60.0, True), (60.0, True), (-60.5, False), (60.5, False)]
)
def test_a_stamp_outside_the_window_is_refused(offset: float, passes: bool) -> None:
    replay, clock = guard()
    clock.now += 100  # long after the start
    if passes:
        replay.check(clock.now + offset, os.urandom(16))
    else:
        with pytest.raises(StaleFrame, match="outside ±60 s"):
            replay.check(clock.now + offset, os.urandom(16))


def test_a_stamp_before_the_start_is_refused_even_inside_the_window() -> None:
    replay, clock = guard()
    with pytest.raises(StaleFrame, match=r"stamped 0\.500 s before this broker started"):
        replay.check(replay.started - 0.5, os.urandom(16))
    assert replay.counts()["stale"] == 1


@pytest.mark.parametrize("stamp", [float("nan"), float("inf"), -float("inf")])
def test_a_stamp_that_is_no_time_is_refused(stamp: float) -> None:
    replay, _ = guard()
    with pytest.raises(StaleFrame):
        replay.check(stamp, os.urandom(16))


def test_past_the_cap_the_oldest_are_forgotten_and_their_stamps_refused() -> None:
    replay, clock = guard(capacity=100)
    nonces = [os.urandom(16) for _ in range(250)]
    for n, nonce in enumerate(nonces):  # 10 per tenth of a second
        replay.check(clock.now + n / 100, nonce)
    assert replay.counts()["remembered"] <= 100
    forgotten_stamp = clock.now + 1.0  # the 100th frame's: its tenth is forgotten
    with pytest.raises(StaleFrame, match="before the oldest frame this broker still remembers"):
        replay.check(forgotten_stamp, nonces[100])  # its replay, nonce forgotten
    with pytest.raises(StaleFrame):
        replay.check(forgotten_stamp, os.urandom(16))  # any frame stamped then
    with pytest.raises(ReplayedFrame):
        replay.check(clock.now + 2.49, nonces[249])  # the newest are remembered
    replay.check(clock.now + 2.49, os.urandom(16))


def test_memory_stays_bounded_at_a_hundred_thousand_frames_a_second() -> None:
    replay, clock = guard(capacity=50_000)
    for _ in range(300_000):  # three seconds of them, stamped as they come
        clock.now += 1e-5
        replay.check(clock.now, os.urandom(16))
    counts = replay.counts()
    assert counts["remembered"] <= 50_000
    assert counts["stale"] == counts["replayed"] == 0  # no frame on time was refused


def test_nonces_expire_with_the_window_and_a_clock_set_back_does_not_revive_them() -> None:
    replay, clock = guard(window=10)
    old = os.urandom(16)
    stamp = clock.now
    replay.check(stamp, old)
    clock.now += 11
    replay.check(clock.now, os.urandom(16))  # a new tenth: the expired ones go
    assert replay.counts()["remembered"] == 1
    clock.now -= 5  # the clock is set back: the old stamp is inside the window again
    with pytest.raises(StaleFrame):
        replay.check(stamp, old)


def test_threads_racing_with_one_nonce_let_one_through() -> None:
    replay, clock = guard()

    def race(nonce: bytes) -> list[bool]:
        passed: list[bool] = []
        start = threading.Barrier(4)

        def send() -> None:
            start.wait()
            try:
                replay.check(clock.now, nonce)
                passed.append(True)
            except ReplayedFrame:
                passed.append(False)

        threads = [threading.Thread(target=send) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sorted(passed)

    for _ in range(50):
        assert race(os.urandom(16)) == [False, False, False, True]


# -- captured frames against real brokers ---------------------------------------


def captured(verb: str, data: Any) -> bytes:
    """The bytes a client's connection sends for one request (its own code path)."""
    left, right = socket.socketpair()
    with left, right:
        FrameSocket(left, client_keys(), 1 << 20, timeout=5).write((1, verb, data))
        return right.recv(1 << 16)


def replay_counts() -> dict[str, int]:
    """The broker's counts of frames refused as replays, and of all it refused."""
    ok, stats = leek.stats()
    assert ok, stats
    return {
        "stale": stats["replay"]["stale"],
        "replayed": stats["replay"]["replayed"],
        "rejected": stats["rejected_frames"],
    }


def requests_in(data: bytes) -> list[tuple[Any, ...]]:
    """The request messages in `data`, read as a broker reads them."""
    stream = io.BytesIO(data)
    keys = Keys.broker(str(conf.get("SECRET")).encode())
    found = []
    while (frame := read_frame(stream, keys.receive, 1 << 20)) is not None:
        found.append(frame.message)
    return found


def test_a_captured_stop_frame_does_not_stop_the_broker_restarted_after_it(
    broker_factory: Any,
) -> None:
    broker = broker_factory()
    recorder = Recorder(broker.port)
    try:
        connection.close()
        broker_factory.leek_settings(PORT=recorder.port)
        assert leek.stop() == (True, "stopping")  # through the recorder
        connection.close()
    finally:
        recorder.close()
    assert broker.proc is not None and broker.proc.wait(20) == 0
    stop_frame = bytes(recorder.sent)
    assert requests_in(stop_frame) == [(1, "stop", {})]

    restarted = broker_factory(port=broker.port)
    assert refusal(exchange(restarted.port, stop_frame)) == "StaleFrame"
    assert leek.ping() == (True, "I'm OK")
    assert restarted.alive
    assert replay_counts() == {"stale": 1, "replayed": 0, "rejected": 1}
    assert "before this broker started" in restarted.output()


def test_a_captured_stop_frame_sent_after_the_window_does_not_stop_the_broker(
    broker_factory: Any,
) -> None:
    broker = broker_factory(LEEK_REPLAY_WINDOW="1")
    stop_frame = captured("stop", {})  # held back by whoever took it
    time.sleep(1.5)
    assert refusal(exchange(broker.port, stop_frame)) == "StaleFrame"
    assert leek.ping() == (True, "I'm OK")
    assert replay_counts()["stale"] == 1
    assert "outside ±1 s" in broker.output()


def test_an_enqueue_replayed_after_its_row_is_purged_is_refused(broker: BrokerProcess) -> None:
    message = task_message(tasks.add, 1, 2)
    frame = captured("enqueue", message)
    assert messages(exchange(broker.port, frame)) == [(1, True, message["id"])]
    handle = leek.TaskHandle(message["id"])
    assert handle.result(timeout=10) == 3
    wait_for(lambda: Task.objects.filter(pk=message["id"], finished_at__isnull=False).exists())
    purged = leek_cli(broker.port, "purge", "--older-than", "0s")
    assert purged.returncode == 0, purged.stderr
    assert not Task.objects.exists()

    assert refusal(exchange(broker.port, frame)) == "ReplayedFrame"
    time.sleep(0.3)  # a row the replay made would show here
    assert not Task.objects.exists()
    assert replay_counts()["replayed"] == 1


def test_a_replay_on_the_same_connection_is_answered_and_the_connection_goes_on(
    broker: BrokerProcess,
) -> None:
    ping = captured("ping", {})
    first, again, after = messages(exchange(broker.port, ping + ping + request((2, "ping", {}))))
    assert first == (1, True, {"ok": True, "message": "I'm OK"})
    assert again[:2] == (0, False) and again[2]["error"] == "ReplayedFrame"
    assert after == (2, True, {"ok": True, "message": "I'm OK"})


@pytest.mark.parametrize("offset", [-120.0, 120.0])
def test_a_frame_outside_the_window_is_refused(broker: BrokerProcess, offset: float) -> None:
    frame = request((1, "enqueue", task_message(tasks.add, 1, 2)), sent=time.time() + offset)
    assert refusal(exchange(broker.port, frame)) == "StaleFrame"
    assert not Task.objects.exists()
    assert replay_counts()["stale"] == 1


def test_a_frame_ahead_of_the_broker_within_the_window_is_served(broker: BrokerProcess) -> None:
    frame = request((1, "ping", {}), sent=time.time() + 30)  # a client's clock ahead
    assert messages(exchange(broker.port, frame)) == [(1, True, {"ok": True, "message": "I'm OK"})]


@pytest.mark.parametrize(("field", "offset"), [("stamp", 9), ("nonce", 20)])
def test_a_tampered_stamp_or_nonce_fails_the_signature(
    broker: BrokerProcess, field: str, offset: int
) -> None:
    frame = bytearray(request((1, "stop", {})))
    frame[offset] ^= 0x40
    assert refusal(exchange(broker.port, bytes(frame))) == "BadSignature"
    assert leek.ping() == (True, "I'm OK")


class Mark:
    """Unpickling this leaves a file: proof that bytes reached pickle."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> Any:
        return (tasks.append_line, (self.path, "unpickled"))


def test_a_tampered_16_mib_frame_is_refused_unpickled(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    mark = tmp_path / "mark"
    body = (Mark(mark), b"x" * ((16 << 20) - 1000))
    frame = bytearray(request((1, "enqueue", body)))
    frame[len(frame) // 2] ^= 0x01
    assert refusal(exchange(broker.port, bytes(frame))) == "BadSignature"
    assert not mark.exists()
    assert leek.ping() == (True, "I'm OK")


def test_a_frame_of_the_old_version_gets_an_answer_an_old_client_cannot_take_for_a_reply(
    broker: BrokerProcess,
) -> None:
    body = pickle.dumps((1, "ping", {}))
    old = struct.pack(">4sI", b"LK01", len(body)) + b"t" * 32 + body
    answer = exchange(broker.port, old)
    assert answer[:4] == b"LK02"  # an old client stops at the magic: "not a leek frame"
    (refused,) = messages(answer)
    assert refused[2]["error"] == "ProtocolError"
    assert "another version: got b'LK01'" in refused[2]["message"]


def test_a_client_whose_clock_lags_the_broker_restamps_and_is_served(
    broker: BrokerProcess,
) -> None:
    conn = connection.connect(("127.0.0.1", broker.port))
    try:
        conn.frames.clock_offset = -300.0  # as if its clock were five minutes late
        assert conn.request("ping", {}) == (True, {"ok": True, "message": "I'm OK"})
        assert abs(conn.frames.clock_offset) < 5  # learned from the broker's refusal
        assert conn.request("ping", {})[0]  # and kept
    finally:
        conn.close()
    assert replay_counts()["stale"] == 1
