"""The mixed floor: clients push while worker processes run the tasks, with
nothing of leek's own around the pushes, the writes and the runs.

Under the target "four clients pushing while the workers run no-op tasks
(processes pool) ≥ huey with Redis". Four client threads of one process, as
the mixed workload has them, push one task at a time in leek frames
(bench/floors.py's group clients) to one thread that reads every
connection, writes each round's tasks with leek's insert (its store,
committed before the replies), sends the replies, then hands each task to
an idle worker process over leek's pipe (leek/server/pipe.py). The process
checks and unpickles the payload and runs it as leek's worker process does
(`load_task`), and sends back the value, pickled. The same thread hands
each outcome to leek's store (`Store.record`), whose writer thread commits
them in groups, as a broker's does. The figure is tasks a second, from the
first push to the end of the last task's run, as the mixed workload counts
every system's (bench/common.py), with the host's CPU a task meanwhile; the
outcomes still to commit then are waited for before the next run.

What it leaves out is leek's own: the dispatcher and its lanes, a thread
driving each worker process, the running marks and the file of starts, the
task's output captured, the lifecycle's records and signals, the metrics.
What is left is what no design of leek's can leave out on PostgreSQL or
SQLite: the frames, a commit before each reply, a process boundary each way
for each task, and a commit of each outcome.
"""

from __future__ import annotations

import faulthandler
import os
import selectors
import socket
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import deque
from typing import Any

from bench import floors
from bench.common import host_busy
from bench.tasks import STAMP_LEN
from leek.conf import DEFAULTS
from leek.protocol import frame

#: Tasks pushed by each run, shared among the clients, its worker processes,
#: and its runs, whose median the floor is.
MIXED_PUSHES, MIXED_CLIENTS, MIXED_WORKERS, MIXED_RUNS = 6000, 4, 2, 3
if os.environ.get("BENCH_FLOORS_QUICK", "") not in ("", "0"):  # a few: the tests'
    MIXED_PUSHES, MIXED_RUNS = 40, 1
#: The niceness of leek's worker processes.
NICE = int(DEFAULTS["CHILD_NICE"])
#: The name of the floor's task (floors._new_task's).
NAME = "bench.tasks.noop"
#: Seconds the last outcomes may take to commit once every task has run.
SETTLE = 60.0


def mixed_pushes(
    writer: Any, clients: int = MIXED_CLIENTS, workers: int = MIXED_WORKERS
) -> tuple[float, float]:
    """Tasks a second from `clients` client processes pushing while
    `workers` worker processes run them, through `writer` (floors._Writer:
    leek's store on this process's database), and the host's CPU a task
    meanwhile, in µs (bench/common.py's mixed workload counts it alike)."""
    from leek.server.pipe import Pipe

    n = MIXED_PUSHES // clients
    total = n * clients
    ended = _Ended(total)
    pipes, children = [], []
    stamps = tempfile.NamedTemporaryFile(prefix="leek-mixed-floor-")  # noqa: SIM115
    for _ in range(workers):
        ours, theirs = socket.socketpair()
        child = os.fork()
        if child == 0:
            ours.close()
            _child(_work, Pipe(theirs), stamps.name)
        theirs.close()
        children.append(child)
        pipes.append(Pipe(ours))
    with socket.create_server(("127.0.0.1", 0), backlog=clients) as server:
        go_read, go_write = os.pipe()
        child = os.fork()
        if child == 0:
            _child(_push, clients, server.getsockname(), go_read, writer.payload, n)
        children.append(child)
        selector = selectors.DefaultSelector()
        for index, pipe in enumerate(pipes):
            selector.register(pipe.sock, selectors.EVENT_READ, index)
        for _ in range(clients):
            peer, _ = server.accept()
            peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            selector.register(peer, selectors.EVENT_READ)
        busy, _ = host_busy()
        os.write(go_write, b"x" * clients)
        start = time.perf_counter()
        _serve(selector, pipes, writer, total, ended)
        elapsed = time.perf_counter() - start  # the last task has run, as the workload counts
        cpu = (host_busy()[0] - busy) / total * 1e6
        if not ended.all.wait(SETTLE):
            _tell_stuck(writer.store)
            raise RuntimeError(f"{ended.count} of {total} outcomes committed")
        for pipe in pipes:
            pipe.close()  # the worker processes' end
        failed = sum(os.waitpid(child, 0)[1] != 0 for child in children)
        selector.close()
        os.close(go_read)
        os.close(go_write)
    ran = os.path.getsize(stamps.name) // STAMP_LEN
    stamps.close()
    if failed or ran != total:
        raise RuntimeError(f"{failed} of the mixed floor's processes failed, {ran} tasks ran")
    return round(total / elapsed), round(cpu, 1)


