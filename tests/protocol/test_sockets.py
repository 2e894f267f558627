"""FrameSocket on real connected sockets: buffering, deadlines, whole writes."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from leek.exceptions import BadSignature, ProtocolError, ReflectedFrame
from leek.protocol.frame import Keys, encode
from leek.protocol.sockets import RECV_SIZE, FrameSocket

CLIENT = Keys.client(b"k" * 32)
BROKER = Keys.broker(b"k" * 32)
KEY = CLIENT.send  # what the tests' raw frames are signed with: requests


class Mark:
    """Unpickling this leaves a file behind: proof that bytes reached pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path(self.path).write_text, ("unpickled",))


def message(frames: FrameSocket) -> tuple[Any, ...]:
    frame = frames.read()
    assert frame is not None
    return frame.message


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    with left, right:
        yield left, right


def test_frames_in_one_packet_are_read_one_by_one(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    frames = FrameSocket(left, BROKER, 1 << 20, timeout=5)
    right.sendall(b"".join(encode(KEY, (i, "ping", {})) for i in range(1, 4)))
    right.close()
    assert [message(frames) for _ in range(3)] == [(i, "ping", {}) for i in range(1, 4)]
    assert frames.read() is None  # the peer closed between frames


def test_a_frame_sent_in_pieces_is_read_whole(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    frames = FrameSocket(left, BROKER, 1 << 20, timeout=5)
    data = encode(KEY, (9, "enqueue", {"payload": b"x" * 300_000}))

    def trickle() -> None:
        for start in range(0, len(data), 70_001):
            right.sendall(data[start : start + 70_001])

    sender = threading.Thread(target=trickle)
    sender.start()
    assert message(frames) == (9, "enqueue", {"payload": b"x" * 300_000})
    sender.join()


def test_a_frame_that_trickles_past_its_deadline_times_out(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    frames = FrameSocket(left, BROKER, 1 << 20, timeout=0.3)
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
    frames = FrameSocket(left, BROKER, 1 << 20, timeout=0.1)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="nothing received"):
        frames.read(idle=0.5)
    assert 0.45 < time.monotonic() - started < 2.0


def test_a_peer_that_closes_mid_frame_is_a_protocol_error(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    frames = FrameSocket(left, BROKER, 1 << 20, timeout=5)
    right.sendall(encode(KEY, (1, "ping", {}))[:20])
    right.close()
    with pytest.raises(ProtocolError, match="closed mid-frame: 20 bytes"):
        frames.read()


def test_a_forged_frame_is_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    frames = FrameSocket(left, BROKER, 1 << 20, timeout=5)
    right.sendall(encode(b"another key", (1, "ping", {})))
    with pytest.raises(BadSignature):
        frames.read()


def test_writes_from_many_threads_arrive_whole(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    out = FrameSocket(left, CLIENT, 1 << 20, timeout=5)
    into = FrameSocket(right, BROKER, 1 << 20, timeout=5)
    blob = b"y" * 100_000

    def write(n: int) -> None:
        for i in range(20):
            out.write((n * 100 + i, "blob", blob))

    writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for w in writers:
        w.start()
    got = [message(into) for _ in range(80)]
    for w in writers:
        w.join()
    expected = sorted(n * 100 + i for n in range(4) for i in range(20))
    assert sorted(m[0] for m in got) == expected
    assert all(m[2] == blob for m in got)


def test_a_reply_names_the_nonce_of_its_request(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    client = FrameSocket(left, CLIENT, 1 << 20, timeout=5)
    broker = FrameSocket(right, BROKER, 1 << 20, timeout=5)
    nonce = client.write((1, "ping", {}))
    request = broker.read()
    assert request is not None and request.nonce == nonce
    assert broker.write((1, True, "pong"), request.nonce) == nonce
    reply = client.read()
    assert reply is not None and (reply.nonce, reply.message) == (nonce, (1, True, "pong"))
    assert client.write((2, "ping", {})) != nonce  # each request its own


def test_a_frame_sent_back_to_its_writer_is_refused_as_reflected(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    client = FrameSocket(left, CLIENT, 1 << 22, timeout=5)

    def echo() -> None:
        while chunk := right.recv(65536):
            right.sendall(chunk)

    echoing = threading.Thread(target=echo)
    echoing.start()
    for data in ({}, {"payload": b"p" * 200_000}):  # read where it lies, and read whole
        client.write((1, "enqueue", data))
        with pytest.raises(ReflectedFrame):
            client.read()
    left.shutdown(socket.SHUT_WR)
    echoing.join()


@pytest.mark.parametrize("extra", [-1, 0, 1, 40, 70_000])
def test_frames_either_side_of_the_buffer_size_are_read_whole(
    pair: tuple[socket.socket, socket.socket], extra: int
) -> None:
    # Frames of about RECV_SIZE bytes, pipelined behind a small one, so that
    # frames start and end at every kind of place in the receive buffer.
    left, right = pair
    frames = FrameSocket(left, BROKER, 1 << 20, timeout=5)
    empty = len(encode(KEY, (1, "b", b"")))
    size = RECV_SIZE - empty + extra - 3  # 3: pickle's longer length field
    data = b"".join(
        encode(KEY, (n, "b", bytes([n]) * (size if n % 2 else 10))) for n in range(1, 8)
    )
    sender = threading.Thread(target=right.sendall, args=(data,))
    sender.start()
    got = [message(frames) for _ in range(7)]
    sender.join()
    assert [m[0] for m in got] == list(range(1, 8))
    assert [m[2] for m in got] == [bytes([n]) * (size if n % 2 else 10) for n in range(1, 8)]


def test_a_tampered_16_mib_frame_is_refused_without_unpickling(
    pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    left, right = pair
    frames = FrameSocket(left, BROKER, 16 << 20, timeout=30)
    mark = tmp_path / "mark"
    padding = b"x" * ((16 << 20) - 1000)
    frame = bytearray(encode(KEY, (1, "enqueue", (Mark(str(mark)), padding))))
    assert len(frame) > (16 << 20) - 1000  # a body near MAX_FRAME's default
    frame[len(frame) // 2] ^= 0x01
    sender = threading.Thread(target=right.sendall, args=(frame,))
    sender.start()
    with pytest.raises(BadSignature):
        frames.read()
    sender.join()
    assert not mark.exists()
    # Untampered, the same frame is read, and reaches pickle: the mark works.
    frame[len(frame) // 2] ^= 0x01
    sender = threading.Thread(target=right.sendall, args=(frame,))
    sender.start()
    assert message(frames)[2][1] == padding
    sender.join()
    assert mark.exists()


def test_a_large_frame_cut_short_is_a_protocol_error(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    frames = FrameSocket(left, BROKER, 16 << 20, timeout=5)

    def send() -> None:
        right.sendall(encode(KEY, (1, "enqueue", b"z" * 1_000_000))[:300_000])
        right.close()

    sender = threading.Thread(target=send)
    sender.start()
    with pytest.raises(ProtocolError, match="closed mid-frame: 300000 bytes"):
        frames.read()
    sender.join()


def test_a_large_frame_that_stalls_times_out(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    frames = FrameSocket(left, BROKER, 16 << 20, timeout=0.3)
    sender = threading.Thread(
        target=right.sendall, args=(encode(KEY, (1, "enqueue", b"z" * 1_000_000))[:100_000],)
    )
    sender.start()
    with pytest.raises(TimeoutError, match="frame not finished within 0.3 s"):
        frames.read(idle=60)
    sender.join()
