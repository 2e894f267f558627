"""The floors under leek's targets, measured on the machine of the run.

Beside the systems, each run measures what no queue's own work is in:

  round trip   one byte there and back between two Python processes over TCP
               on 127.0.0.1 (p50): under every one-at-a-time push of every system
  framed       the same, with a leek frame each way: a ping request and its
               reply, each made, signed, checked and unpickled by leek's frame
               functions (leek/protocol/frame.py) and nothing else: under
               every request of leek, whatever its broker does around them;
               both round trips again with each side polling its socket
               instead of sleeping on it, as leek's SPIN does
  commit       leek's write of one task, one transaction each, from plain Python
               on leek's schema, with no socket and no thread around it: SQLite
               with synchronous=NORMAL and FULL, and PostgreSQL when it answers;
               on SQLite NORMAL also each after a 0.3 ms sleep, as a broker's
               write comes after it waited for the push
  batch        the same write of 1,000 tasks in one transaction (SQLite NORMAL):
               under each task of an enqueue_many; measured again in turns
               with the enqueue_many it bounds (`serve_batches`)
  busy         while a process a core spins at the niceness of leek's worker
               processes (CHILD_NICE), in the session of the process that
               answers, one byte from a client in a session of its own, p50 and
               p99: answered at once, and answered after leek's write of one
               task (SQLite NORMAL, PostgreSQL), which sleeps on PostgreSQL's
               answer as a broker's does while a task runs: under each push
               while every worker runs a CPU-bound task (cpu_push)
  group        pushes a second from one client process and from four, each
               pushing one task at a time in leek frames to one thread that
               reads every connection, checks each frame, writes the round's
               tasks in one commit and sends the replies: leek's event loop
               with nothing of leek's own around its frames and its write,
               beside "four clients push 1.8x one", on every database. Each
               side sleeps on its sockets, or polls them for up to leek's
               SPIN before it sleeps, as leek's client and loop may; and, for
               reference only, polls them without bound (`GROUP_WAYS`)
  mixed        tasks a second from four client processes pushing as the group
               floor's do while two worker processes run the tasks, each
               handed over leek's pipe and its outcome written by leek's
               store: the processes pool with nothing of leek's own around
               its writes and its pipes (bench/mixed_floor.py), beside "mixed
               ≥ huey with Redis" on SQLite NORMAL and PostgreSQL

A push from one client waits for a round trip and a commit one after the
other, so it cannot beat 1 / (round trip + commit) a second on that machine.

    python -m bench.floors DATABASE_URL SYNCHRONOUS   # one database; prints JSON
    python -m bench.floors DATABASE_URL NORMAL --batches   # batch floors on demand
    python -m bench.floors DATABASE_URL pg --mixed         # the mixed floor alone
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from math import inf
from pathlib import Path
from typing import Any

from bench.common import REPO, Skip, _percentiles
from bench.systems import pg_util
from leek.conf import DEFAULTS
from leek.protocol import frame
from leek.protocol.spin import RUNS

#: Commits timed one task at a time, and tasks in each batch and how many batches.
COMMITS = {"NORMAL": 3000, "FULL": 1000, "pg": 1000}
BATCH, BATCHES = 1000, 20
#: The most one receive of the echo takes, and the largest frame it reads
#: (its frames are a ping's).
ECHO_RECV = 4096
#: Runs of each round trip, taken in turns, whose median is its floor.
ECHO_RUNS = 3
#: The shared secret of the echo's frames.
SECRET = b"leek-floor-" * 4
#: Seconds the thread sleeps before each write of the "after a nap" figure.
NAP = 0.0003
#: Round trips timed while every core is busy, each this many seconds after
#: the last (cpu_push's spacing), and the niceness of the processes that keep
#: the cores busy (leek's CHILD_NICE).
BUSY_TRIPS, BUSY_SPACING, BUSY_NICE = 300, 0.005, 10
#: Pushes timed in all by each run of the group floor, shared among its
#: clients, and its runs of each way, taken in turns, whose median it is.
GROUP_PUSHES, GROUP_RUNS = 6000, 3
#: Seconds a side of the group floor polls its sockets before it sleeps:
#: leek's SPIN, the most a client or the loop of a broker polls for.
SPIN = float(DEFAULTS["SPIN"])
#: The group floor's ways: its clients, and the seconds the loop and the
#: clients poll before they sleep. leek's loop polls for up to SPIN, and its
#: clients too while their replies come within it; a target's floor is the
#: faster of the ways leek may take (bench/figures.py's `group_floor`). The
#: ways that poll without bound (`inf`, a core held all along) are measured
#: for reference only: no SPIN of leek's does.
GROUP_WAYS = {
    "one_polling_per_s": (1, inf, inf),
    "one_spin_per_s": (1, SPIN, SPIN),
    "one_per_s": (1, 0.0, 0.0),
    "four_polling_per_s": (4, inf, 0.0),
    "four_spin_per_s": (4, SPIN, 0.0),
    "four_per_s": (4, 0.0, 0.0),
}
if os.environ.get("BENCH_FLOORS_QUICK", "") not in ("", "0"):  # a few of each: the tests'
    COMMITS = dict.fromkeys(COMMITS, 30)
    BATCHES, BUSY_TRIPS, GROUP_PUSHES, ECHO_RUNS, GROUP_RUNS = 2, 10, 40, 1, 1
PG_DATABASE = "leek_bench_floor"


def measure() -> dict[str, Any]:
    """Every floor this machine offers; a database that cannot be measured is left out."""
    floors: dict[str, Any] = echo_round_trips()
    floors["busy_round_trip"] = busy_round_trips(lambda: None)
    with tempfile.TemporaryDirectory(prefix="leek-floor-") as tmp:
        for sync in ("NORMAL", "FULL"):
            found = _writes(f"sqlite:///{Path(tmp) / sync.lower()}.sqlite3", sync)
            if found:
                floors[f"sqlite_{sync.lower()}"] = found
    try:
        pg_util.require_database(PG_DATABASE)
    except Skip:
        return floors
    found = _writes(pg_util.url_for(PG_DATABASE), "pg")
    if found:
        floors["pg"] = found
    return floors


def echo_round_trips(runs: int = ECHO_RUNS) -> dict[str, float]:
    """The four round trips (bare and framed, sleeping and polling), each the
    median of `runs` runs taken in turns: a moment when something else keeps
    the cores awake (a bare round trip once took 7.1 µs where it takes 60,
    and every ceiling of that run with it) moves one run, not the figure."""
    ways = {
        "round_trip_us": (False, 0.0),
        "framed_round_trip_us": (True, 0.0),
        "spin_round_trip_us": (False, inf),
        "framed_spin_round_trip_us": (True, inf),
    }
    found: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(runs):
        for name, (framed, spin) in ways.items():
            found[name].append(echo_round_trip_us(framed=framed, spin=spin))
    return {name: statistics.median(values) for name, values in found.items()}


def round_trip_us(n: int = 5000) -> float:
    """The median round trip of one byte between two Python processes over TCP
    on 127.0.0.1, in microseconds."""
    return echo_round_trip_us(framed=False, spin=0.0, n=n)


def echo_round_trip_us(framed: bool, spin: float, n: int = 5000) -> float:
    """The median round trip between two Python processes over TCP on
    127.0.0.1, in microseconds: of one byte, or (`framed`) of a leek ping
    request and its reply, each side signing, checking and unpickling the
    frames as leek's client and broker do, with no loop, no verb and no check
    of a stamp around them. Both sides poll their socket for up to `spin`
    seconds (`inf`: until the bytes come) before they sleep on it."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        child = os.fork()
        if child == 0:  # the echo: no leek around it, nothing but the sockets
            try:
                keys = frame.Keys.broker(SECRET)
                peer, _ = server.accept()
                peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while data := _receive(peer, framed, spin):
                    if framed:  # check the request, sign the reply
                        request = frame.open_frame(keys.receive, data)
                        answer = (request.message[0], True, "I'm OK")
                        data = frame.encode(keys.send, answer, request.nonce)
                    peer.sendall(data)
            finally:
                os._exit(0)
        keys = frame.Keys.client(SECRET)
        with socket.create_connection(server.getsockname()) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            samples = []
            for request_id in range(1, n + 1):
                start = time.perf_counter()
                if framed:
                    sock.sendall(frame.encode(keys.send, (request_id, "ping", None)))
                    reply = frame.open_frame(keys.receive, _receive(sock, framed, spin))
                else:
                    sock.sendall(b"x")
                    _receive(sock, framed, spin)
                samples.append(time.perf_counter() - start)
                if framed and reply.message[0] != request_id:
                    raise RuntimeError(f"reply {reply.message[0]} to request {request_id}")
        os.waitpid(child, 0)
    return round(statistics.median(samples) * 1e6, 1)


