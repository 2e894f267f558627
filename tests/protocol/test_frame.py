"""Framing and signing, byte by byte: what protocol/frame.py accepts and refuses."""

from __future__ import annotations

import io
import pickle
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from leek.exceptions import BadSignature, FrameTooLarge, ProtocolError, ReflectedFrame, StaleFrame
from leek.protocol.frame import (
    HEADER,
    MAGIC,
    NONCE_SIZE,
    OVERHEAD,
    PREFIX,
    PREFIX_FIELDS,
    TAG_SIZE,
    Keys,
    derive_key,
    encode,
    open_frame,
    read_frame,
    sign,
)

SECRET = b"s" * 32
CLIENT = Keys.client(SECRET)
BROKER = Keys.broker(SECRET)
KEY = CLIENT.send  # requests are signed with it, and checked with BROKER.receive


class Mark:
    """Unpickling this leaves a file behind: proof that bytes reached pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path(self.path).write_text, ("unpickled",))


def test_a_frame_round_trips_with_its_stamp_and_nonce() -> None:
    nonce = bytes(range(16))
    frame = encode(KEY, (7, "enqueue", {"x": 1}), nonce=nonce, sent=1234.5)
    read = read_frame(io.BytesIO(frame), BROKER.receive, 1024)
    assert read is not None
    assert (read.sent, read.nonce, read.message) == (1234.5, nonce, (7, "enqueue", {"x": 1}))


def test_each_frame_gets_a_fresh_nonce_and_the_clock() -> None:
    before = time.time()
    first, second = encode(KEY, (1, "ping", {})), encode(KEY, (1, "ping", {}))
    _, _, sent, nonce = PREFIX_FIELDS.unpack_from(first)
    assert before <= sent <= time.time()
    assert nonce != PREFIX_FIELDS.unpack_from(second)[3]


def test_end_of_stream_is_none() -> None:
    assert read_frame(io.BytesIO(b""), KEY, 1024) is None


def test_the_two_directions_have_unrelated_keys() -> None:
    assert CLIENT.send == BROKER.receive and CLIENT.receive == BROKER.send
    assert CLIENT.send != CLIENT.receive
    assert SECRET not in (CLIENT.send, CLIENT.receive)
    assert derive_key(SECRET, "frame:request") == CLIENT.send
    assert derive_key(b"another secret", "frame:request") != CLIENT.send


def test_a_request_is_not_a_valid_reply() -> None:
    request = encode(CLIENT.send, (1, "enqueue", {}))
    with pytest.raises(BadSignature):
        read_frame(io.BytesIO(request), CLIENT.receive, 1024)
    with pytest.raises(ReflectedFrame, match="sending key"):  # the client knows its own
        open_frame(CLIENT.receive, request, own_key=CLIENT.send)


def test_a_wrong_key_is_refused_before_unpickling(tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    frame = encode(b"other-key", (1, "enqueue", Mark(str(mark))))
    with pytest.raises(BadSignature):
        read_frame(io.BytesIO(frame), KEY, 1 << 20)
    assert not mark.exists()
    # The same frame under the right key does reach pickle: the mark works.
    read_frame(io.BytesIO(encode(KEY, (1, "enqueue", Mark(str(mark))))), KEY, 1 << 20)
    assert mark.exists()


def test_a_flipped_body_byte_is_refused() -> None:
    frame = bytearray(encode(KEY, (1, "ping", {})))
    frame[-TAG_SIZE - 1] ^= 0x01
    with pytest.raises(BadSignature):
        read_frame(io.BytesIO(bytes(frame)), KEY, 1024)


@pytest.mark.parametrize(
    ("field", "offset"), [("stamp", HEADER.size), ("nonce", HEADER.size + 8 + 5)]
)
def test_a_tampered_stamp_or_nonce_fails_the_signature(field: str, offset: int) -> None:
    frame = bytearray(encode(KEY, (1, "stop", {})))
    frame[offset] ^= 0x01
    with pytest.raises(BadSignature):
        read_frame(io.BytesIO(bytes(frame)), KEY, 1024)


def test_the_length_is_signed_too() -> None:
    frame = encode(KEY, (1, "ping", {}))
    magic, length = HEADER.unpack(frame[: HEADER.size])
    forged = HEADER.pack(magic, length) + frame[HEADER.size :]
    read = read_frame(io.BytesIO(forged), KEY, 1024)
    assert read is not None and read.message == (1, "ping", {})
    tampered = HEADER.pack(magic, length - 1) + frame[HEADER.size : -1]
    with pytest.raises(BadSignature):
        read_frame(io.BytesIO(tampered), KEY, 1024)


def test_the_check_runs_after_the_tag_and_before_unpickling(tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    seen: list[tuple[float, bytes]] = []

    def refuse(sent: float, nonce: bytes) -> None:
        seen.append((sent, nonce))
        raise StaleFrame("refused", nonce=nonce)

    frame = encode(KEY, (1, "enqueue", Mark(str(mark))), nonce=b"n" * 16, sent=5.0)
    with pytest.raises(BadSignature):
        read_frame(io.BytesIO(encode(b"x", (1, "ping", {}))), KEY, 1 << 20, check=refuse)
    assert seen == []  # a frame that fails its tag is never checked
    with pytest.raises(StaleFrame):
        read_frame(io.BytesIO(frame), KEY, 1 << 20, check=refuse)
    assert seen == [(5.0, b"n" * 16)]
    assert not mark.exists()


def test_an_oversized_length_is_refused_without_reading_the_body() -> None:
    header = HEADER.pack(MAGIC, 1 << 30)
    stream = io.BytesIO(header + b"\0" * 64)
    with pytest.raises(FrameTooLarge, match="over the limit of 1024 bytes"):
        read_frame(stream, KEY, 1024)
    assert stream.tell() == HEADER.size


def test_garbage_is_not_a_frame() -> None:
    with pytest.raises(ProtocolError, match="not a leek frame"):
        read_frame(io.BytesIO(b"GET / HTTP/1.1\r\n\r\n"), KEY, 1024)


def test_a_frame_of_the_first_version_names_the_version() -> None:
    body = pickle.dumps((1, "enqueue", {}))
    old = struct.pack(">4sI", b"LK01", len(body)) + b"t" * 32 + body
    with pytest.raises(ProtocolError, match="another version: got b'LK01'.* speaks b'LK02'"):
        read_frame(io.BytesIO(old), KEY, 1024)


def test_a_truncated_frame_is_refused() -> None:
    frame = encode(KEY, (1, "ping", {}))
    with pytest.raises(ProtocolError, match="closed mid-frame"):
        read_frame(io.BytesIO(frame[:-3]), KEY, 1024)


def test_a_signed_non_triple_is_refused() -> None:
    body = pickle.dumps(["not", "a", "tuple", "!"])
    signed = PREFIX_FIELDS.pack(MAGIC, len(body), time.time(), bytes(16)) + body
    with pytest.raises(ProtocolError, match="triple"):
        read_frame(io.BytesIO(signed + sign(KEY, signed)), KEY, 1024)


def test_frame_layout() -> None:
    frame = encode(KEY, (1, "ping", {}), nonce=b"\x07" * NONCE_SIZE, sent=2.0)
    assert frame[:4] == b"LK02"
    (length,) = struct.unpack(">I", frame[4:8])
    assert struct.unpack(">d", frame[8:16]) == (2.0,)
    assert frame[16:32] == b"\x07" * 16
    assert len(frame) == PREFIX + length + TAG_SIZE == OVERHEAD + length
    assert frame[-TAG_SIZE:] == sign(KEY, frame[:-TAG_SIZE])
