"""TLS between clients and a real broker: round trips, refusals, and frames over TLS."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

import leek
from leek import conf
from leek.models import Task
from leek.protocol import tls
from leek.protocol.frame import Keys, encode, read_frame
from leek.protocol.sockets import FrameSocket
from tests import tasks
from tests.conftest import REPO, broker_env, free_port, task_message, wait_for
from tests.server.test_stranded import writes_held
from tests.server.test_thread_names import thread_names


@dataclass
class Certs:
    """PEM files: a CA, the broker's certificate and a client's, and a stranger's CA."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    stranger_cert: Path  # a client certificate the other CA signed
    stranger_key: Path
    named_cert: Path  # the broker's, for the name broker.test only
    named_key: Path


def write_leaf(leaf: trustme.LeafCert, folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    for blob in leaf.cert_chain_pems:
        blob.write_to_path(str(cert), append=True)
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    other.cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    cert, key = write_leaf(ca.issue_cert("127.0.0.1", "localhost"), tmp_path, "broker")
    client_cert, client_key = write_leaf(ca.issue_cert("web-1"), tmp_path, "client")
    stranger_cert, stranger_key = write_leaf(other.issue_cert("web-2"), tmp_path, "stranger")
    named_cert, named_key = write_leaf(ca.issue_cert("broker.test"), tmp_path, "named")
    return Certs(
        tmp_path / "ca.pem",
        cert,
        key,
        client_cert,
        client_key,
        tmp_path / "other-ca.pem",
        stranger_cert,
        stranger_key,
        named_cert,
        named_key,
    )


def paths(**options: Any) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}


def tls_broker(
    broker_factory: Any, leek_settings: Any, certs: Certs
) -> tuple[Any, ssl.SSLContext, Keys]:
    """A broker on TLS, a client's context that trusts its CA, and the
    client's keys, for a client made by hand."""
    leek_settings(TLS=paths(ca=certs.ca))
    broker = broker_factory(LEEK_TLS=json.dumps(paths(cert=certs.cert, key=certs.key)))
    context = ssl.create_default_context(cafile=str(certs.ca))
    return broker, context, Keys.client(str(conf.get("SECRET")).encode())


def test_a_task_round_trips_over_tls(broker_factory: Any, leek_settings: Any, certs: Certs) -> None:
    leek_settings(TLS=paths(ca=certs.ca))
    broker_factory(LEEK_TLS=json.dumps(paths(cert=certs.cert, key=certs.key)))
    handle = leek.push_task_to_queue(tasks.add, 20, 22)
    assert handle.result(timeout=10) == 42
    assert leek.stats()[1]["connections"]["tls_failures"] == 0


def test_a_standard_tls_client_speaks_to_the_broker(
    broker_factory: Any, leek_settings: Any, certs: Certs
) -> None:
    broker, context, keys = tls_broker(broker_factory, leek_settings, certs)
    raw = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        assert sock.version() == "TLSv1.3"
        sock.sendall(encode(keys.send, (7, "ping", {})))
        reply = read_frame(sock.makefile("rb"), keys.receive, 1 << 20)
    assert reply is not None
    assert reply.message == (7, True, {"ok": True, "message": "I'm OK"})


def test_the_thread_of_a_tls_connection_is_named_in_the_kernel(
    broker_factory: Any, leek_settings: Any, certs: Certs
) -> None:
    broker, context, keys = tls_broker(broker_factory, leek_settings, certs)
    assert broker.proc is not None
    raw = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(encode(keys.send, (7, "ping", {})))
        assert read_frame(sock.makefile("rb"), keys.receive, 1 << 20) is not None
        assert "leek-tls" in thread_names(broker.proc.pid)


def test_a_stopping_broker_answers_the_push_it_read_over_tls(
    broker_factory: Any, leek_settings: Any, certs: Certs
) -> None:
    broker, context, keys = tls_broker(broker_factory, leek_settings, certs)
    assert broker.proc is not None
    message = task_message(tasks.add, 2, 3)
    raw = socket.create_connection(("127.0.0.1", broker.port), timeout=20)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        with writes_held(Task._meta.db_table):
            sock.sendall(encode(keys.send, (7, "enqueue", message)))
            time.sleep(0.5)  # read, and held back by the lock
            broker.proc.send_signal(signal.SIGTERM)
            time.sleep(1.5)  # stopping: it waits for the push's commit
        reply = read_frame(sock.makefile("rb"), keys.receive, 1 << 20)
    assert reply is not None and reply.message[:2] == (7, True), reply
    assert broker.proc.wait(30) == 0
    assert Task.objects.filter(pk=message["id"]).exists()


