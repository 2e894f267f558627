"""Framing and signing, byte by byte: what protocol/frame.py accepts and refuses."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest

from leek.exceptions import BadSignature, FrameTooLarge, ProtocolError
from leek.protocol.frame import HEADER, MAGIC, encode, read_frame, sign

KEY = b"k" * 32


class Mark:
    """Unpickling this leaves a file behind: proof that bytes reached pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path(self.path).write_text, ("unpickled",))


def test_a_frame_round_trips() -> None:
    frame = encode(KEY, (7, "enqueue", {"x": 1}))
    assert read_frame(io.BytesIO(frame), KEY, 1024) == (7, "enqueue", {"x": 1})


def test_end_of_stream_is_none() -> None:
    assert read_frame(io.BytesIO(b""), KEY, 1024) is None


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
    frame[-1] ^= 0x01
    with pytest.raises(BadSignature):
        read_frame(io.BytesIO(bytes(frame)), KEY, 1024)


def test_the_length_is_signed_too() -> None:
    frame = encode(KEY, (1, "ping", {}))
    magic, length = HEADER.unpack(frame[: HEADER.size])
    forged = HEADER.pack(magic, length) + frame[HEADER.size :]
    assert read_frame(io.BytesIO(forged), KEY, 1024) == (1, "ping", {})
    tampered = HEADER.pack(magic, length - 1) + frame[HEADER.size : -1]
    with pytest.raises(BadSignature):
        read_frame(io.BytesIO(tampered), KEY, 1024)


def test_an_oversized_length_is_refused_without_reading_the_body() -> None:
    header = HEADER.pack(MAGIC, 1 << 30)
    stream = io.BytesIO(header + b"\0" * 32)
    with pytest.raises(FrameTooLarge, match="over the limit of 1024 bytes"):
        read_frame(stream, KEY, 1024)
    assert stream.tell() == HEADER.size


def test_garbage_is_not_a_frame() -> None:
    with pytest.raises(ProtocolError, match="not a leek frame"):
        read_frame(io.BytesIO(b"GET / HTTP/1.1\r\n\r\n"), KEY, 1024)


def test_a_truncated_frame_is_refused() -> None:
    frame = encode(KEY, (1, "ping", {}))
    with pytest.raises(ProtocolError, match="closed mid-frame"):
        read_frame(io.BytesIO(frame[:-3]), KEY, 1024)


def test_a_signed_non_triple_is_refused() -> None:
    body = pickle.dumps(["not", "a", "tuple", "!"])
    header = HEADER.pack(MAGIC, len(body))
    frame = header + sign(KEY, header, body) + body
    with pytest.raises(ProtocolError, match="triple"):
        read_frame(io.BytesIO(frame), KEY, 1024)


def test_header_layout() -> None:
    frame = encode(KEY, (1, "ping", {}))
    assert frame[:4] == b"LK01"
    (length,) = struct.unpack(">I", frame[4:8])
    assert len(frame) == 8 + 32 + length
