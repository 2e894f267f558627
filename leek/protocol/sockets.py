"""Frames over one connected socket, for the client and the broker alike.

:class:`FrameSocket` receives into one buffer it keeps and writes each frame
in one call. A frame that fits the buffer is checked and unpickled where it
lies; a larger one is received straight into a buffer of its own size, its
signature computed as its bytes arrive. The socket stays blocking and the
kernel enforces its timeouts (``SO_RCVTIMEO``/``SO_SNDTIMEO``), so a read or a
write is one system call, where Python's own socket timeouts add a ``poll`` to
each and an ``ioctl`` to each change of timeout.

A read may spin first (`spin`, the SPIN setting; spin.py tells when and why):
poll the socket without blocking for a few hundred microseconds before it
sleeps in the kernel.
"""

from __future__ import annotations

import contextlib
import hmac
import mmap
import os
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..exceptions import ProtocolError
from ..threads import Named
from .frame import (
    HEADER,
    NONCE_SIZE,
    OVERHEAD,
    PREFIX,
    TAG_SIZE,
    Check,
    Frame,
    Keys,
    body_length,
    encode,
    open_frame,
    refusal,
    unpack,
)
from .mac import mac
from .spin import WAIT_WEIGHT, Latest, poll

if TYPE_CHECKING:
    from .tls import Channel

#: Bytes of the receive buffer every connection keeps: the most one receive
#: asks the kernel for, and the largest frame read where it lies.
RECV_SIZE = 65536


class _Large:
    """A frame larger than the receive buffer, received into a buffer of its
    own size and signed as its bytes arrive.

    The buffer is an anonymous mapping: the kernel gives it memory as the
    bytes arrive, so a peer that announces a large frame and sends little
    holds little."""

    def __init__(self, size: int, head: memoryview, key: bytes) -> None:
        self.size = size
        self.signed = size - TAG_SIZE
        self.frame = memoryview(mmap.mmap(-1, size))
        self.have = len(head)
        self.frame[: self.have] = head
        self.mac = mac(key)
        self.running = self.mac.begin()
        self.running.update(self.frame[: min(self.have, self.signed)])

    @property
    def whole(self) -> bool:
        return self.have >= self.size

    def room(self) -> memoryview:
        """Where the next bytes go."""
        return self.frame[self.have :]

    def received(self, got: int) -> None:
        """`got` bytes arrived in `room`: sign what of them is signed."""
        have = self.have
        if have < self.signed:
            self.running.update(self.frame[have : min(have + got, self.signed)])
        self.have = have + got

    def open(self, reply_key: bytes, check: Check | None) -> Frame:
        """The frame, once whole: its tag compared, then its body unpickled."""
        frame, signed = self.frame, self.signed
        tag = frame[signed:]
        if not hmac.compare_digest(tag, self.mac.finish(self.running)):
            raise refusal(frame[:signed], tag, reply_key)
        return unpack(frame, frame[PREFIX:signed], check)