def _tell_stuck(store: Any) -> None:
    """What a floor whose outcomes did not all commit leaves on stderr, for
    the report's file (floors._writes): each lane of the store, every
    thread's stack, the tasks by status and what each of the database's
    sessions waits for."""
    print("-- the mixed floor's outcomes did not all commit", file=sys.stderr)
    for lane in store.lanes:
        print(
            f"lane {lane.name}: backlog {lane.backlog}, commits {lane.commits}, "
            f"healthy {lane.healthy} {lane.last_error!r}",
            file=sys.stderr,
        )
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT status, count(*) FROM leek_task GROUP BY status")
        print("tasks by status:", cursor.fetchall(), file=sys.stderr)
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT pid, state, wait_event_type, wait_event, xact_start, left(query, 200) "
                "FROM pg_stat_activity WHERE datname = current_database()"
            )
            for row in cursor.fetchall():
                print("session:", row, file=sys.stderr)
    sys.stderr.flush()


class _Ended:
    """The outcomes committed, counted on the store's writer thread."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.all = threading.Event()

    def one(self) -> None:
        self.count += 1
        if self.count == self.total:
            self.all.set()


def _serve(
    selector: selectors.BaseSelector,
    pipes: list[Any],
    writer: Any,
    total: int,
    ended: _Ended,
) -> None:
    """The thread of the floor: each round, the pushes read are written and
    answered, the outcomes read are handed to the store, and the tasks
    waiting go to the idle worker processes; until every task has run."""
    from leek.server.rows import Outcome

    keys = frame.Keys.broker(floors.SECRET)
    store = writer.store
    ready: deque[Any] = deque()
    idle = list(range(len(pipes)))
    running: dict[int, tuple[uuid.UUID, float]] = {}
    ran = 0
    while ran < total:
        events = selector.select(None)
        for key, _ in events:
            if key.data is None:
                continue  # a client's push: read below
            task_id, started = running.pop(key.data)  # a worker process's value
            value = pipes[key.data].receive()[1]
            finished = time.time()
            outcome = Outcome(
                task_id, NAME, 1, started, finished, True, result=value, epoch=store.epoch
            )
            store.record(outcome, ended.one)
            idle.append(key.data)
            ran += 1
        pushes = [event for event in events if event[0].data is None]
        tasks, replies, _ = floors.read_pushes(selector, pushes, keys)
        if tasks:
            writer.write_tasks(tasks)
            ready.extend(tasks)
        for sock, request_id, nonce, task_id in replies:
            sock.sendall(frame.encode(keys.send, (request_id, True, task_id), nonce))
        while ready and idle:
            worker, task = idle.pop(), ready.popleft()
            running[worker] = (task.id, time.time())
            pipes[worker].send((task.id.bytes, task.payload))
    for key in list(selector.get_map().values()):
        if key.data is None:  # no client is left by now: each ran its last push
            selector.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]


def _push(clients: int, address: tuple[str, int], go: int, payload: bytes, n: int) -> None:
    """The client process: `clients` threads, each pushing `n` tasks one at
    a time as the group floor's clients do, as the mixed workload's client
    threads push (bench/common.py)."""
    failed: list[BaseException] = []

    def push() -> None:
        try:
            floors._group_client(address, go, payload, n, 0.0)
        except BaseException as exc:
            failed.append(exc)
            raise

    threads = [threading.Thread(target=push) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failed:
        raise RuntimeError(f"{len(failed)} of the mixed floor's clients failed") from failed[0]


def _work(pipe: Any, stamps: str) -> None:
    """A worker process of the floor: each task's payload checked, unpickled
    and run (bench.tasks.noop stamps its run in `stamps`), its value sent
    back pickled; until the pipe closes."""
    from leek.protocol.payload import dump_value, load_task

    os.environ["BENCH_STAMP_FILE"] = stamps
    if NICE > 0:
        os.nice(NICE)
    while True:
        try:
            key, payload = pipe.receive()
        except EOFError:
            return
        fn, args, kwargs = load_task(payload, None)
        pipe.send((key, dump_value(fn(*args, **kwargs))))


def _child(run: Any, *args: Any) -> None:
    """In a forked process: `run(*args)`, then exit (1 when it raised)."""
    code = 0
    try:
        run(*args)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)
