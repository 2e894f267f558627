"""Fencing under faults: three brokers under a steady push load lose one to
SIGKILL, one to SIGSTOP past the heartbeat timeout (then SIGCONT), and every
PostgreSQL connection they hold, then the two left are reloaded one after the
other (SIGHUP); every acknowledged task runs, only the runs in flight on the
killed or paused broker are repeated, and no outcome flips."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from django.db import close_old_connections, connection
from django.db.models import Count

import leek
from leek.client import connection as client
from leek.models import FailedTask, SuccessTask, Task
from leek.server.store.cut import ADOPTED_DIED, LOST
from tests.conftest import BrokerProcess, leek_cli, wait_for
from tests.server import fence_tasks
from tests.server.fence_tasks import runs_of
from tests.server.test_lease import node

#: Short heartbeats, so that a silent broker is adopted from within seconds.
LOAD = {"LEEK_HEARTBEAT_INTERVAL": "0.2", "LEEK_HEARTBEAT_TIMEOUT": "2", "LEEK_WORKERS": "2"}
#: Seconds each task works, and seconds a pushing thread waits between pushes.
WORK = 0.05
PACE = 0.03
PUSHERS = 3
#: Seconds into the load at which each fault comes, and the load ends.
KILL_AT, STOP_AT, CONT_AT, CUT_AT, RELOAD_AT, END_AT = 2.0, 4.0, 8.0, 10.0, 11.0, 16.0


class Load:
    """Threads pushing tasks through the client, keeping the acknowledged ids."""

    def __init__(self, runs: Path) -> None:
        self.runs = runs
        self.acknowledged: list[Any] = []
        self.failed = 0
        self.pids: set[int] = set()  # this process's database sessions: spared the cut
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._push) for _ in range(PUSHERS)]

    def own_session(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            (pid,) = cursor.fetchone()
        with self._lock:
            self.pids.add(int(pid))

    def _push(self) -> None:
        self.own_session()
        try:
            while not self._stop.is_set():
                try:
                    handle = leek.enqueue(fence_tasks.run_for, (str(self.runs), WORK))
                except Exception:
                    with self._lock:
                        self.failed += 1
                else:
                    with self._lock:
                        self.acknowledged.append(handle.id)
                time.sleep(PACE)
        finally:
            client.close()
            close_old_connections()

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


class Flips:
    """Watches the succeeded tasks: one that leaves succeeded is a flip."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.seen: set[Any] = set()
        self.flipped: set[Any] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch)

    def _watch(self) -> None:
        self.load.own_session()
        try:
            while not self._stop.wait(0.25):
                now = set(Task.objects.filter(status="succeeded").values_list("id", flat=True))
                self.flipped |= self.seen - now
                self.seen |= now
        finally:
            close_old_connections()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def mark(runs: Path, event: str) -> None:
    """A line in the file of runs, in order with them: when a fault came."""
    with open(runs, "a") as handle:
        handle.write(f"- {event} 0\n")