class FrameSocket:
    """Frames over one connected socket: read from one buffer, each written in one call.

    Frames are signed with `keys.send` and checked with `keys.receive`; with
    `check` (the broker's replay guard), each frame whose tag matched is
    checked again by its stamp and nonce before its body is unpickled.
    Frames are stamped with this machine's clock plus `clock_offset`.

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
        keys: Keys,
        max_size: int,
        timeout: float,
        never_wait: bool = False,
        check: Check | None = None,
        tls: Channel | None = None,
        spin: float = 0.0,
    ) -> None:
        self.sock = sock
        self.spin = spin if tls is None else 0.0
        self._wait = 0.0  # seconds a frame took to come, a moving average
        self.spins = 0  # waits that polled the socket before sleeping
        self.spun = 0  # of which, those that received without sleeping
        self.keys = keys
        self.tls = tls
        self._recv_into = sock.recv_into if tls is None else tls.recv_into
        self.max_size = max_size
        self.timeout = timeout
        self.never_wait = never_wait
        self.check = check
        #: Seconds added to this machine's clock to stamp a frame: a client
        #: learns them from a broker that refused a frame as stale.
        self.clock_offset = 0.0
        self._buf = memoryview(bytearray(RECV_SIZE))
        self._start = self._end = 0  # the bytes received and not yet read: _buf[_start:_end]
        self._large: _Large | None = None  # a frame larger than _buf, being received (`pull`)
        #: Called once frames queued behind a short write have all been sent.
        self.on_paid: Callable[[], object] | None = None
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

    def read(self, idle: float | None = None) -> Frame | None:
        """The next frame, or None when the peer closes between frames.

        Raises TimeoutError at either deadline, and what
        :func:`~leek.protocol.frame.open_frame` raises for a bad frame."""
        buf = self._buf
        since = time.monotonic()  # idle since, or the frame's start once bytes arrive
        while True:
            frame = self.whole()
            if frame is not None:
                return frame
            if self._large is not None:
                return self._read_large(self._large, since)
            start, end = self._start, self._end
            if start:  # room for the rest of the frame: move what it has to the front
                end -= start
                buf[:end] = buf[start : start + end]
                self._start, self._end = 0, end
            if end and time.monotonic() - since >= self.timeout:
                raise TimeoutError(f"frame not finished within {self.timeout:g} s of its start")
            try:
                got = -1
                if self._wait < self.spin:
                    spun = poll(self, self.sock.recv_into, buf[end:], self.spin)
                    if spun is not None:
                        self.spins += 1
                        if spun >= 0:
                            self.spun += 1
                            got = spun
                if got < 0:
                    got = self._recv_into(buf[end:])
            except BlockingIOError:  # the kernel's receive timeout
                waited = time.monotonic() - since
                if end or idle is None or waited >= idle:
                    raise TimeoutError(
                        f"frame not finished within {self.timeout:g} s of its start"
                        if end
                        else f"nothing received for {waited:.1f} s"
                    ) from None
                continue
            if not got:
                if end:
                    raise ProtocolError(
                        f"connection closed mid-frame: {end} bytes of a frame received"
                    )
                return None
            if not end:
                now = time.monotonic()
                self._wait += (now - since - self._wait) * WAIT_WEIGHT
                Latest.received(self, now)
                since = now
            self._end = end + got

    def _read_large(self, large: _Large, since: float) -> Frame:
        """The rest of a frame larger than the receive buffer."""
        while not large.whole:
            if time.monotonic() - since >= self.timeout:
                raise TimeoutError(f"frame not finished within {self.timeout:g} s of its start")
            try:
                got = self._recv_into(large.room())
            except BlockingIOError:  # the kernel's receive timeout
                raise TimeoutError(
                    f"frame not finished within {self.timeout:g} s of its start"
                ) from None
            if not got:
                raise ProtocolError(
                    f"connection closed mid-frame: {large.have} bytes of a frame received"
                )
            large.received(got)
        self._large = None
        return large.open(self.keys.send, self.check)

    # -- for a reader that polls many connections (server/loop.py) -------------

    def pull(self) -> int:
        """Receive what has arrived, without waiting: the bytes received, 0
        when the peer closed. Raises BlockingIOError when nothing has.

        The receive buffer always has room: `whole` moves a frame larger than
        it to a buffer of its own, and the bytes of a frame that fits are
        moved to its front here."""
        large = self._large
        if large is not None:
            got = self.sock.recv_into(large.room(), 0, socket.MSG_DONTWAIT)
            large.received(got)
            return got
        start, end = self._start, self._end
        buf = self._buf
        if start:
            end -= start
            buf[:end] = buf[start : start + end]
            self._start, self._end = 0, end
        got = self.sock.recv_into(buf[end:], 0, socket.MSG_DONTWAIT)
        self._end = end + got
        return got

    def whole(self) -> Frame | None:
        """The next frame received whole, checked and unpickled; None while
        none is. Raises what :func:`~leek.protocol.frame.open_frame` raises
        for a bad frame."""
        large = self._large
        if large is not None:
            if not large.whole:
                return None
            self._large = None
            return large.open(self.keys.send, self.check)
        start, end = self._start, self._end
        if end - start < HEADER.size:
            return None
        buf = self._buf
        size = body_length(buf, self.max_size, start) + OVERHEAD
        if end - start >= size:
            if start + size == end:
                self._start = self._end = 0
            else:
                self._start = start + size
            return open_frame(
                self.keys.receive, buf[start : start + size], self.check, self.keys.send
            )
        if size > len(buf):
            self._large = _Large(size, buf[start:end], self.keys.receive)
            self._start = self._end = 0
        return None

    @property
    def pending(self) -> int:
        """Bytes received and not read yet: part of a frame, or more."""
        return self._large.have if self._large is not None else self._end - self._start

    @property
    def partial(self) -> bool:
        """Whether bytes have been received and not read yet."""
        return self._end > self._start or self._large is not None

    @property
    def paid(self) -> bool:
        """Whether the peer has taken every frame queued for it (`never_wait`)."""
        return self._paid.is_set()

    def write(
        self, message: tuple[Any, ...], nonce: bytes | None = None, bounded: bool = False
    ) -> bytes:
        """Send one frame and return its nonce: `nonce` for a reply (that of
        the request it answers), fresh random bytes when None. Raises OSError
        when the peer is gone or stops reading; when `bounded`, FrameTooLarge
        for a body over `max_size`, before a byte is sent."""
        if nonce is None:
            nonce = os.urandom(NONCE_SIZE)
        frame = encode(self.keys.send, message, nonce, time.time() + self.clock_offset)
        if bounded:
            body_length(frame, self.max_size)  # the reader's own check, on its header
        with self._write_lock:
            if self.tls is not None:
                frame = self.tls.seal(frame)
            if not self.never_wait:
                self.sock.sendall(frame)
                return nonce
            if self._owed is None:
                try:
                    sent = self.sock.send(frame, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    sent = 0
                if sent == len(frame):
                    return nonce
                self._owed, self._owed_bytes = deque(), 0
                self._paid.clear()
                Named(target=self._send_owed, name="leek-send", daemon=True).start()
                frame = frame[sent:]
            if self._owed_bytes + len(frame) > self.max_size:
                self._owed.clear()
                self._owed_bytes = 0
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)
                raise OSError(f"peer owed over {self.max_size} bytes of replies: cut off")
            self._owed.append(frame)
            self._owed_bytes += len(frame)
        return nonce

    def _send_owed(self) -> None:
        """Send the queued frames, waiting on the peer as long as the timeout lets."""
        while True:
            with self._write_lock:
                if not self._owed:
                    self._owed = None
                    self._paid.set()
                    paid = self.on_paid
                    break
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
        if paid is not None:
            paid()

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
