"""Bad input on a real socket: refused before pickle, and the broker keeps serving."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import leek
from leek.models import Task
from leek.protocol.frame import HEADER, MAGIC, encode
from tests import tasks
from tests.conftest import BrokerProcess, task_batch, task_message, wait_for
from tests.protocol.wire import exchange, messages, refusal, request


class Mark:
    """Unpickling this leaves a file: proof that bytes reached pickle."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> Any:
        return (tasks.append_line, (self.path, "unpickled"))


def still_serving() -> None:
    assert leek.push_task_to_queue(tasks.add, 20, 22).result(timeout=10) == 42


def test_a_bad_signature_is_refused_and_never_unpickled(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    mark = tmp_path / "mark"
    frame = encode(b"not-the-secret", (1, "enqueue", Mark(mark)))
    assert refusal(exchange(broker.port, frame)) == "BadSignature"
    assert not mark.exists()
    still_serving()
    assert "frame rejected" in broker.output()


def test_a_truncated_frame_closes_the_connection(broker: BrokerProcess, tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    frame = request((1, "enqueue", Mark(mark)))
    assert refusal(exchange(broker.port, frame[: len(frame) // 2])) == "ProtocolError"
    assert not mark.exists()
    still_serving()


def test_an_oversized_length_is_refused_unread(broker_factory: Any, tmp_path: Path) -> None:
    broker = broker_factory(LEEK_MAX_FRAME="1024")
    header = HEADER.pack(MAGIC, 1 << 31)
    assert (
        refusal(exchange(broker.port, header + os.urandom(64), half_close=False)) == "FrameTooLarge"
    )
    still_serving()


def test_random_bytes_are_refused(broker: BrokerProcess) -> None:
    for _ in range(5):
        assert refusal(exchange(broker.port, os.urandom(200))) == "ProtocolError"
    still_serving()
    assert leek.stats()[1]["rejected_frames"] == 5


def test_a_silent_half_frame_is_dropped_at_the_frame_deadline(broker_factory: Any) -> None:
    broker = broker_factory(LEEK_FRAME_TIMEOUT="0.5")
    with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as sock:
        sock.sendall(MAGIC + struct.pack(">I", 10))
        assert sock.recv(100) == b""  # closed by the broker, not by us
    still_serving()


def test_an_unknown_verb_is_an_error_reply(broker: BrokerProcess) -> None:
    from leek.client import connection

    with pytest.raises(leek.LeekError, match="unknown verb 'dance'"):
        connection.call("dance", {})
    still_serving()


def test_sending_the_same_task_twice_makes_one_task(broker: BrokerProcess) -> None:
    message = task_message(tasks.add, 1, 2)
    first = exchange(broker.port, request((1, "enqueue", message)))
    second = exchange(broker.port, request((1, "enqueue", message)))  # a client's resend
    assert messages(first) == messages(second) == [(1, True, message["id"])]
    handle = leek.TaskHandle(message["id"])
    assert handle.result(timeout=10) == 3
    assert Task.objects.count() == 1
    assert leek.handled() == (True, 1)


def test_a_resent_batch_runs_only_its_new_tasks(broker: BrokerProcess) -> None:
    old = [task_message(tasks.add, i, 1) for i in range(3)]
    exchange(broker.port, request((1, "enqueue_many", old)))
    new = [task_message(tasks.add, i, 100) for i in range(3)]
    batch = old[:2] + new + old[2:]  # a resent batch, with new tasks among the old
    exchange(broker.port, request((1, "enqueue_many", batch)))
    results = [leek.TaskHandle(m["id"]).result(timeout=10) for m in batch]
    assert results == [1, 2, 100, 101, 102, 3]
    assert Task.objects.count() == 6
    wait_for(leek.handled, equals=(True, 6))
    time.sleep(0.3)  # a task run twice would show here
    assert leek.handled() == (True, 6)


def test_a_batch_that_names_one_id_twice_runs_it_once(broker: BrokerProcess) -> None:
    message = task_message(tasks.add, 2, 3)
    exchange(broker.port, request((1, "enqueue_many", [message, message])))
    assert leek.TaskHandle(message["id"]).result(timeout=10) == 5
    wait_for(leek.handled, equals=(True, 1))
    time.sleep(0.3)  # a second run would show here
    assert leek.handled() == (True, 1)
    assert Task.objects.count() == 1


def test_a_resent_enqueue_batch_makes_its_tasks_once(broker: BrokerProcess) -> None:
    ids, batch = task_batch((tasks.add, (1, 2)), (tasks.add, (3, 4)))
    first = exchange(broker.port, request((1, "enqueue_batch", batch)))
    second = exchange(broker.port, request((1, "enqueue_batch", batch)))
    assert messages(first) == messages(second) == [(1, True, 2)]  # both accepted
    assert [leek.TaskHandle(i).result(timeout=10) for i in ids] == [3, 7]
    wait_for(leek.handled, equals=(True, 2))
    time.sleep(0.3)  # a task run twice would show here
    assert leek.handled() == (True, 2)
    assert Task.objects.count() == 2


def test_an_empty_batch_is_answered(broker: BrokerProcess) -> None:
    frames = request((1, "enqueue_many", [])) + request((2, "enqueue_batch", task_batch()[1]))
    assert messages(exchange(broker.port, frames)) == [(1, True, []), (2, True, 0)]
    still_serving()


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda b: b["tasks"].__setitem__(1, (b"\x01" * 15, *b["tasks"][1][1:])), "16 bytes"),
        (lambda b: b["tasks"].__setitem__(1, b["tasks"][1][:3]), "not enough values"),
        (lambda b: b["options"].__setitem__("priority", 2**40), "priority must be"),
        (lambda b: b.pop("options"), "options"),
    ],
    ids=["short id", "short task", "option out of range", "no options"],
)
def test_a_bad_enqueue_batch_is_refused_whole(
    broker: BrokerProcess, change: Any, error: str
) -> None:
    ids, batch = task_batch((tasks.add, (1, 2)), (tasks.add, (3, 4)), (tasks.add, (5, 6)))
    change(batch)
    good = task_message(tasks.add, 7, 8)
    frames = request((1, "enqueue_batch", batch)) + request((2, "enqueue", good))
    refused, accepted = messages(exchange(broker.port, frames))
    assert refused[:2] == (1, False)
    assert error in refused[2]["message"]
    assert accepted == (2, True, good["id"])  # the connection goes on
    assert leek.TaskHandle(good["id"]).result(timeout=10) == 15
    assert not Task.objects.filter(
        pk__in=ids
    ).exists()  # none of the batch, not even its good tasks
    still_serving()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("priority", 2**70),
        ("max_retries", -1),
        ("timeout", float("nan")),
        ("run_after", float("inf")),
    ],
)
def test_a_field_out_of_range_is_refused_and_loses_no_other_task(
    broker: BrokerProcess, field: str, value: Any
) -> None:
    good, bad = task_message(tasks.add, 1, 2), task_message(tasks.add, 3, 4)
    bad[field] = value
    frames = request((1, "enqueue", bad)) + request((2, "enqueue", good))
    refused, accepted = messages(exchange(broker.port, frames))
    request_id, ok, reply = refused
    assert (request_id, ok) == (1, False)
    assert reply["error"] == "ValueError"
    assert f"{field} must be" in reply["message"]
    assert accepted == (2, True, good["id"])
    assert leek.TaskHandle(good["id"]).result(timeout=10) == 3
    assert not Task.objects.filter(pk=bad["id"]).exists()
    still_serving()


