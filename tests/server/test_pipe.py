"""The pipe to a worker process: whole messages whatever the reads cut, a time
limit, and the end of the other side; over a real socket pair."""

from __future__ import annotations

import multiprocessing
import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from leek.server.pipe import BUFFER, LENGTH, Pipe


@pytest.fixture
def ends() -> Iterator[tuple[Pipe, Pipe]]:
    ours, theirs = multiprocessing.Pipe()
    pipes = Pipe(ours), Pipe(theirs)
    yield pipes
    for pipe in pipes:
        pipe.close()


def test_messages_come_whole_and_in_order_however_the_bytes_arrive(
    ends: tuple[Pipe, Pipe],
) -> None:
    reader, writer = ends
    messages: list[tuple[Any, ...]] = [("run", i, b"x" * (i * 997)) for i in range(40)]
    messages.append(("large", b"y" * (3 * BUFFER + 5)))  # past the buffer: it grows
    messages.append(("after", 1))
    stream = b"".join(LENGTH.pack(len(body)) + body for body in (pickle.dumps(m) for m in messages))

    def dribble() -> None:  # cut anywhere, lengths included
        for start in range(0, len(stream), 7001):
            writer.sock.sendall(stream[start : start + 7001])
            time.sleep(0.0005)

    thread = threading.Thread(target=dribble)
    thread.start()
    got = [reader.receive(timeout=10) for _ in messages]
    thread.join()
    assert got == messages
    assert len(reader._buf) == BUFFER  # the large message's room is given back


def test_several_messages_in_one_read_are_each_returned(
    ends: tuple[Pipe, Pipe],
) -> None:
    reader, writer = ends
    for i in range(5):
        writer.send(("progress", i * 10.0, f"step {i}"))
    writer.send(("done", (True,), 0))
    time.sleep(0.05)  # all of it lands before the first read
    got = [reader.receive() for _ in range(6)]
    assert got[0] == ("progress", 0.0, "step 0")
    assert got[-1] == ("done", (True,), 0)


def test_nothing_within_the_limit_raises_timeout_and_the_next_message_still_comes(
    ends: tuple[Pipe, Pipe],
) -> None:
    reader, writer = ends
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="no message within 0.2 s"):
        reader.receive(timeout=0.2)
    assert 0.15 < time.monotonic() - started < 2
    writer.send(("done", 1))
    assert reader.receive(timeout=0.2) == ("done", 1)
    writer.send(("done", 2))
    assert reader.receive() == ("done", 2)  # no limit again


def test_the_other_end_gone_between_messages_is_eof_and_a_send_fails(
    ends: tuple[Pipe, Pipe],
) -> None:
    reader, writer = ends
    writer.send(("ready", 1))
    writer.close()
    assert reader.receive() == ("ready", 1)
    with pytest.raises(EOFError):
        reader.receive()
    with pytest.raises(OSError):
        reader.send(("stop",))
