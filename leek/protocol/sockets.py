"""Frames over one connected socket, for the client and the broker alike.

:class:`FrameSocket` cuts frames from one receive buffer and writes each in one
call. The socket stays blocking and the kernel enforces its timeouts
(``SO_RCVTIMEO``/``SO_SNDTIMEO``), so a read or a write is one system call,
where Python's own socket timeouts add a ``poll`` to each and an ``ioctl`` to
each change of timeout.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ..exceptions import ProtocolError
from .frame import HEADER, PREFIX, body_length, encode, open_frame

if TYPE_CHECKING:
    from .tls import Channel

#: The most bytes one receive asks the kernel for.
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

    With `tls` (a :class:`~leek.protocol.tls.Channel` whose handshake is done),
    frames travel encrypted: reads take the channel's plaintext, and each frame
    is sealed under the write lock, so what is queued above is ciphertext.
    """

    def __init__(
        self,
        sock: socket.socket,
        key: bytes,
        max_size: int,
        timeout: float,
        never_wait: bool = False,
        tls: Channel | None = None,
    ) -> None:
        self.sock = sock
        self.tls = tls
        self._recv = sock.recv if tls is None else tls.recv
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
                chunk = self._recv(RECV_SIZE)
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
            if self.tls is not None:
                frame = self.tls.seal(frame)
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
