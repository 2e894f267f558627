"""The wire protocol: framing, signing, size limits. The only code that unpickles.

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
inside ``data``; it is unpickled only on a worker, by :func:`load_task`.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
import struct
from collections.abc import Callable
from typing import Any, BinaryIO

import cloudpickle

from .exceptions import BadSignature, FrameTooLarge, PayloadError, ProtocolError

MAGIC = b"LK01"
HEADER = struct.Struct(">4sI")
TAG_SIZE = 32
PICKLE_PROTOCOL = 5


def sign(key: bytes, header: bytes, body: bytes) -> bytes:
    """The tag of a frame."""
    mac = hmac.new(key, header, hashlib.sha256)
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


def read_frame(
    stream: BinaryIO, key: bytes, max_size: int, on_start: Callable[[], None] | None = None
) -> tuple[Any, ...] | None:
    """The next message from `stream`, or None at a clean end of stream.

    Raises ProtocolError for a bad magic or a truncated frame, FrameTooLarge for
    a length above `max_size` (the body is never read) and BadSignature for a
    tag that does not match (the body is never unpickled). `on_start` runs once
    the first byte of a frame has arrived (the broker arms its frame deadline).
    """
    first = stream.read(1)
    if not first:
        return None
    if on_start is not None:
        on_start()
    header = first + read_exact(stream, HEADER.size - 1)
    magic, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError(f"not a leek frame: expected magic {MAGIC!r}, got {magic!r}")
    if length > max_size:
        raise FrameTooLarge(f"frame of {length} bytes is over the limit of {max_size} bytes")
    tag = read_exact(stream, TAG_SIZE)
    body = read_exact(stream, length)
    if not hmac.compare_digest(tag, sign(key, header, body)):
        raise BadSignature()
    try:
        message = pickle.loads(body)  # noqa: S301 - signed by a holder of the secret
    except Exception as exc:
        raise ProtocolError(f"signed frame holds no valid message: {exc}") from exc
    if not isinstance(message, tuple) or len(message) != 3:
        raise ProtocolError("signed frame holds no (id, verb, data) triple")
    return message


def dump_task(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The payload of a task: importable callables by reference, others by value."""
    try:
        payload: bytes = cloudpickle.dumps((fn, args, kwargs), protocol=PICKLE_PROTOCOL)
        return payload
    except Exception as exc:
        raise PayloadError(f"cannot pickle task {task_name(fn)}: {exc}") from exc


def load_task(payload: bytes) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """The callable and arguments of a payload; PayloadError names what is missing."""
    try:
        fn, args, kwargs = pickle.loads(payload)  # noqa: S301 - committed from a signed frame
    except Exception as exc:
        raise PayloadError(f"cannot unpickle task: {type(exc).__name__}: {exc}") from exc
    return fn, args, kwargs


def dump_value(value: Any) -> bytes:
    """A task's return value as stored; an unpicklable one is kept as its repr."""
    try:
        return pickle.dumps(value, protocol=PICKLE_PROTOCOL)
    except Exception:
        return pickle.dumps(_Unpicklable(repr(value)), protocol=PICKLE_PROTOCOL)


def load_value(blob: bytes | memoryview | None) -> Any:
    """A stored return value (None for no blob)."""
    if blob is None:
        return None
    value = pickle.loads(bytes(blob))  # noqa: S301 - written by the broker
    return value.text if isinstance(value, _Unpicklable) else value


class _Unpicklable:
    """Stands for a return value that could not be pickled."""

    def __init__(self, text: str) -> None:
        self.text = text


def task_name(fn: Callable[..., Any]) -> str:
    """The dotted name of a callable, as shown in the admin."""
    fn = getattr(fn, "__wrapped_task__", fn)
    module = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qualname}"
