"""A process forked after it connected (a pre-fork web server's master that
pushed before forking its workers) connects anew in the child.

Its sockets are the parent's too: a child that wrote on one would interleave
its frames with the parent's and read the parent's replies.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from typing import Any

import leek
from leek.client import connection, spread
from tests import tasks
from tests.conftest import BrokerProcess

PUSHES = 200


def forked(child: Callable[[], str]) -> tuple[int, str]:
    """Run `child` in a forked process; its exit status and what it returned
    (or the error it raised)."""
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # a fork beside threads
        pid = os.fork()
    if pid == 0:
        os.close(read)
        code, said = 0, ""
        try:
            said = child()
        except BaseException as exc:
            code, said = 1, f"{type(exc).__name__}: {exc}"
        finally:
            os.write(write, said.encode()[:4000])
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        said = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), said


def local_port() -> int:
    conn: Any = getattr(connection._local, connection.ORDERED_SLOT)
    port: int = conn.frames.sock.getsockname()[1]
    return port


def test_a_child_forked_after_a_push_connects_anew_while_its_parent_pushes_on(
    broker: BrokerProcess,
) -> None:
    leek.push_task_to_queue(tasks.add, 1, 2)
    parent_port = local_port()
    errors: list[BaseException] = []

    def parent_pushes() -> None:
        try:
            leek.ping()
            for i in range(PUSHES):
                leek.push_task_to_queue(tasks.add, i, 0)
        except BaseException as exc:
            errors.append(exc)

    def child() -> str:
        for i in range(PUSHES):
            leek.push_task_to_queue(tasks.add, i, 1)
        return str(local_port())

    # The parent's pushes go on its own thread's connection: the main thread's,
    # the one the child inherits, is the one both would write on.
    pusher = threading.Thread(target=parent_pushes)
    pusher.start()
    status, said = forked(child)
    for i in range(PUSHES):
        leek.push_task_to_queue(tasks.add, i, 2)
    pusher.join()
    assert status == 0, said
    assert int(said) != parent_port
    assert local_port() == parent_port  # the parent's connection lives on
    assert not errors


def test_workers_forked_together_begin_their_spread_at_different_brokers() -> None:
    brokers = [("10.0.0.1", 7000), ("10.0.0.2", 7000), ("10.0.0.3", 7000)]
    firsts = set()
    for _ in range(12):
        status, said = forked(lambda: str(spread.order(brokers)[0]))
        assert status == 0, said
        firsts.add(said)
    assert len(firsts) > 1  # the same turn in all twelve: 3 ** -11 by chance
