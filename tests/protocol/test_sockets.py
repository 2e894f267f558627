"""FrameSocket on real connected sockets: buffering, deadlines, whole writes."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from leek.exceptions import BadSignature, ProtocolError
from leek.protocol.frame import encode
from leek.protocol.sockets import FrameSocket

KEY = b"k" * 32


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    with left, right:
        yield left, right


def test_frames_in_one_packet_are_read_one_by_one(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    frames = FrameSocket(left, KEY, 1 << 20, timeout=5)
    right.sendall(b"".join(encode(KEY, (i, "ping", {})) for i in range(1, 4)))
    right.close()
    assert [frames.read() for _ in range(3)] == [(i, "ping", {}) for i in range(1, 4)]
    assert frames.read() is None  # the peer closed between frames


def test_a_frame_sent_in_pieces_is_read_whole(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    frames = FrameSocket(left, KEY, 1 << 20, timeout=5)
    data = encode(KEY, (9, "enqueue", {"payload": b"x" * 300_000}))

    def trickle() -> None:
        for start in range(0, len(data), 70_001):
            right.sendall(data[start : start + 70_001])

    sender = threading.Thread(target=trickle)
    sender.start()
    assert frames.read() == (9, "enqueue", {"payload": b"x" * 300_000})
    sender.join()


def test_a_frame_that_trickles_past_its_deadline_times_out(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    frames = FrameSocket(left, KEY, 1 << 20, timeout=0.3)
    data = encode(KEY, (1, "ping", {}))
    stop = threading.Event()

    def trickle() -> None:  # a byte every 0.1 s: each read succeeds, the frame never ends in time
        for byte in data:
            if stop.wait(0.1):
                return
            right.send(bytes([byte]))

    sender = threading.Thread(target=trickle)
    sender.start()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="frame not finished within 0.3 s"):
        frames.read(idle=60)
    stop.set()
    sender.join()
    assert time.monotonic() - started < 1.0


def test_an_idle_connection_times_out_after_idle_seconds(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, _ = pair
    frames = FrameSocket(left, KEY, 1 << 20, timeout=0.1)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="nothing received"):
        frames.read(idle=0.5)
    assert 0.45 < time.monotonic() - started < 2.0


def test_a_peer_that_closes_mid_frame_is_a_protocol_error(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    frames = FrameSocket(left, KEY, 1 << 20, timeout=5)
    right.sendall(encode(KEY, (1, "ping", {}))[:20])
    right.close()
    with pytest.raises(ProtocolError, match="closed mid-frame: 20 bytes"):
        frames.read()


def test_a_forged_frame_is_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    frames = FrameSocket(left, KEY, 1 << 20, timeout=5)
    right.sendall(encode(b"another key", (1, "ping", {})))
    with pytest.raises(BadSignature):
        frames.read()


def test_writes_from_many_threads_arrive_whole(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    out = FrameSocket(left, KEY, 1 << 20, timeout=5)
    into = FrameSocket(right, KEY, 1 << 20, timeout=5)
    blob = b"y" * 100_000

    def write(n: int) -> None:
        for i in range(20):
            out.write((n * 100 + i, "blob", blob))

    writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for w in writers:
        w.start()
    got = [into.read() for _ in range(80)]
    for w in writers:
        w.join()
    expected = sorted(n * 100 + i for n in range(4) for i in range(20))
    assert sorted(m[0] for m in got if m) == expected
    assert all(m is not None and m[2] == blob for m in got)