def cut_connections(spared: set[int]) -> int:
    """Terminate every session of the test database but this process's; how many."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND NOT (pid = ANY(%s))",
            [sorted(spared)],
        )
        (count,) = cursor.fetchone()
    return int(count)


def _reloaded(broker: BrokerProcess) -> bool:
    """The broker answers again after a reload."""
    try:
        found = stats(broker)
    except (ValueError, KeyError):
        return False  # not answering yet
    return bool(found["reloads"]["count"] >= 1 and not found["reloads"]["under_way"])


def story(runs: Path, tasks: Any, brokers: list[BrokerProcess]) -> str:
    """What a failure needs to be read: each task's runs among the faults, its
    rows, and the brokers' logs, which the test's directory does not outlive."""
    lines = [f"brokers (serving, paused, killed): {[node(b.port) for b in brokers]}"]
    for t in tasks:
        lines.append(f"task {t}:")
        lines += [f"  ran {r}" for r in runs_of(runs) if r[0] in (str(t), "-")]
        lines += [
            f"  failed {r}"
            for r in FailedTask.objects.filter(task_id=t).values_list(
                "broker", "attempt", "exc_type", "exc_message", "failed_at"
            )
        ]
        lines += [
            f"  succeeded {r}"
            for r in SuccessTask.objects.filter(task_id=t).values_list("broker", "attempt")
        ]
        lines += [
            f"  row {r}"
            for r in Task.objects.filter(pk=t).values_list("broker", "status", "attempts", "epoch")
        ]
    for b in brokers:
        lines.append(f"log of {node(b.port)}:")
        lines += [f"  {line}" for line in b.output().splitlines()[-200:]]
    return "\n".join(lines)


def at(start: float, moment: float) -> None:
    time.sleep(max(0.0, start + moment - time.monotonic()))


def stats(broker: BrokerProcess) -> dict[str, Any]:
    done = leek_cli(broker.port, "--json", "stats")
    found: dict[str, Any] = json.loads(done.stdout)
    return found


@pytest.mark.slow
@pytest.mark.postgresql
def test_every_acknowledged_task_runs_and_only_runs_in_flight_on_a_lost_broker_repeat(
    broker_factory: Any, leek_settings: Any, tmp_path: Path
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("brokers sharing one database: PostgreSQL")
    runs = tmp_path / "runs"
    brokers = [broker_factory(**LOAD) for _ in range(3)]
    serving, paused, killed = brokers
    leek_settings(
        PORT=serving.port,
        BROKERS=[f"127.0.0.1:{b.port}" for b in brokers[1:]],
        REPLY_TIMEOUT=2.0,
        BROKER_BACKOFF=1.0,
    )
    client.close()
    load = Load(runs)
    flips = Flips(load)
    load.own_session()
    flips.start()
    start = time.monotonic()
    load.start()
    assert paused.proc is not None
    try:
        at(start, KILL_AT)
        killed.kill()
        mark(runs, "kill")
        at(start, STOP_AT)
        os.kill(paused.proc.pid, signal.SIGSTOP)
        mark(runs, "stop")
        at(start, CONT_AT)
    finally:
        os.kill(paused.proc.pid, signal.SIGCONT)
    mark(runs, "cont")
    at(start, CUT_AT)
    assert cut_connections(load.pids) > 0
    at(start, RELOAD_AT)
    refused = 0  # outcomes the paused broker refused: its count starts anew at a reload
    for broker in (serving, paused):  # a rolling reload, each back before the next
        assert broker.proc is not None
        if broker is paused:
            refused += stats(paused)["outcomes_refused"]
        os.kill(broker.proc.pid, signal.SIGHUP)
        mark(runs, "reload")
        wait_for(functools.partial(_reloaded, broker), timeout=30, interval=0.2)
    at(start, END_AT)
    load.stop()
    acknowledged = set(load.acknowledged)
    assert len(acknowledged) > 200
    wait_for(
        lambda: not Task.objects.filter(pk__in=acknowledged).exclude(status="succeeded").exists(),
        timeout=60,
        interval=0.2,
    )
    time.sleep(1.0)  # a last look for a late write
    flips.stop()
    assert not flips.flipped

    # Each task has its one success.
    rows = Counter(
        dict(
            SuccessTask.objects.filter(task_id__in=acknowledged)
            .values("task_id")
            .annotate(n=Count("id"))
            .values_list("task_id", "n")
        )
    )
    assert set(rows) == acknowledged
    assert set(rows.values()) == {1}

    # Every run but a task's last was in flight on the killed broker, or on
    # the paused one when it was paused: running, or ended with its outcome
    # not yet committed (its line is before the stop), or taken by a worker
    # past its last check and recorded once the broker woke: at most one such
    # task per worker of the paused broker.
    lost, stopped = node(killed.port), node(paused.port)
    before, after = f"{stopped} before the stop", f"{stopped} after the stop"
    per_task: dict[str, list[str]] = defaultdict(list)
    events: list[str] = []
    for task, where, _ in runs_of(runs):
        if task == "-":
            events.append(where)
            continue
        if where == stopped:
            where = after if "stop" in events else before
        per_task[task].append(where)
    assert {str(i) for i in acknowledged} <= set(per_task)
    repeated = {t: ran for t, ran in per_task.items() if len(ran) > 1}
    unexplained = [t for t, ran in repeated.items() if not set(ran[:-1]) <= {lost, before, after}]
    if unexplained:  # pytest.fail: an assertion's message would be cut short
        pytest.fail(story(runs, unexplained, brokers))
    taken_at_the_stop = [t for t, ran in repeated.items() if after in ran[:-1]]
    assert len(taken_at_the_stop) <= int(LOAD["LEEK_WORKERS"]), repeated
    # A task adopted from the paused broker while it ran there (its attempt
    # cut short, on that broker) ends with the adopter's outcome: the late
    # one of the paused broker is refused. (A WorkerLost row the paused
    # broker's own reload wrote, for a task whose outcome the reload could
    # not commit, is no adoption: that task may run again there, and succeed.)
    cut = FailedTask.objects.filter(
        task_id__in=acknowledged,
        broker=stopped,
        exc_type=LOST,
        exc_message__startswith=ADOPTED_DIED,
    )
    adopted = set(cut.values_list("task_id", flat=True))
    late = set(
        SuccessTask.objects.filter(task_id__in=adopted, broker=stopped).values_list(
            "task_id", flat=True
        )
    )
    if late:
        pytest.fail(story(runs, late, brokers))
    refused += stats(paused)["outcomes_refused"]
    if any({before, after} & set(ran[:-1]) for ran in repeated.values()):
        assert refused >= 1
    sys.stderr.write(
        f"acknowledged={len(acknowledged)} failed_pushes={load.failed} "
        f"repeated={len(repeated)} adopted_while_running={len(adopted)} "
        f"refused_on_paused={refused}\n"
    )
