"""The frame: its format, its signature, and reading and writing it whole.

Every message, request or reply, travels as one frame::

    +--------+--------+--------+--------+----------------+------------------+
    | "LK02" | length | sent   | nonce  | body           | tag              |
    | 4 B    | 4 B >I | 8 B >d | 16 B   | `length` bytes | 32 B HMAC-SHA256 |
    +--------+--------+--------+--------+----------------+------------------+

* ``sent``: the sender's clock (epoch seconds) when it wrote the frame.
* ``nonce``: in a request, 16 random bytes of its own; in a reply, the nonce
  of the request it answers (zeros when the broker answers a frame it could
  not verify).
* ``tag``: HMAC-SHA256 of every byte before it. Each direction has its own
  key, derived from the shared secret (:func:`derive_key`): requests are
  signed with the ``frame:request`` key and replies with the ``frame:reply``
  key, so a request sent back to its client is never taken for a reply.

A reader checks the magic, refuses a length above ``MAX_FRAME`` before reading
the body, and compares the tag in constant time before anything is unpickled;
the broker then refuses a frame that is stale or replayed (server/replay.py),
still before unpickling. The body is a pickled tuple:

* request: ``(request_id, verb, data)``
* reply: ``(request_id, ok, value)``; when ``ok`` is false, ``value`` is a dict
  ``{"error": code, "message": text}``.

Request ids let a client keep one connection open and match each reply to its
request. A task's own payload (callable, args, kwargs) is a cloudpickle blob
inside ``data``; it is unpickled only on a worker, by
:func:`leek.protocol.payload.load_task`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from ..exceptions import BadSignature, FrameTooLarge, ProtocolError, ReflectedFrame
from .mac import mac

MAGIC = b"LK02"
#: The first bytes of a frame, checked before anything else is read.
HEADER = struct.Struct(">4sI")
#: Every byte of a frame before its body: the header, then the stamp.
PREFIX_FIELDS = struct.Struct(">4sId16s")
PREFIX = PREFIX_FIELDS.size
NONCE_SIZE = 16
TAG_SIZE = 32
#: A frame's bytes besides its body.
OVERHEAD = PREFIX + TAG_SIZE
PICKLE_PROTOCOL = 5
#: The nonce of a reply to a frame the broker could not verify.
NO_NONCE = bytes(NONCE_SIZE)
#: What derives each direction's key (see derive_key).
REQUEST = "frame:request"
REPLY = "frame:reply"

#: Called with a verified frame's stamp and nonce before its body is unpickled;
#: raises (StaleFrame) to refuse it.
Check = Callable[[float, bytes], None]


def derive_key(secret: bytes, purpose: str) -> bytes:
    """The key for one `purpose`, derived from the shared secret: HMAC-SHA256
    of the purpose under the secret. Keys of different purposes are unrelated,
    so what one signs is never valid for another."""
    return hmac.new(secret, b"leek:" + purpose.encode(), hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Keys:
    """One side's keys: what it signs its frames with, what it checks the peer's with."""

    send: bytes
    receive: bytes

    @classmethod
    def client(cls, secret: bytes) -> Keys:
        """A client's: it signs requests and checks replies."""
        return cls(derive_key(secret, REQUEST), derive_key(secret, REPLY))

    @classmethod
    def broker(cls, secret: bytes) -> Keys:
        """A broker's: it checks requests and signs replies."""
        return cls(derive_key(secret, REPLY), derive_key(secret, REQUEST))


@dataclass(slots=True)
class Frame:
    """A frame read and verified: its stamp, its nonce and its message."""

    sent: float
    nonce: bytes
    message: tuple[Any, ...]


def sign(key: bytes, signed: bytes | memoryview) -> bytes:
    """The tag of a frame whose bytes before the tag are `signed`."""
    return mac(key).tag(signed)


