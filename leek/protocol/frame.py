"""The frame: its format, its signature, and reading and writing it whole.

Every message, request or reply, travels as one frame::

    +--------+------------+--------------------+----------------------+
    | "LK01" | length     | tag                | body                 |
    | 4 B    | 4 B, >I    | 32 B HMAC-SHA256   | `length` bytes       |
    +--------+------------+--------------------+----------------------+

The tag is HMAC-SHA256 under the shared secret over the magic, the length and
the body. A reader checks the magic, refuses a length above ``MAX_FRAME``
before reading the body, and compares the tag in constant time before anything
is unpickled. The body is a pickled tuple:

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
import pickle
import struct
from typing import Any, BinaryIO

from ..exceptions import BadSignature, FrameTooLarge, ProtocolError

MAGIC = b"LK01"
HEADER = struct.Struct(">4sI")
TAG_SIZE = 32
PICKLE_PROTOCOL = 5

#: Bytes before the body: the header and the tag.
PREFIX = HEADER.size + TAG_SIZE

#: An HMAC that has taken its key and nothing else, per key: each frame copies
#: it instead of hashing the key again.
_KEYED: dict[bytes, Any] = {}


def sign(key: bytes, header: bytes, body: bytes) -> bytes:
    """The tag of a frame: HMAC-SHA256 of its header and body."""
    keyed = _KEYED.get(key)
    if keyed is None:
        keyed = _KEYED[key] = hmac.new(key, digestmod=hashlib.sha256)
    mac = keyed.copy()
    mac.update(header)
    mac.update(body)
    return mac.digest()


def encode(key: bytes, message: tuple[Any, ...]) -> bytes:
    """One whole frame for `message`, ready for a single write."""
    body = pickle.dumps(message, protocol=PICKLE_PROTOCOL)
    header = HEADER.pack(MAGIC, len(body))
    return header + sign(key, header, body) + body


def read_exact(stream: BinaryIO, size: int) -> bytes:
    """Exactly `size` bytes, or ProtocolError when the peer closes first."""
    data = stream.read(size)
    if data is None or len(data) != size:
        got = 0 if data is None else len(data)
        raise ProtocolError(f"connection closed mid-frame: expected {size} bytes, got {got}")
    return data


def read_frame(stream: BinaryIO, key: bytes, max_size: int) -> tuple[Any, ...] | None:
    """The next message from `stream`, or None at a clean end of stream.

    Raises ProtocolError for a bad magic or a truncated frame, FrameTooLarge for
    a length above `max_size` (the body is never read) and BadSignature for a
    tag that does not match (the body is never unpickled).
    """
    first = stream.read(1)
    if not first:
        return None
    header = first + read_exact(stream, HEADER.size - 1)
    length = body_length(header, max_size)
    tag = read_exact(stream, TAG_SIZE)
    body = read_exact(stream, length)
    return open_frame(key, header, tag, body)


def body_length(header: bytes, max_size: int) -> int:
    """The body length a frame header announces, once its magic and size are checked."""
    magic, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError(f"not a leek frame: expected magic {MAGIC!r}, got {magic!r}")
    if length > max_size:
        raise FrameTooLarge(f"frame of {length} bytes is over the limit of {max_size} bytes")
    return int(length)


def open_frame(key: bytes, header: bytes, tag: bytes, body: bytes) -> tuple[Any, ...]:
    """The message in a whole frame: the tag is checked before the body is unpickled."""
    if not hmac.compare_digest(tag, sign(key, header, body)):
        raise BadSignature()
    try:
        message = pickle.loads(body)  # noqa: S301 - signed by a holder of the secret
    except Exception as exc:
        raise ProtocolError(f"signed frame holds no valid message: {exc}") from exc
    if not isinstance(message, tuple) or len(message) != 3:
        raise ProtocolError("signed frame holds no (id, verb, data) triple")
    return message