def test_a_client_with_the_wrong_secret_gets_a_clear_error(
    broker: BrokerProcess, leek_settings: Any
) -> None:
    from leek.client import connection

    connection.close()
    leek_settings(SECRET="a-different-secret", FALLBACK="raise")
    with pytest.raises(leek.AuthenticationFailed, match="LEEK_SECRET"):
        leek.push_task_to_queue(tasks.add, 1, 1)
    assert Task.objects.count() == 0  # with FALLBACK "database" it is spooled, and logged
    ok, reason = leek.ping()
    assert not ok and "LEEK_SECRET" in reason


def test_a_missing_module_fails_the_task_without_retrying(broker: BrokerProcess) -> None:
    import pickle

    message = task_message(tasks.add, 1, 2, max_retries=3)
    from leek.protocol.payload import TASK_MAGIC, signed

    body = pickle.dumps((tasks.add, (1, 2), {})).replace(b"tests.tasks", b"gone.module")
    message["payload"] = signed(TASK_MAGIC, body)
    from leek.client import connection

    connection.call("enqueue", message)
    with pytest.raises(leek.TaskFailed, match="gone") as caught:
        leek.TaskHandle(message["id"]).result(timeout=10)
    assert caught.value.remote_type == "leek.exceptions.PayloadError"
    assert Task.objects.get().attempts == 1  # not retried blindly


def test_a_client_that_never_reads_its_replies_stalls_nobody(broker_factory: Any) -> None:
    broker = broker_factory(LEEK_FRAME_TIMEOUT="60", LEEK_WORKERS="0")
    message = task_message(tasks.noop)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # its replies pile up soon
    sock.connect(("127.0.0.1", broker.port))
    stop = threading.Event()

    def flood() -> None:  # the same task again and again, never reading a reply
        try:
            while not stop.is_set():
                sock.sendall(b"".join(request((1, "enqueue", message)) for _ in range(50)))
        except OSError:
            pass  # the broker gave up on it

    flooder = threading.Thread(target=flood)
    flooder.start()
    try:
        time.sleep(1.0)  # the broker's replies to it have filled every buffer
        started = time.monotonic()
        handles = [leek.push_task_to_queue(tasks.noop) for _ in range(50)]
        took = time.monotonic() - started
    finally:
        stop.set()
        sock.shutdown(socket.SHUT_RDWR)  # wakes a send blocked on the full socket
        sock.close()
        flooder.join()
    assert took < 20, f"50 pushes took {took:.1f} s beside a client that does not read"
    assert Task.objects.filter(pk__in=[h.id for h in handles]).count() == 50
    assert leek.ping() == (True, "I'm OK")
