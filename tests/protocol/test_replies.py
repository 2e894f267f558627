"""A client takes a reply only from a broker, and only for the request it sent."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import leek
from leek import conf
from leek.client import connection
from leek.exceptions import AuthenticationFailed, BrokerUnavailable
from leek.models import Task
from leek.protocol.frame import Frame, Keys
from leek.protocol.sockets import FrameSocket
from tests import tasks
from tests.conftest import task_message

#: What a peer does with one client connection.
Serve = Callable[[socket.socket], None]


class Peer:
    """A TCP server on a real port that serves each connection with `serve`."""

    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.threads: list[threading.Thread] = []
        self.accepting = threading.Thread(target=self._accept)
        self.accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(sock,))
            thread.start()
            self.threads.append(thread)

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            try:
                self.serve(sock)
            except OSError:
                pass  # the client went away

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        except OSError:
            pass  # some systems refuse it on a listener
        self.listener.close()
        self.accepting.join(10)
        for thread in self.threads:
            thread.join(10)


@pytest.fixture
def peer(leek_settings: Callable[..., None]) -> Iterator[Callable[[Serve], Peer]]:
    """Start a peer; the test's client is pointed at it."""
    started: list[Peer] = []

    def start(serve: Serve) -> Peer:
        one = Peer(serve)
        started.append(one)
        connection.close()
        leek_settings(PORT=one.port, REPLY_TIMEOUT=5.0)
        return one

    yield start
    connection.close()
    for one in started:
        one.close()


def echo(sock: socket.socket) -> None:
    while chunk := sock.recv(65536):
        sock.sendall(chunk)


def broker_side(sock: socket.socket) -> FrameSocket:
    return FrameSocket(sock, Keys.broker(str(conf.get("SECRET")).encode()), 1 << 20, timeout=5)


def test_a_call_to_an_echo_server_is_refused_as_a_reflection(
    peer: Callable[[Serve], Peer],
) -> None:
    peer(echo)
    with pytest.raises(AuthenticationFailed, match="own enqueue request.*not a leek broker"):
        connection.call("enqueue", task_message(tasks.add, 1, 2))
    ok, reason = leek.ping()
    assert not ok and "not a leek broker" in reason


@pytest.mark.django_db(transaction=True)
def test_a_push_to_an_echo_server_is_never_lost_silently(
    peer: Callable[[Serve], Peer],
) -> None:
    peer(echo)
    try:
        handle = leek.push_task_to_queue(tasks.add, 1, 2)
    except AuthenticationFailed:
        assert not Task.objects.exists()  # refused, loudly
    else:  # or written to the database for a broker to pick up
        assert Task.objects.filter(pk=handle.id).exists()


def test_a_reply_that_names_another_request_is_refused(
    peer: Callable[[Serve], Peer],
) -> None:
    def wrong_nonce(sock: socket.socket) -> None:
        frames = broker_side(sock)
        while request := frames.read():
            frames.write((request.message[0], True, "accepted"), b"\x01" * 16)

    peer(wrong_nonce)
    with pytest.raises(AuthenticationFailed, match="reply to another request"):
        connection.call("enqueue", task_message(tasks.add, 1, 2))


def test_a_replayed_reply_is_refused(peer: Callable[[Serve], Peer]) -> None:
    replies: list[bytes] = []

    def replaying(sock: socket.socket) -> None:
        frames = broker_side(sock)
        request: Frame | None = frames.read()
        assert request is not None
        if replies:  # the reply of the first connection, to its request 1, sent again
            sock.sendall(replies[0])
            frames.read()
            return
        left, right = socket.socketpair()
        with left, right:
            FrameSocket(left, frames.keys, 1 << 20, timeout=5).write(
                (request.message[0], True, "the first"), request.nonce
            )
            replies.append(right.recv(65536))
        sock.sendall(replies[0])
        frames.read()

    peer(replaying)
    assert connection.call("ping", {}) == "the first"
    connection.close()  # a new connection: its first request is number 1 again
    with pytest.raises(AuthenticationFailed, match="reply to another request"):
        connection.call("ping", {})


def test_a_broker_with_a_smaller_frame_limit_names_it(
    broker_factory: Any, leek_settings: Callable[..., None]
) -> None:
    broker_factory(LEEK_MAX_FRAME="1024")
    with pytest.raises(BrokerUnavailable, match="FrameTooLarge: .* over the limit of 1024"):
        connection.call("enqueue", task_message(tasks.add, "x" * 4000, ""))
    assert leek.ping() == (True, "I'm OK")
