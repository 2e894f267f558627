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

:class:`FrameSocket` carries frames over a connected socket, for the client and
the broker alike: frames are cut from one receive buffer and each is written in
one call. The socket stays blocking and the kernel enforces its timeouts
(``SO_RCVTIMEO``/``SO_SNDTIMEO``), so a read or a write is one system call,
where Python's own socket timeouts add a ``poll`` to each and an ``ioctl`` to
each change of timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import pickle
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, BinaryIO

import cloudpickle

from .exceptions import BadSignature, FrameTooLarge, PayloadError, ProtocolError

MAGIC = b"LK01"
HEADER = struct.Struct(">4sI")
TAG_SIZE = 32
PICKLE_PROTOCOL = 5


#: An HMAC that has taken its key and nothing else, per key: copying it costs
#: a third less than keying a new one, for each frame.
_KEYED: dict[bytes, Any] = {}


def sign(key: bytes, header: bytes, body: bytes) -> bytes:
    """The tag of a frame: HMAC-SHA256 of its header and body."""
    keyed = _KEYED.get(key)
    if keyed is None:
        keyed = _KEYED[key] = hmac.new(key, digestmod=hashlib.sha256)
    mac = keyed.copy()  # the key's hashing is done once, not for every frame
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


PREFIX = HEADER.size + TAG_SIZE
RECV_SIZE = 65536


class FrameSocket:
    """Frames over one connected socket: read from one buffer, each written in one call.

    `timeout` bounds every receive and send (the kernel's SO_RCVTIMEO and
    SO_SNDTIMEO); :meth:`read` turns it into two deadlines: a frame must finish
    within `timeout` of its first byte, and a connection may sit idle between
    frames for `idle` seconds (None: one `timeout`). Writes from several threads
    are serialised, so each frame goes out whole.

    With `never_wait` (the broker's side), a write never waits for the peer:
    what the socket cannot take at once is queued, in order, for a thread that
    sends it, so the thread that commits a batch and answers its clients is
    never held by one that stops reading. The reader of the connection calls
    :meth:`caught_up` before it reads the next request, which waits for that
    queue to empty: a peer that sends but does not read is slowed to the pace
    it reads at, and is cut off when it reads nothing for `timeout` seconds or
    is owed more than `max_size` bytes.
    """

    def __init__(
        self,
        sock: socket.socket,
        key: bytes,
        max_size: int,
        timeout: float,
        never_wait: bool = False,
    ) -> None:
        self.sock = sock
        self.key = key
        self.max_size = max_size
        self.timeout = timeout
        self.never_wait = never_wait
        self._buf = bytearray()
        self._write_lock = threading.Lock()
        self._owed: deque[bytes] | None = None  # frames queued behind a short write
        self._owed_bytes = 0
        self._paid = threading.Event()  # set while nothing is owed
        self._paid.set()
        sock.settimeout(None)
        seconds = max(timeout, 0.001)
        limit = struct.pack("ll", int(seconds), int(seconds % 1 * 1_000_000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)

    def read(self, idle: float | None = None) -> tuple[Any, ...] | None:
        """The next message, or None when the peer closes between frames.

        Raises TimeoutError at either deadline, and what :func:`read_frame`
        raises for a bad frame."""
        buf = self._buf
        since = time.monotonic()  # idle since, or the frame's start once bytes arrive
        while True:
            if len(buf) >= HEADER.size:
                end = PREFIX + body_length(bytes(buf[: HEADER.size]), self.max_size)
                if len(buf) >= end:
                    frame = bytes(buf[:end])
                    del buf[:end]
                    return open_frame(
                        self.key, frame[: HEADER.size], frame[HEADER.size : PREFIX], frame[PREFIX:]
                    )
            if buf and time.monotonic() - since >= self.timeout:
                raise TimeoutError(f"frame not finished within {self.timeout:g} s of its start")
            try:
                chunk = self.sock.recv(RECV_SIZE)
            except BlockingIOError:  # the kernel's receive timeout
                waited = time.monotonic() - since
                if buf or idle is None or waited >= idle:
                    raise TimeoutError(
                        f"frame not finished within {self.timeout:g} s of its start"
                        if buf
                        else f"nothing received for {waited:.1f} s"
                    ) from None
                continue
            if not chunk:
                if buf:
                    raise ProtocolError(
                        f"connection closed mid-frame: {len(buf)} bytes of a frame received"
                    )
                return None
            if not buf:
                since = time.monotonic()
            buf += chunk

    def write(self, message: tuple[Any, ...]) -> None:
        """Send one frame; OSError when the peer is gone or stops reading."""
        frame = encode(self.key, message)
        with self._write_lock:
            if not self.never_wait:
                self.sock.sendall(frame)
                return
            if self._owed is None:
                try:
                    sent = self.sock.send(frame, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    sent = 0
                if sent == len(frame):
                    return
                self._owed, self._owed_bytes = deque(), 0
                self._paid.clear()
                threading.Thread(target=self._send_owed, name="leek-send", daemon=True).start()
                frame = frame[sent:]
            if self._owed_bytes + len(frame) > self.max_size:
                self._owed.clear()
                self._owed_bytes = 0
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)
                raise OSError(f"peer owed over {self.max_size} bytes of replies: cut off")
            self._owed.append(frame)
            self._owed_bytes += len(frame)

    def _send_owed(self) -> None:
        """Send the queued frames, waiting on the peer as long as the timeout lets."""
        while True:
            with self._write_lock:
                if not self._owed:
                    self._owed = None
                    self._paid.set()
                    return
                data = self._owed.popleft()
                self._owed_bytes -= len(data)
            try:
                self.sock.sendall(data)
            except OSError:  # the peer is gone, or read nothing for a whole timeout
                with self._write_lock:
                    if self._owed is not None:
                        self._owed.clear()
                        self._owed_bytes = 0
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)

    def caught_up(self) -> bool:
        """Wait until the peer has taken every frame queued for it; False when
        it took nothing for `timeout` seconds (the connection is then shut)."""
        if self._paid.is_set() or self._paid.wait(self.timeout + 1):
            return True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        return False

    def close(self) -> None:
        self.sock.close()


