"""The event loop: one thread reads every plain connection of a real broker.

Connections hold no thread each; a verb that waits for the database is
answered aside, so it holds up no other connection; a frame larger than the
receive buffer, sent slowly, is read between the others' requests; and the
deadlines (a frame's, an idle connection's) close whoever is late.
"""

from __future__ import annotations

import select
import signal
import time
import uuid
from typing import Any

from leek.models import Task
from leek.protocol.frame import OVERHEAD, encode
from leek.protocol.sockets import RECV_SIZE, FrameSocket
from tests import tasks
from tests.conftest import BrokerProcess, task_message
from tests.server.test_exhaustion import closed_by_broker, pid_of, ping_on, status, trusted
from tests.server.test_stranded import writes_held


def readable(frames: FrameSocket) -> bool:
    """Whether the broker has sent something on `frames` (a reply) by now."""
    return bool(select.select([frames.sock], [], [], 0)[0])


def test_connections_hold_no_thread_each(broker: BrokerProcess) -> None:
    pid = pid_of(broker)
    first = trusted(broker.port)
    before = status(pid, "Threads")
    many = [trusted(broker.port) for _ in range(100)]
    try:
        assert all(ping_on(frames)[1] for frames in many)
        assert status(pid, "Threads") <= before
    finally:
        for frames in [first, *many]:
            frames.close()


def test_a_verb_that_waits_for_the_database_holds_up_no_other_connection(
    broker_factory: Any,
) -> None:
    broker = broker_factory(LEEK_WRITE_WAIT="30")
    waiting, other = trusted(broker.port), trusted(broker.port)
    try:
        with writes_held(Task._meta.db_table):
            # A cancel writes: it waits for the lock the test holds.
            waiting.write((5, "cancel", {"id": str(uuid.uuid4())}))
            time.sleep(0.5)
            reply = ping_on(other)  # answered meanwhile, on another connection
            assert reply is not None and reply[0] == 2
            assert not readable(waiting)  # the cancel still waits
        frame = waiting.read()
        assert frame is not None and frame.message == (5, True, False)
    finally:
        waiting.close()
        other.close()


def test_a_push_another_process_s_lock_holds_back_holds_up_no_other_connection(
    broker: BrokerProcess,
) -> None:
    pushing, other = trusted(broker.port), trusted(broker.port)
    try:
        with writes_held(Task._meta.db_table):
            # The push waits for the lock (SQLite's timeout here is 20 s; on
            # PostgreSQL, until it is let go) on the writer thread: the loop
            # answers the others meanwhile.
            pushing.write((7, "enqueue", task_message(tasks.add, 2, 3)))
            time.sleep(0.5)
            reply = ping_on(other)
            assert reply == (2, True, {"ok": True, "message": "I'm OK"})
            assert not readable(pushing)  # not acknowledged: not committed
        frame = pushing.read()  # committed once the lock is let go
        assert frame is not None and frame.message[:2] == (7, True), frame
    finally:
        pushing.close()
        other.close()


def test_a_stopping_broker_answers_the_push_it_read_and_serves_no_new_request(
    broker: BrokerProcess,
) -> None:
    pushing, other = trusted(broker.port), trusted(broker.port)
    message = task_message(tasks.add, 2, 3)
    assert broker.proc is not None
    try:
        bad = {**task_message(tasks.add, 1, 1), "max_retries": -1}  # the broker checks again
        other.write((5, "enqueue", bad))
        refused = other.read()  # answered at once: nothing owed for it at the stop
        assert refused is not None and refused.message[:2] == (5, False), refused
        with writes_held(Task._meta.db_table):
            pushing.write((7, "enqueue", message))
            time.sleep(0.5)  # read, and held back by the lock
            broker.proc.send_signal(signal.SIGTERM)
            time.sleep(1.5)  # stopping: it waits for the push's commit
            assert not readable(pushing)
            try:  # a request on another connection now closes it, unanswered
                assert ping_on(other) is None
            except ConnectionResetError:
                pass
        frame = pushing.read()  # committed once the lock is let go, then answered
        assert frame is not None and frame.message[:2] == (7, True), frame
        assert broker.proc.wait(30) == 0
        assert Task.objects.filter(pk=message["id"]).exists()
        assert "pushes unanswered" not in broker.output()
    finally:
        pushing.close()
        other.close()


def test_a_large_frame_sent_slowly_is_read_between_other_requests(
    broker: BrokerProcess,
) -> None:
    big, other = trusted(broker.port), trusted(broker.port)
    try:
        message = task_message(tasks.add, "x" * (3 * RECV_SIZE), "y")
        frame = encode(big.keys.send, (7, "enqueue", message))
        assert len(frame) > RECV_SIZE + OVERHEAD
        pieces = [frame[i : i + 50_000] for i in range(0, len(frame), 50_000)]
        for piece in pieces:
            big.sock.sendall(piece)
            reply = ping_on(other)  # served while the large frame is half sent
            assert reply is not None and reply[1] is True
        answer = big.read()
        assert answer is not None and answer.message == (7, True, message["id"])
        assert Task.objects.filter(pk=message["id"]).exists()
    finally:
        big.close()
        other.close()


def test_a_large_frame_with_a_bad_signature_is_refused(broker: BrokerProcess) -> None:
    big = trusted(broker.port)
    try:
        message = task_message(tasks.add, "x" * (2 * RECV_SIZE), "y")
        frame = bytearray(encode(big.keys.send, (7, "enqueue", message)))
        frame[-1] ^= 1
        big.sock.sendall(frame)
        answer = big.read()
        assert answer is not None and answer.message[:2] == (0, False)
        assert answer.message[2]["error"] == "BadSignature"
        assert closed_by_broker(big.sock)
        assert not Task.objects.filter(pk=message["id"]).exists()
    finally:
        big.close()


def test_an_idle_connection_is_closed_at_the_idle_deadline(broker_factory: Any) -> None:
    broker = broker_factory(LEEK_IDLE_TIMEOUT="1")
    idle, busy = trusted(broker.port), trusted(broker.port)
    try:
        for _ in range(8):  # 2 s of pings, each within the deadline of the last
            time.sleep(0.25)
            reply = ping_on(busy)
            assert reply is not None and reply[1] is True
        assert closed_by_broker(idle.sock, within=5)
    finally:
        idle.close()
        busy.close()