def test_a_client_with_the_wrong_ca_fails_clearly(
    broker_factory: Any, leek_settings: Any, certs: Certs
) -> None:
    leek_settings(TLS=paths(ca=certs.ca))
    broker = broker_factory(LEEK_TLS=json.dumps(paths(cert=certs.cert, key=certs.key)))
    from leek.client import connection

    connection.close()
    leek_settings(TLS=paths(ca=certs.other_ca))
    # A push is kept: written to the database for a broker the client can
    # verify, and logged at ERROR; with FALLBACK="raise" it raises.
    kept = leek.push_task_to_queue(tasks.add, 1, 1)
    assert Task.objects.filter(pk=kept.id, spooled=True).exists()
    leek_settings(FALLBACK="raise")
    with pytest.raises(
        leek.AuthenticationFailed, match="TLS certificate this client cannot verify"
    ):
        leek.push_task_to_queue(tasks.add, 1, 1)
    assert Task.objects.count() == 1
    ok, reason = leek.ping()
    assert not ok and "LEEK['TLS']['ca']" in reason
    wait_for(lambda: "tls handshake failed" in broker.output())


def test_a_certificate_for_another_name_fails_unless_the_client_names_it(
    broker_factory: Any, leek_settings: Any, certs: Certs
) -> None:
    leek_settings(TLS=paths(ca=certs.ca, server_name="broker.test"))
    broker_factory(LEEK_TLS=json.dumps(paths(cert=certs.named_cert, key=certs.named_key)))
    assert leek.push_task_to_queue(tasks.add, 1, 2).result(timeout=10) == 3
    from leek.client import connection

    connection.close()
    leek_settings(
        TLS=paths(ca=certs.ca), FALLBACK="raise"
    )  # the certificate does not name 127.0.0.1
    with pytest.raises(leek.AuthenticationFailed, match="server_name"):
        leek.push_task_to_queue(tasks.add, 1, 1)


def test_mutual_tls_refuses_a_client_without_a_certificate(
    broker_factory: Any, leek_settings: Any, certs: Certs
) -> None:
    options = paths(ca=certs.ca, cert=certs.cert, key=certs.key, require_client_cert=True)
    leek_settings(
        TLS={**options, **paths(client_cert=certs.client_cert, client_key=certs.client_key)}
    )
    broker = broker_factory(LEEK_TLS=json.dumps(options))
    leek_settings(FALLBACK="raise")
    from leek.client import connection

    for client in (
        paths(ca=certs.ca),
        paths(ca=certs.ca, client_cert=certs.stranger_cert, client_key=certs.stranger_key),
    ):
        connection.close()
        leek_settings(TLS=client)
        with pytest.raises(
            leek.AuthenticationFailed, match="refused this client's TLS certificate"
        ):
            leek.push_task_to_queue(tasks.add, 1, 1)
    assert Task.objects.count() == 0
    connection.close()
    leek_settings(
        TLS=paths(ca=certs.ca, client_cert=certs.client_cert, client_key=certs.client_key)
    )
    assert leek.push_task_to_queue(tasks.add, 2, 2).result(timeout=10) == 4
    assert leek.stats()[1]["connections"]["tls_failures"] == 2
    assert "tls handshake failed" in broker.output()


def test_a_plain_client_of_a_tls_broker_is_told_nothing_and_the_broker_says_why(
    broker_factory: Any, leek_settings: Any, certs: Certs
) -> None:
    leek_settings(TLS=paths(ca=certs.ca))
    broker = broker_factory(LEEK_TLS=json.dumps(paths(cert=certs.cert, key=certs.key)))
    from leek.client import connection

    connection.close()
    leek_settings(TLS={}, FALLBACK="raise")
    with pytest.raises(leek.BrokerUnavailable):
        leek.push_task_to_queue(tasks.add, 1, 1)
    wait_for(lambda: "the client lacks LEEK['TLS']" in broker.output())


def test_a_tls_client_of_a_plain_broker_fails_clearly(
    broker_factory: Any, leek_settings: Any, certs: Certs
) -> None:
    broker_factory()
    from leek.client import connection

    connection.close()
    leek_settings(TLS=paths(ca=certs.ca), FALLBACK="raise")
    with pytest.raises(leek.BrokerUnavailable, match="is LEEK\\['TLS'\\] set on the broker too"):
        leek.push_task_to_queue(tasks.add, 1, 1)


# -- FrameSocket over a TLS channel, on real sockets ----------------------------