def encode(
    key: bytes,
    message: tuple[Any, ...],
    nonce: bytes | None = None,
    sent: float | None = None,
) -> bytes:
    """One whole frame for `message`, ready for a single write.

    `nonce` defaults to 16 fresh random bytes and `sent` to the clock now."""
    body = pickle.dumps(message, protocol=PICKLE_PROTOCOL)
    signed = (
        PREFIX_FIELDS.pack(
            MAGIC,
            len(body),
            time.time() if sent is None else sent,
            os.urandom(NONCE_SIZE) if nonce is None else nonce,
        )
        + body
    )
    return signed + sign(key, signed)


def body_length(buffer: bytes | bytearray | memoryview, max_size: int, offset: int = 0) -> int:
    """The body length the header at `offset` of `buffer` announces, once its
    magic and size are checked."""
    magic, length = HEADER.unpack_from(buffer, offset)
    if magic != MAGIC:
        if magic[:2] == MAGIC[:2]:
            raise ProtocolError(
                f"leek frame of another version: got {magic!r}, this side speaks "
                f"{MAGIC!r}: run the same leek version on clients and brokers"
            )
        raise ProtocolError(f"not a leek frame: expected magic {MAGIC!r}, got {magic!r}")
    if length > max_size:
        raise FrameTooLarge(f"frame of {length} bytes is over the limit of {max_size} bytes")
    return int(length)


def open_frame(
    key: bytes,
    frame: bytes | bytearray | memoryview,
    check: Check | None = None,
    own_key: bytes | None = None,
) -> Frame:
    """The message of a whole frame: the tag is checked, then `check`, before
    the body is unpickled.

    Raises BadSignature for a tag that does not match `key` (ReflectedFrame
    when it matches `own_key`, this side's sending key) and ProtocolError for
    a signed body that holds no message."""
    view = memoryview(frame)
    end = len(view) - TAG_SIZE
    signed, tag = view[:end], view[end:]
    if not hmac.compare_digest(tag, sign(key, signed)):
        raise refusal(signed, tag, own_key)
    return unpack(view, view[PREFIX:end], check)


def refusal(
    signed: bytes | memoryview, tag: bytes | memoryview, own_key: bytes | None
) -> BadSignature:
    """The error for a tag that did not match: ReflectedFrame when `own_key` made it."""
    if own_key is not None and hmac.compare_digest(tag, sign(own_key, signed)):
        return ReflectedFrame()
    return BadSignature()


def unpack(frame: memoryview, body: memoryview, check: Check | None) -> Frame:
    """The frame whose tag matched: `check` its stamp, then unpickle its body."""
    _, _, sent, nonce = PREFIX_FIELDS.unpack_from(frame)
    if check is not None:
        check(sent, nonce)
    try:
        message = pickle.loads(body)  # noqa: S301 - signed by a holder of the secret
    except Exception as exc:
        raise ProtocolError(f"signed frame holds no valid message: {exc}") from exc
    if type(message) is not tuple or len(message) != 3:
        raise ProtocolError("signed frame holds no (id, verb, data) triple")
    return Frame(sent, nonce, message)


def read_exact(stream: BinaryIO, size: int) -> bytes:
    """Exactly `size` bytes, or ProtocolError when the peer closes first."""
    data = stream.read(size)
    if data is None or len(data) != size:
        got = 0 if data is None else len(data)
        raise ProtocolError(f"connection closed mid-frame: expected {size} bytes, got {got}")
    return data


def read_frame(
    stream: BinaryIO, key: bytes, max_size: int, check: Check | None = None
) -> Frame | None:
    """The next frame from `stream`, or None at a clean end of stream.

    Raises ProtocolError for a bad magic or a truncated frame, FrameTooLarge for
    a length above `max_size` (the body is never read), BadSignature for a tag
    that does not match (the body is never unpickled) and what `check` raises."""
    first = stream.read(1)
    if not first:
        return None
    header = first + read_exact(stream, HEADER.size - 1)
    rest = read_exact(stream, PREFIX - HEADER.size + body_length(header, max_size) + TAG_SIZE)
    return open_frame(key, header + rest, check)