def _receive(sock: socket.socket, framed: bool, spin: float) -> bytes:
    """What comes next on `sock`: one receive, or (`framed`) a whole frame;
    empty once the peer closed. Each receive polls for up to `spin` seconds
    before it sleeps."""
    data = _recv(sock, ECHO_RECV, spin)
    if not framed or not data:
        return data
    size = frame.body_length(data, ECHO_RECV) + frame.OVERHEAD
    while len(data) < size:
        more = _recv(sock, size - len(data), spin)
        if not more:
            return b""
        data += more
    return data


def _recv(sock: socket.socket, size: int, spin: float) -> bytes:
    if spin:
        deadline = time.perf_counter() + spin
        while True:
            try:
                return sock.recv(size, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if time.perf_counter() >= deadline:
                    break
    return sock.recv(size)


def _select(selector: selectors.BaseSelector, spin: float) -> list[Any]:
    """The connections with bytes to read: polled for up to `spin` seconds,
    then waited for."""
    if spin:
        deadline = time.perf_counter() + spin
        while True:
            events = selector.select(0)
            if events:
                return events
            if time.perf_counter() >= deadline:
                break
    return selector.select(None)


def busy_round_trips(answer: Callable[[], None]) -> dict[str, float]:
    """p50 and p99 in ms of BUSY_TRIPS round trips, one every BUSY_SPACING, from
    a client in a session of its own to this process, which calls `answer`
    before it answers, while a process a core spins in this process's session:
    as a broker's worker processes run in the broker's, and its clients in
    sessions (or services) of their own. The kernel shares the cores between
    sessions before it shares them between their processes, so the spinners'
    niceness holds against this process only."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        reader, writer = os.pipe()
        client = os.fork()
        if client == 0:
            try:
                os.setsid()
                trips = _p50_p99(_timed_trips(server.getsockname()))
                os.write(writer, json.dumps(trips).encode())
            finally:
                os._exit(0)
        os.close(writer)
        # The spinners stand for a broker's tasks: while one runs, the broker's
        # waits for its database sleep at once (leek/protocol/spin.py), and so
        # do the writes here.
        with _spinners(), RUNS:
            peer, _ = server.accept()
            peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with peer:
                while peer.recv(64):
                    answer()
                    peer.sendall(b"x")
        os.waitpid(client, 0)
        with os.fdopen(reader) as done:
            found: dict[str, float] = json.loads(done.read())
    return found


def _timed_trips(address: tuple[str, int]) -> list[float]:
    """In the client: BUSY_TRIPS round trips to `address`, in ms."""
    samples = []
    with socket.create_connection(address) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        time.sleep(0.2)  # every spinner running
        for _ in range(BUSY_TRIPS):
            time.sleep(BUSY_SPACING)
            start = time.perf_counter()
            sock.sendall(b"x")
            sock.recv(64)
            samples.append((time.perf_counter() - start) * 1000)
    return samples


@contextlib.contextmanager
def _spinners() -> Iterator[None]:
    """While inside: a process a core, each spinning at BUSY_NICE, as worker
    processes running CPU-bound tasks do."""
    pids = []
    for _ in range(os.cpu_count() or 1):
        pid = os.fork()
        if pid == 0:
            os.nice(BUSY_NICE)
            while True:
                pass
        pids.append(pid)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def group_pushes(
    write: Callable[[list[Any]], None],
    payload: bytes,
    clients: int,
    spin: float,
    clients_spin: float,
) -> float:
    """Pushes a second from `clients` client processes, each pushing one task
    at a time as leek's client does, to one thread of this process that reads
    every connection (a selector), checks and unpickles each frame, `write`s
    the round's tasks in one commit, then signs and sends each reply: leek's
    event loop with nothing of leek's own around its frames and its write.
    That thread polls its selector for up to `spin` seconds before it sleeps
    on it, and the clients their sockets for up to `clients_spin` (`inf`:
    until the bytes come)."""
    n = GROUP_PUSHES // clients
    with socket.create_server(("127.0.0.1", 0), backlog=clients) as server:
        go_read, go_write = os.pipe()
        children = []
        for _ in range(clients):
            child = os.fork()
            if child == 0:
                code = 0
                try:
                    _group_client(server.getsockname(), go_read, payload, n, clients_spin)
                except BaseException:
                    traceback.print_exc()
                    code = 1
                finally:
                    os._exit(code)
            children.append(child)
        keys = frame.Keys.broker(SECRET)
        selector = selectors.DefaultSelector()
        for _ in range(clients):
            peer, _ = server.accept()
            peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            selector.register(peer, selectors.EVENT_READ)
        connected = clients
        os.write(go_write, b"x" * clients)
        start = time.perf_counter()
        while connected:
            tasks, replies, closed = read_pushes(selector, _select(selector, spin), keys)
            connected -= closed
            if tasks:
                write(tasks)
            for sock, request_id, nonce, task_id in replies:
                sock.sendall(frame.encode(keys.send, (request_id, True, task_id), nonce))
        elapsed = time.perf_counter() - start
        failed = sum(os.waitpid(child, 0)[1] != 0 for child in children)
        selector.close()
        os.close(go_read)
        os.close(go_write)
    if failed:
        raise RuntimeError(f"{failed} of the group floor's {clients} clients failed")
    return round(n * clients / elapsed)


def read_pushes(
    selector: selectors.BaseSelector, events: list[Any], keys: frame.Keys
) -> tuple[list[Any], list[tuple[Any, ...]], int]:
    """The pushes of the group clients whose sockets are in `events`, read
    and checked: their tasks, what each reply needs (the socket, the
    request's id and nonce, the task's id), and how many clients were done
    (their sockets closed and out of `selector`)."""
    tasks, replies, closed = [], [], 0
    for key, _ in events:
        sock = key.fileobj
        data = _receive(sock, framed=True, spin=0.0)
        if not data:  # that client is done
            selector.unregister(sock)
            sock.close()
            closed += 1
            continue
        request = frame.open_frame(keys.receive, data)
        request_id, _, item = request.message
        tasks.append(_new_task(uuid.UUID(item["id"]), item["name"], item["payload"]))
        replies.append((sock, request_id, request.nonce, item["id"]))
    return tasks, replies, closed


def _group_client(address: tuple[str, int], go: int, payload: bytes, n: int, spin: float) -> None:
    """In a client process of `group_pushes`: `n` pushes, one at a time."""
    from leek.ids import new_task_ids

    keys = frame.Keys.client(SECRET)
    with socket.create_connection(address) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        os.read(go, 1)
        for request_id, task_id in enumerate(new_task_ids(n), 1):
            item = {"id": str(task_id), "name": "bench.tasks.noop", "payload": payload}
            sock.sendall(frame.encode(keys.send, (request_id, "enqueue", item)))
            reply = frame.open_frame(keys.receive, _receive(sock, framed=True, spin=spin))
            if reply.message != (request_id, True, item["id"]):
                raise RuntimeError(f"reply {reply.message} to request {request_id}")


def _new_task(task_id: uuid.UUID, name: str, payload: bytes) -> Any:
    """A task as the floors write it: on the default queue, with no options."""
    from leek.server.rows import NewTask

    return NewTask(task_id, name, payload, "", "default", 0, 0, None, None, "")


def _p50_p99(samples: list[float]) -> dict[str, float]:
    """The p50 and p99 of `samples` in ms, as cpu_push reports its pushes'."""
    found = _percentiles(samples)
    return {"p50_ms": round(found["p50"], 2), "p99_ms": round(found["p99"], 2)}


def _writes(url: str, sync: str) -> dict[str, float] | None:
    """The write floors of one database, measured in a process of their own
    (Django's settings name one database per process)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.floors", url, sync],
        env=_env(url, sync),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        with tempfile.NamedTemporaryFile(
            "w", prefix=f"leek-floors-{sync.lower()}-", suffix=".log", delete=False
        ) as log:
            log.write(done.stderr)
        print(
            f"!! floor of {url} not measured ({log.name} has its output): "
            f"{done.stderr.strip()[-300:]}",
            file=sys.stderr,
        )
        return None
    found: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def _env(url: str, sync: str) -> dict[str, str]:
    """The environment of a process that measures the floors of `url`, on
    SQLite with synchronous=`sync` ("pg": PostgreSQL's)."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "settings", "DATABASE_URL": url}
    env["LEEK_SQLITE_SYNCHRONOUS"] = "NORMAL" if sync == "pg" else sync
    return env


def _check_committed(timed: int) -> None:
    """Every write timed is committed when its time is taken: a floor that
    timed less than its writes (a batch handed to a writer thread and not
    waited for) would be no floor."""
    from leek.models import Task

    stored = Task.objects.count()
    if stored != timed:
        raise RuntimeError(f"{timed:,} tasks written and timed, but {stored:,} committed")


class _Writer:
    """leek's store on this process's database (Django set up, leek's schema
    made, every table empty), and its writes of noop tasks, each timed until
    its commit."""

    def __init__(self) -> None:
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        call_command("flush", interactive=False, verbosity=0)
        from bench import tasks
        from leek.protocol.payload import dump_task
        from leek.server.store import Store

        self.payload = dump_task(tasks.noop, (), {})
        # The writer thread writes a batch of HEAVY_PUSH or more.
        self.store = Store("bench-floor", lambda ready: None)
        self.store.start()
        self.written = 0  # tasks written so far, each committed once `write` returns
        self._errors: list[BaseException] = []
        self._committed = threading.Event()

    def _done(self, inserted: Any, error: BaseException | None) -> None:
        if error is not None:
            self._errors.append(error)
        self._committed.set()

    def write(self, count: int) -> None:
        """`count` new tasks in one write."""
        from leek.ids import new_task_ids

        self.write_tasks(
            [_new_task(i, "bench.tasks.noop", self.payload) for i in new_task_ids(count)]
        )

    def write_tasks(self, new: list[Any]) -> None:
        """`new` in one write, once it is committed."""
        self.written += len(new)
        # With no other writer, the calling thread writes a few tasks itself
        # and commits them before insert returns, as a broker's event loop
        # does; a batch of HEAVY_PUSH tasks or more goes to the store's writer
        # thread, and is timed until its commit all the same.
        self._committed.clear()
        self.store.insert(new, self._done)
        self._committed.wait()
        if self._errors:
            raise RuntimeError(f"the write failed: {self._errors[0]}") from self._errors[0]

    def batches(self, count: int) -> float:
        """Microseconds a task in `count` tasks written BATCH at a time."""
        start = time.perf_counter()
        for done in range(0, count, BATCH):
            self.write(min(BATCH, count - done))
        return (time.perf_counter() - start) / count * 1e6

    def stop(self) -> None:
        _check_committed(self.written)
        self.store.stop()


def _time_writes(sync: str) -> dict[str, float]:
    """In a process set up for one database: leek's schema, then its writes."""
    writer = _Writer()
    write = writer.write
    write(1)  # the connection, and the statement's first compile
    n = COMMITS[sync]
    start = time.perf_counter()
    for _ in range(n):
        write(1)
    found: dict[str, Any] = {"commit_us": round((time.perf_counter() - start) / n * 1e6, 1)}
    if sync == "NORMAL":
        # The same write right after the thread slept, as a broker's does
        # between one client's pushes: on a machine whose idle cores sleep
        # deeply, the first work after a wakeup runs slower.
        spent = 0.0
        for _ in range(n // 3):
            time.sleep(NAP)
            start = time.perf_counter()
            write(1)
            spent += time.perf_counter() - start
        found["commit_after_nap_us"] = round(spent / (n // 3) * 1e6, 1)
        write(BATCH)
        found["batch_row_us"] = round(writer.batches(BATCHES * BATCH), 2)
    if sync in ("NORMAL", "pg"):  # the databases of leek's processes variants
        found["busy_push"] = busy_round_trips(lambda: write(1))
    group = functools.partial(group_pushes, writer.write_tasks, writer.payload)
    runs: dict[str, list[float]] = {name: [] for name in GROUP_WAYS}
    for _ in range(GROUP_RUNS):  # in turns, as the round trips: see echo_round_trips
        for name, way in GROUP_WAYS.items():
            runs[name].append(group(*way))
    found["group"] = {name: round(statistics.median(rates)) for name, rates in runs.items()}
    if sync in ("NORMAL", "pg"):
        found.update(_mixed(writer))
    writer.stop()
    return found


def serve_batches() -> None:
    """The batch floor on demand, so that it can be measured in turns with
    the enqueue_many it bounds, on a table that grows as the broker's does:
    for each line N read, N tasks written BATCH at a time, then the store's
    checkpoint of what they wrote (Store.checkpoint, which a broker's duties
    run every tick), and a line with the microseconds a task took in each.
    The checkpoint is the write's too: a log never copied into the database
    file would grow without end. Ends at the end of its input."""
    writer = _Writer()
    writer.write(BATCH)  # the connection, and the statement's first compile
    for line in sys.stdin:
        count = int(line)
        write = writer.batches(count)
        start = time.perf_counter()
        writer.store.checkpoint()
        copy = (time.perf_counter() - start) / count * 1e6
        print(round(write, 2), round(copy, 2), flush=True)
    writer.stop()


def batch_floor(url: str) -> subprocess.Popen[str]:
    """`serve_batches` in a process of its own, on the SQLite file of `url`
    with synchronous=NORMAL: write N to its stdin, read the µs a task of the
    write and of the checkpoint."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench.floors", url, "NORMAL", "--batches"],
        env=_env(url, "NORMAL"),
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _mixed(writer: _Writer) -> dict[str, float]:
    """The mixed floor (bench/mixed_floor.py): the medians of its runs' rates
    and of the host's CPU a task in each."""
    from bench.mixed_floor import MIXED_RUNS, mixed_pushes

    runs = [mixed_pushes(writer) for _ in range(MIXED_RUNS)]
    return {
        "mixed_per_s": round(statistics.median(rate for rate, _ in runs)),
        "mixed_cpu_us": round(statistics.median(cpu for _, cpu in runs), 1),
    }


def _time_mixed() -> dict[str, float]:
    """The mixed floor alone, on demand (`--mixed`)."""
    writer = _Writer()
    writer.write(1)
    found = _mixed(writer)
    writer.stop()
    return found


if __name__ == "__main__":
    if sys.argv[3:] == ["--batches"]:
        serve_batches()
    elif sys.argv[3:] == ["--mixed"]:
        print(json.dumps(_time_mixed()))
    else:
        print(json.dumps(_time_writes(sys.argv[2])))