#: The bits of a version 7 UUID that are neither its time nor its version and
#: variant: 74 random bits, under the version (bits 76-79) and variant (62-63).
_RANDOM_BITS = ((1 << 80) - 1) & ~(0xF << 76) & ~(0x3 << 62)
_VERSION_7 = 0x7 << 76 | 0x2 << 62


def new_task_id() -> uuid.UUID:
    """A UUID version 7 (RFC 9562): milliseconds since the epoch, then random bits.

    Ids made one after another sort together, so a task's row lands beside the
    last one in the primary-key index instead of on a random page."""
    return uuid.UUID(int=_stamp() | int.from_bytes(os.urandom(10), "big") & _RANDOM_BITS)


def new_task_ids(count: int) -> list[uuid.UUID]:
    """`count` version 7 UUIDs (see `new_task_id`), from one read of the system's
    random source: a batch of a thousand pays for one system call, not a thousand."""
    stamp = _stamp()
    noise = os.urandom(10 * count)
    return [
        uuid.UUID(int=stamp | int.from_bytes(noise[i : i + 10], "big") & _RANDOM_BITS)
        for i in range(0, 10 * count, 10)
    ]


def _stamp() -> int:
    """The time and version bits of a version 7 UUID made now."""
    return (time.time_ns() // 1_000_000) << 80 | _VERSION_7


def dump_task(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The payload of a task: importable callables by reference, others by value.

    The standard pickler goes first, as it is several times faster: it names
    importable functions and classes just as cloudpickle does. What it cannot
    pickle (lambdas, closures, local classes), what it would name in
    ``__main__`` (which a broker cannot import), and everything while a module
    is registered with ``cloudpickle.register_pickle_by_value``, goes through
    cloudpickle, which pickles it by value."""
    task = (fn, args, kwargs)
    if not cloudpickle.list_registry_pickle_by_value():
        try:
            payload = pickle.dumps(task, protocol=PICKLE_PROTOCOL)
        except Exception:  # noqa: S110 - cloudpickle below tries, and reports
            pass
        else:
            if b"__main__" not in payload:
                return payload
    try:
        by_value: bytes = cloudpickle.dumps(task, protocol=PICKLE_PROTOCOL)
        return by_value
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