@pytest.fixture
def tls_pair(certs: Certs) -> Iterator[tuple[tls.Channel, tls.Channel]]:
    """The broker's channel and a client's, over a real TCP connection; the
    client's socket takes little before the broker's writes stop fitting."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    context = tls.server_context(paths(cert=certs.cert, key=certs.key))
    channels: list[tls.Channel] = []
    thread = threading.Thread(
        target=lambda: channels.append(_handshake(server, context)), daemon=True
    )
    thread.start()
    client.settimeout(10)
    mine = tls.connect(client, paths(ca=certs.ca), ("127.0.0.1", 0))
    thread.join(10)
    yield channels[0], mine
    server.close()
    client.close()


def _handshake(sock: socket.socket, context: ssl.SSLContext) -> tls.Channel:
    sock.settimeout(10)
    channel = tls.Channel(sock, context, server_side=True)
    channel.handshake()
    return channel


def test_writes_that_never_wait_reach_a_slow_reader_whole_and_in_order(
    tls_pair: tuple[tls.Channel, tls.Channel],
) -> None:
    theirs, mine = tls_pair
    secret = b"k" * 32
    broker = FrameSocket(
        theirs.sock, Keys.broker(secret), 64 << 20, 10.0, never_wait=True, tls=theirs
    )
    client = FrameSocket(mine.sock, Keys.client(secret), 64 << 20, 10.0, tls=mine)
    blob = bytes(range(256)) * 256  # 64 KiB a frame: far more than the socket takes
    for i in range(100):
        broker.write((i, True, blob))  # never waits: what does not fit is queued
    assert broker._owed is not None  # the queue of ciphertext was used
    for i in range(100):
        frame = client.read()
        assert frame is not None and frame.message == (i, True, blob)
    assert broker.caught_up()
    client.write((1, "ping", {}))
    frame = broker.read()
    assert frame is not None and frame.message == (1, "ping", {})


def test_an_idle_tls_connection_times_out_on_the_kernel_timeout(
    tls_pair: tuple[tls.Channel, tls.Channel],
) -> None:
    theirs, _ = tls_pair
    broker = FrameSocket(
        theirs.sock, Keys.broker(b"k" * 32), 1 << 20, 0.1, never_wait=True, tls=theirs
    )
    with pytest.raises(TimeoutError, match="nothing received"):
        broker.read(idle=0.3)


# -- the settings ------------------------------------------------------------


def tls_errors(settings: Any, options: Any) -> list[str]:
    settings.LEEK = {"TLS": options}
    from leek.checks import check_settings

    return [e.msg for e in check_settings() if e.id == "leek.E011"]


def test_the_check_passes_good_tls_settings(settings: Any, certs: Certs) -> None:
    assert tls_errors(settings, {}) == []
    assert tls_errors(settings, paths(cert=certs.cert, key=certs.key, ca=certs.ca)) == []
    client = paths(ca=certs.ca, client_cert=certs.client_cert, client_key=certs.client_key)
    assert tls_errors(settings, client) == []


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (lambda c, t: ["cert"], "must be a dict"),
        (lambda c, t: {"certificate": str(c.cert)}, "unknown keys certificate"),
        (lambda c, t: {"cert": str(t / "gone.pem"), "key": str(c.key)}, "not a readable file"),
        (lambda c, t: {"ca": str(c.key)}, "cannot be loaded for the client"),
        (lambda c, t: {"cert": str(c.ca), "key": str(c.key)}, "cannot be loaded for the broker"),
        (
            lambda c, t: {"cert": str(c.cert), "key": str(c.key), "require_client_cert": True},
            "needs 'ca'",
        ),
        (lambda c, t: {"ca": str(c.ca), "require_client_cert": "yes"}, "True or False"),
        (lambda c, t: {"ca": str(c.ca), "client_key": str(c.client_key)}, "needs 'client_cert'"),
    ],
    ids=[
        "not a dict",
        "unknown key",
        "missing file",
        "not a CA",
        "not a chain",
        "no client CA",
        "not a bool",
        "key alone",
    ],
)
def test_the_check_reports_bad_tls_settings(
    settings: Any, certs: Certs, tmp_path: Path, options: Any, error: str
) -> None:
    found = tls_errors(settings, options(certs, tmp_path))
    assert found and error in " ".join(found), found


@pytest.mark.parametrize("skip_checks", [False, True])
def test_leek_start_refuses_tls_settings_that_do_not_load(
    tmp_path: Path, certs: Certs, skip_checks: bool
) -> None:
    # A file that is gone is the system checks' (leek.E011); a client's
    # settings, which the checks take, are refused by the broker's start.
    for options, checked in (
        ({"cert": str(tmp_path / "gone.pem")}, True),
        ({"ca": str(certs.ca)}, False),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "leek.cli", "start", *(["--skip-checks"] * skip_checks)],
            cwd=REPO,
            env={**broker_env(free_port()), "LEEK_TLS": json.dumps(options)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1
        if skip_checks or not checked:  # the start's own refusal, in one line
            assert done.stderr.startswith("error: LEEK['TLS'] ")
            assert len(done.stderr.splitlines()) == 1
        else:
            assert "(leek.E011) LEEK['TLS']" in done.stderr
