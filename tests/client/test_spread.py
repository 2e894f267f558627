"""Clients spread their pushes over the healthy brokers, and a failed one rests.

Real brokers share the test database; each thread of the test pushes on its
own connections, as the threads of a web process do. Connection attempts are
counted from the client's `broker_connect` log lines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.db import connection as db

import leek
from leek.client import connection
from leek.models import FINISHED, Task
from tests import tasks
from tests.conftest import BrokerProcess, free_port, wait_for

#: Client threads pushing at once.
THREADS = 8


class Pushers:
    """THREADS threads making `count` pushes in all, each push `push(n)`; a
    thread closes its connections after every `reconnect_every` pushes (0:
    never), as threads that come and go would. With `pause_at`, a thread
    makes no new push once that many are made, until `resume` is set: what
    the test does meanwhile (a kill) falls between known pushes, however
    slow the host."""

    def __init__(
        self,
        count: int,
        push: Callable[[int], leek.TaskHandle],
        reconnect_every: int = 0,
        pause_at: int = 0,
    ) -> None:
        self.ids: list[str] = []
        self.errors: list[BaseException] = []
        self.pause_at = pause_at
        self.resume = threading.Event()
        if not pause_at:
            self.resume.set()
        self.threads = [
            threading.Thread(target=self._work, args=(i, count, push, reconnect_every))
            for i in range(THREADS)
        ]
        for thread in self.threads:
            thread.start()

    def _work(
        self, first: int, count: int, push: Callable[[int], leek.TaskHandle], every: int
    ) -> None:
        try:
            for made, n in enumerate(range(first, count, THREADS), 1):
                if len(self.ids) >= self.pause_at and not self.resume.wait(120):
                    raise TimeoutError("the pushers were not resumed")
                self.ids.append(str(push(n).id))
                if every and made % every == 0:
                    connection.close()
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            connection.close()
            db.close()

    def join(self) -> list[str]:
        for thread in self.threads:
            thread.join(120)
        assert not self.errors, self.errors
        return self.ids


def three_brokers(broker_factory: Any, leek_settings: Any, **env: str) -> list[BrokerProcess]:
    brokers: list[BrokerProcess] = [
        broker_factory(LEEK_NODE_NAME=name, **env) for name in ("one", "two", "three")
    ]
    leek_settings(PORT=brokers[0].port, BROKERS=[f"127.0.0.1:{b.port}" for b in brokers[1:]])
    connection.close()
    return brokers


def connects(caplog: pytest.LogCaptureFixture, port: int, after: float = 0.0) -> int:
    """Connection attempts the client made to the broker on `port` since `after`."""
    return sum(
        1
        for r in caplog.records
        if getattr(r, "action", "") == "broker_connect"
        and r.getMessage().endswith(f":{port}")
        and r.created >= after
    )


def rests(caplog: pytest.LogCaptureFixture, port: int) -> int:
    return sum(
        1
        for r in caplog.records
        if getattr(r, "action", "") == "broker_rests" and f":{port} " in r.getMessage()
    )


def test_threads_spread_their_pushes_over_every_broker_and_each_task_runs_once(
    broker_factory: Any, leek_settings: Any, tmp_path: Path
) -> None:
    # No bound on what a broker keeps: each push stays with the broker it reached.
    three_brokers(broker_factory, leek_settings, LEEK_PREFETCH="0")
    marks = tmp_path / "marks"
    ids = Pushers(
        300, lambda n: leek.push_task_to_queue(tasks.append_line, str(marks), str(n))
    ).join()
    assert len(set(ids)) == 300
    accepted = Counter(Task.objects.values_list("broker", flat=True))
    assert set(accepted) == {"one", "two", "three"}, accepted
    assert sum(accepted.values()) == 300
    assert not Task.objects.filter(spooled=True).exists()
    wait_for(lambda: Task.objects.filter(status__in=FINISHED).count() == 300, timeout=60)
    assert sorted(marks.read_text().split(), key=int) == [str(n) for n in range(300)]


def test_a_broker_killed_while_threads_push_loses_nothing_and_is_skipped_after_its_failure(
    broker_factory: Any, leek_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="leek.client.connection")
    brokers = three_brokers(broker_factory, leek_settings, LEEK_HEARTBEAT_TIMEOUT="3")
    leek_settings(BROKER_BACKOFF=60.0, BROKER_BACKOFF_MAX=60.0)
    victim = brokers[1]
    pushers = Pushers(
        400, lambda n: leek.push_task_to_queue(tasks.add, n, 0), reconnect_every=2, pause_at=100
    )
    wait_for(lambda: len(pushers.ids) >= 100 or pushers.errors, interval=0.001)
    assert Task.objects.filter(broker="two").exists()
    killed = time.time()
    victim.kill()  # while threads hold connections to it, and pushes may be in flight
    before = len(pushers.ids)
    pushers.resume.set()
    ids = pushers.join()

    assert len(pushers.ids) - before >= 100  # most pushes came after the kill
    assert len(set(ids)) == 400
    assert Task.objects.count() == 400
    assert Task.objects.filter(pk__in=ids).count() == 400
    # Each thread met the dead broker once at most (and may have connected to it
    # just before the kill), then every thread skipped it, though the threads
    # reconnected many times over: a third of those would have tried it. The
    # first failure may come on a connection made before the kill, so none
    # need be made after it.
    assert rests(caplog, victim.port) == 1
    assert connects(caplog, victim.port, after=killed) <= 2 * THREADS
    others = sum(connects(caplog, b.port, after=killed) for b in brokers if b is not victim)
    assert others >= (len(ids) - before) // 4  # a connection every 2 pushes, at least half
    # The dead broker's tasks are adopted by the others; every task ends.
    wait_for(lambda: Task.objects.filter(status__in=FINISHED).count() == 400, timeout=90)


def test_a_broker_restarted_on_its_port_takes_pushes_again_once_its_rest_ends(
    broker_factory: Any, leek_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    first: BrokerProcess = broker_factory(LEEK_NODE_NAME="first")
    second: BrokerProcess = broker_factory(LEEK_NODE_NAME="second")
    leek_settings(
        PORT=first.port,
        BROKERS=[f"127.0.0.1:{second.port}"],
        BROKER_BACKOFF=0.5,
        BROKER_BACKOFF_MAX=1.0,
    )
    connection.close()
    second.kill()

    def push_anew() -> str:
        """The broker that accepted a push made on a new connection."""
        handle = leek.push_task_to_queue(tasks.noop)
        connection.close()
        return Task.objects.get(pk=handle.id).broker

    wait_for(lambda: push_anew() == "first" and rests(caplog, second.port) >= 1)
    second.start(wait=False)
    wait_for(lambda: push_anew() == "second", timeout=60)
    assert not Task.objects.filter(spooled=True).exists()


def test_when_no_broker_answers_the_push_is_written_to_the_database(
    transactional_db: Any, leek_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="leek.client.connection")
    ports = [free_port() for _ in range(3)]
    leek_settings(PORT=ports[0], BROKERS=[f"127.0.0.1:{p}" for p in ports[1:]])
    handle = leek.push_task_to_queue(tasks.add, 1, 2)
    assert Task.objects.get(pk=handle.id).spooled
    assert [connects(caplog, p) for p in ports] == [1, 1, 1]
    # Every broker rests now: the next push tries the one whose rest ends first.
    again = leek.push_task_to_queue(tasks.add, 3, 4)
    assert Task.objects.get(pk=again.id).spooled
    assert [connects(caplog, p) for p in ports].count(2) == 1
    leek_settings(FALLBACK="raise")
    with pytest.raises(leek.BrokerUnavailable, match=r"127\.0\.0\.1:\d+ \(ConnectionRefused"):
        leek.push_task_to_queue(tasks.noop)


def test_with_spread_off_pushes_go_to_host_and_port_first(
    broker_factory: Any, leek_settings: Any
) -> None:
    # No bound on what a broker keeps: each push stays with the broker it reached.
    three_brokers(broker_factory, leek_settings, LEEK_PREFETCH="0")
    leek_settings(SPREAD=False)
    Pushers(40, lambda n: leek.push_task_to_queue(tasks.noop), reconnect_every=1).join()
    assert set(Task.objects.values_list("broker", flat=True)) == {"one"}


def test_control_verbs_go_to_host_and_port_while_pushes_spread(
    broker_factory: Any, leek_settings: Any
) -> None:
    three_brokers(broker_factory, leek_settings)
    accepted = set()
    for _ in range(3):
        handle = leek.push_task_to_queue(tasks.noop)
        accepted.add(Task.objects.get(pk=handle.id).broker)
        connection.close()
        assert leek.stats()[1]["node"] == "one"
    assert accepted == {"one", "two", "three"}
