"""The pipe between a worker thread and its worker process: whole messages,
one system call each way.

Each message is a tuple of plain values, pickled by the standard pickler
after its length (4 bytes, little-endian). multiprocessing's Connection reads
a message's length and its body in two reads, and waits for it with a third
call (poll) when a time limit applies. Here a message is sent in one write and
read, when it fits the buffer (nearly always), in one: the time limit is the
socket's own (SO_RCVTIMEO), set only when it changes. Every system call
releases the interpreter lock, which another of the broker's threads then
takes, so each one saved saves a hand-off of the lock too.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
from typing import Any

#: The length before each message.
LENGTH = struct.Struct("<I")
#: Bytes the receive buffer starts with; a longer message grows it.
BUFFER = 65536


class Pipe:
    """One end of a worker process's pipe, made of the descriptor of a
    multiprocessing Connection (which it closes): what spawn hands a child."""

    def __init__(self, conn: Any) -> None:
        self.sock = socket.socket(fileno=os.dup(conn.fileno()))
        conn.close()
        self._buf = bytearray(BUFFER)
        self._start = self._end = 0  # received and not yet read: _buf[_start:_end]
        self._limit = 0.0  # the receive timeout set on the socket (0: none)

    def send(self, message: tuple[Any, ...]) -> None:
        """Send one message; OSError when the other end is gone."""
        body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self.sock.sendall(LENGTH.pack(len(body)) + body)

    def receive(self, timeout: float | None = None) -> Any:
        """The next message; TimeoutError when nothing arrives for `timeout`
        seconds, EOFError when the other end is gone between messages.

        A caller that waits for one deadline passes the same `timeout` each
        time it can (the attempt's time limit), so the socket is not set anew."""
        self._wait(timeout)
        while True:
            have = self._end - self._start
            if have >= LENGTH.size:
                size = LENGTH.unpack_from(self._buf, self._start)[0] + LENGTH.size
                if have >= size:
                    body = memoryview(self._buf)[self._start + LENGTH.size : self._start + size]
                    try:
                        return pickle.loads(body)  # noqa: S301 - our own end of our own pipe
                    finally:
                        body.release()
                        self._start += size
                        if self._start == self._end:
                            self._start = self._end = 0
                            if len(self._buf) > BUFFER:  # a large message's room is given back
                                self._buf = bytearray(BUFFER)
                if size > len(self._buf) - self._start:
                    self._make_room(size)
            elif self._start and len(self._buf) - self._start < LENGTH.size:
                self._make_room(LENGTH.size)
            try:
                got = self.sock.recv_into(memoryview(self._buf)[self._end :])
            except BlockingIOError:  # the socket's receive timeout
                raise TimeoutError(f"no message within {timeout:g} s") from None
            if not got:
                raise EOFError("the other end of the pipe is gone")
            self._end += got

    def _wait(self, timeout: float | None) -> None:
        """Set the socket's receive timeout to `timeout`, if it differs."""
        limit = 0.0 if timeout is None else max(timeout, 1e-6)
        if limit != self._limit:
            seconds = int(limit)
            micro = int(round((limit - seconds) * 1_000_000))
            value = struct.pack("ll", seconds, micro)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
            self._limit = limit

    def _make_room(self, size: int) -> None:
        """Move what is unread to the front, and grow the buffer to hold `size` bytes."""
        unread = self._buf[self._start : self._end]
        if size > len(self._buf):
            self._buf = bytearray(size)
        self._buf[: len(unread)] = unread
        self._start, self._end = 0, len(unread)

    def close(self) -> None:
        self.sock.close()
