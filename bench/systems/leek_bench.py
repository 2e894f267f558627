"""leek: one broker (`leek start`) with 2 workers, on SQLite or PostgreSQL.

Variants: sqlite-normal and sqlite-full (LEEK_SQLITE_SYNCHRONOUS), pg, whose
tasks run on the broker's worker threads (LEEK_POOL=threads); and
sqlite-normal-processes and pg-processes, the same with LEEK_POOL=processes:
each worker thread drives a worker process that runs its tasks. The timed
enqueue runs against a broker started with LEEK_WORKERS=0, which accepts and
commits tasks but runs none; the drain stops it (SIGTERM leaves the queue in
the database) and starts a broker with 2 workers, which recovers the queue and
runs it: the same path a restarted production broker takes.

Beyond the shared workloads, leek also measures:
  floor     ping from one client and from several client threads, and pushes
            from as many client processes as threads: the shared workloads'
            clients are threads of one process, which share its interpreter
  backlog   enqueue rate and broker memory (RSS) with --backlog tasks waiting
  recovery  seconds from launching a broker with that backlog to its first task
            starting, to its answering ping, and to the backlog having run
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench import floors, tasks
from bench.common import (
    REPO,
    Proc,
    Push,
    Runner,
    _timed_pushes,
    deadline_for,
    rss_kb,
    wait_until,
)
from bench.suite import main
from bench.systems import pg_util

PG_DATABASE = "leek_bench"
PORT = os.environ.get("BENCH_LEEK_PORT", "8102")
TWIN_PORT = str(int(PORT) + 1)  # the empty-queue broker the backlog is compared with
VARIANTS = ["sqlite-normal", "sqlite-full", "pg", "sqlite-normal-processes", "pg-processes"]
#: The suffix of a variant whose tasks run in worker processes.
PROCESSES = "-processes"
#: Parts of the backlog's fill, each followed by as many tasks of the batch
#: floor (bench/floors.py), so that the two are measured in turns.
FILL_TURNS = 10
_LEEK = Path(sys.executable).with_name("leek")
LEEK_START = (
    [str(_LEEK), "start"] if _LEEK.exists() else [sys.executable, "-m", "leek.cli", "start"]
)


class LeekRunner(Runner):
    def __init__(self, variant: str, workdir: Path) -> None:
        self.name = f"leek-{variant}"
        super().__init__(variant, workdir)
        self.pool = "processes" if variant.endswith(PROCESSES) else "threads"
        self.storage = variant.removesuffix(PROCESSES)  # sqlite-normal, sqlite-full or pg
        self.sqlite = workdir / f"leek-bench-{variant}.sqlite3"
        self.twin_sqlite = workdir / f"leek-bench-{variant}-empty.sqlite3"
        if self.storage == "pg":
            url = pg_util.url_for(PG_DATABASE)
        else:
            url = f"sqlite:///{self.sqlite}"
        os.environ.update(
            {
                "DJANGO_SETTINGS_MODULE": "settings",
                "DATABASE_URL": url,
                "LEEK_PORT": PORT,
                "LEEK_HOST": "127.0.0.1",
                "LEEK_SQLITE_SYNCHRONOUS": "FULL" if self.storage == "sqlite-full" else "NORMAL",
                "LEEK_POOL": self.pool,
                "LEEK_FALLBACK": "raise",  # a timed push must reach the broker, never spool
                "LEEK_LOG_LEVEL": "WARNING",
                "LEEK_MAX_RETRIES": "0",
            }
        )
        self.broker: Proc | None = None

    # ---- hooks -------------------------------------------------------------
    def setup(self) -> None:
        if self.storage == "pg":
            server = pg_util.require_database(PG_DATABASE)
            store = f"PostgreSQL {server}"
            self.durability = pg_util.synchronous_commit(PG_DATABASE)
            pg_util.checkpoint(PG_DATABASE)
        else:
            _remove_sqlite(self.sqlite)
            sync = os.environ["LEEK_SQLITE_SYNCHRONOUS"]
            store = f"SQLite (WAL, synchronous={sync})"
            self.durability = f"SQLite WAL, synchronous={sync}; acknowledged = committed"
        if self.storage == "pg":
            self.durability += "; acknowledged = committed"
        self._manage("migrate")
        import django

        django.setup()
        workers = (
            f"{self.workers} worker threads, each driving a worker process (LEEK_POOL=processes)"
            if self.pool == "processes"
            else f"{self.workers} worker threads (LEEK_POOL=threads)"
        )
        self.config = (
            f"leek {version('leek')} (Django {version('django')}); {store}; one broker, {workers}"
        )

    def versions(self) -> dict[str, str]:
        names = ["leek", "django"] + (["psycopg"] if self.storage == "pg" else [])
        return {p: version(p) for p in names}

    def reset(self) -> None:
        from django.core.management import call_command

        call_command("flush", interactive=False, verbosity=0)

    def client(self) -> Push:
        from leek import push_task_to_queue

        def push() -> object:
            return push_task_to_queue(tasks.noop)

        return push

    def burn_client(self, loops: int) -> Push:
        from leek import push_task_to_queue

        def push() -> object:
            return push_task_to_queue(tasks.burn, loops)

        return push

    def close_client(self) -> None:
        from django.db import connections

        from leek.client import connection

        connection.close()
        connections.close_all()

    def start_broker(self, workers: int, wait: bool = True) -> Proc:
        """Launch `leek start`; return once it answers ping (unless wait is False)."""
        if self.broker is not None:
            self.stop_workers()
        from leek import ping

        if ping()[0]:  # a stray broker would answer for the one about to start
            raise RuntimeError(f"a broker already answers on port {PORT}; stop it first")
        self.broker = self.spawn(LEEK_START, f"broker{workers}", LEEK_WORKERS=str(workers))
        if wait:
            self.wait_ready(self.broker)
        return self.broker

    def wait_ready(self, broker: Proc, timeout: float = 120) -> None:
        from leek import ping

        def ready() -> bool:
            if not broker.alive():
                raise RuntimeError(f"leek start exited:\n{broker.tail()}")
            return bool(ping()[0])

        wait_until(ready, timeout, "the broker to answer ping", step=0.005)

    def start_workers(self) -> None:
        self.start_broker(self.workers)

    def stop_workers(self) -> None:
        from leek.client import connection

        connection.close()
        super().stop_workers()
        self.broker = None

    def before_enqueue(self) -> None:
        self.start_broker(0)

    def after_enqueue(self) -> None:
        self.stop_workers()

    # ---- workloads ---------------------------------------------------------
    def drain(self, n: int, prefilled: bool = False) -> dict[str, Any]:
        """The shared drain, plus the time until every outcome is committed."""
        from leek.models import Task

        result = super().drain(n, prefilled)
        first = min(self.stamps.read())

        def recorded() -> bool:
            return bool(Task.objects.filter(status="succeeded").count() >= n)

        wait_until(recorded, 60, f"{n} succeeded Task rows", step=0.01)
        result["all_recorded_after"] = time.time() - first
        return result

    def own_figures(self, args: argparse.Namespace) -> dict[str, Any]:
        figures = {"floor": self._floor(args.n, args.threads)}
        if args.backlog <= 0:
            return figures
        try:
            return {**figures, **self._backlog(args.backlog, args.recovery_repeat)}
        finally:
            self.stop_workers()
            self.reset()

    def _floor(self, n: int, threads: int) -> dict[str, Any]:
        """The protocol's round trip with no work behind it: `ping`, answered
        by the connection's thread with no database write, from one client and
        from `threads`, one request at a time each, as the timed pushes go. No
        push can be faster than this on the same machine. Then `n` pushes from
        `threads` client processes, as the worker processes of a web server
        push, each with an interpreter of its own."""
        print(f"  {self.name}: round-trip floor (ping)", file=sys.stderr, flush=True)
        self.start_broker(0)
        try:
            pinger = _Pinger(self)
            one = n / _timed_pushes(pinger, n, 1)
            many = n / _timed_pushes(pinger, n, threads)
            processes = n / _forked_pushes(n, threads)
        finally:
            self.stop_workers()
        return {
            "ping_1_rate": one,
            "ping_many_rate": many,
            "threads": threads,
            "push_processes_rate": processes,
        }

    def _fill(self, count: int) -> float:
        """Queue `count` noops with enqueue_many (broker running, no workers); tasks/s."""
        from leek import enqueue_many

        batch = 1000
        start = time.perf_counter()
        for done in range(0, count, batch):
            enqueue_many([(tasks.noop, ())] * min(batch, count - done))
        return count / max(time.perf_counter() - start, 1e-9)

    def _fill_in_turns(self, count: int) -> dict[str, Any]:
        """`_fill`'s rate, and on SQLite NORMAL the batch floor's µs a task
        measured in turns with it: FILL_TURNS parts, each followed by as many
        tasks of the floor, on a file of its own that grows as the broker's
        does, with the checkpoint of each part (floors.serve_batches). The
        floor measured at the start of the run comes minutes before, on an
        empty table, and moved the ratio by half between runs."""
        if self.storage != "sqlite-normal":
            return {"enqueue_many_rate": self._fill(count)}
        path = self.workdir / "leek-bench-batch-floor.sqlite3"
        _remove_sqlite(path)
        floor = floors.batch_floor(f"sqlite:///{path}")
        assert floor.stdin is not None and floor.stdout is not None
        spent = written = copied = 0.0
        try:
            for turn in range(FILL_TURNS):
                part = count // FILL_TURNS + (turn < count % FILL_TURNS)
                spent += part / self._fill(part)
                floor.stdin.write(f"{part}\n")
                floor.stdin.flush()
                line = floor.stdout.readline()
                if not line:
                    raise RuntimeError("the batch floor ended early (its error is above)")
                write, copy = map(float, line.split())
                written += part * write
                copied += part * copy
        finally:
            floor.stdin.close()
            floor.wait(60)
        if floor.returncode != 0:
            raise RuntimeError(f"the batch floor exited with {floor.returncode}")
        return {
            "enqueue_many_rate": count / spent,
            "enqueue_many_floor_row_us": round((written + copied) / count, 2),
            "enqueue_many_floor_checkpoint_us": round(copied / count, 2),
        }

    def _manage(self, *command: str, **env: str) -> None:
        """`manage.py` of the bundled project, on this variant's database unless `env` says."""
        subprocess.run(
            [sys.executable, "manage.py", *command, "-v", "0"],
            env=self.env(**env),
            cwd=REPO,
            check=True,
        )

    def _twin(self) -> Proc:
        """A broker like the measured one, on an empty database of its own, on TWIN_PORT."""
        if self.storage == "pg":
            pg_util.require_database(PG_DATABASE + "_empty")
            url = pg_util.url_for(PG_DATABASE + "_empty")
        else:
            _remove_sqlite(self.twin_sqlite)
            url = f"sqlite:///{self.twin_sqlite}"
        env = {"DATABASE_URL": url, "LEEK_PORT": TWIN_PORT}
        self._manage("migrate", **env)
        self._manage("flush", "--no-input", **env)
        self._settle(url)
        twin = self.spawn(LEEK_START, "twin", LEEK_WORKERS="0", **env)
        try:
            _use_port(TWIN_PORT)
            self.wait_ready(twin)
        finally:
            _use_port(PORT)
        return twin

    def _settle(self, url: str) -> None:
        """Let the database finish the upkeep a large write sets off, as it
        would before long in production: on SQLite the copy of the
        write-ahead log into the database file, on PostgreSQL the vacuum and
        statistics that autovacuum would otherwise run in the middle of the
        timed pushes, and the checkpoint of what the fill wrote."""
        if url.startswith("sqlite"):
            import sqlite3
            from contextlib import closing

            def copied() -> bool:
                with closing(sqlite3.connect(url.removeprefix("sqlite:///"), timeout=60)) as db:
                    _, log, done = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                return bool(log == done)

            wait_until(copied, 300, "SQLite's checkpoint", step=0.1)
            return
        import psycopg

        with psycopg.connect(url, autocommit=True) as db:
            db.execute("VACUUM ANALYZE leek_task")
        pg_util.checkpoint(url.rsplit("/", 1)[1])

    def _backlog(self, size: int, repeat: int) -> dict[str, Any]:
        from leek import waiting
        from leek.models import Task

        print(f"  {self.name}: backlog of {size:,} tasks", file=sys.stderr, flush=True)
        self.stop_workers()
        self.reset()
        broker = self.start_broker(0)
        out: dict[str, Any] = {"backlog": size, "rss_empty_kb": _tree_rss(broker.pid)}
        out.update(self._fill_in_turns(size - waiting()[1]))
        out["waiting"] = waiting()[1]
        out["rss_backlog_kb"] = _tree_rss(broker.pid)
        # Single pushes on the backlog against pushes on an empty queue: a
        # second broker, started alike on an empty database of its own, and
        # the two measured in turns, so that both see the same moments of a
        # machine whose speed drifts from one minute to the next.
        self._settle(os.environ["DATABASE_URL"])
        twin = self._twin()
        try:
            rates, slowest = _push_rates({"backlog": PORT, "empty": TWIN_PORT})
        finally:
            _use_port(PORT)
            twin.stop()
        out["enqueue_1_rate_empty"] = statistics.median(rates["empty"])
        out["enqueue_1_rate_with_backlog"] = statistics.median(rates["backlog"])
        out["enqueue_1_runs"] = rates
        out["slowest_push_s"] = slowest
        out["rss_after_pushes_kb"] = _tree_rss(broker.pid)
        stopping = time.perf_counter()
        self.stop_workers()
        out["stop_seconds"] = time.perf_counter() - stopping

        # A broker started on the backlog: until it answers ping, until its first
        # task starts, until the whole backlog has run. Each run needs the backlog
        # back, since the one before ran it all.
        ready, first, drained, peak = [], [], [], []
        unfinished = Task.objects.filter(status__in=["queued", "running"])
        for i in range(repeat):
            print(f"  {self.name}: recovery {i + 1} of {repeat}", file=sys.stderr, flush=True)
            missing = size - unfinished.count()
            if missing > 0:
                self.start_broker(0)
                self._fill(missing)
                self.stop_workers()
            waiting_now = unfinished.count()
            self.stamps.clear()
            launched = time.time()
            self.start_broker(self.workers, wait=False)
            assert self.broker is not None
            self.wait_ready(self.broker, timeout=600)
            ready.append(time.time() - launched)
            self.stamps.wait(waiting_now, deadline_for(waiting_now))
            stamps = self.stamps.read()
            first.append(min(stamps) - launched)
            drained.append(max(stamps) - launched)
            peak.append(_tree_rss(self.broker.pid, "VmHWM"))
            self.stop_workers()
        out["recovery_ready_s"] = {"median": statistics.median(ready), "runs": ready}
        out["recovery_first_task_s"] = {"median": statistics.median(first), "runs": first}
        out["recovery_drained_s"] = {"median": statistics.median(drained), "runs": drained}
        out["rss_recovered_kb"] = max(peak)
        return out


class _Pinger:
    """A runner for `_timed_pushes` whose clients ping instead of pushing."""

    def __init__(self, runner: LeekRunner) -> None:
        self.runner = runner

    def client(self) -> Push:
        from leek import ping

        return ping

    def close_client(self) -> None:
        self.runner.close_client()


def _forked_pushes(n: int, count: int) -> float:
    """Push `n` tasks from `count` client processes forked from this one, each
    on a connection of its own, made before the clock starts; seconds from go
    to the last acknowledgement."""
    from leek import ping, push_task_to_queue

    share = [n // count + (1 if i < n % count else 0) for i in range(count)]
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    children = []
    for pushes in share:
        pid = os.fork()
        if pid == 0:  # a forked client connects anew (leek/client/connection.py)
            code = 1
            try:
                os.close(ready_r)
                os.close(go_w)
                ping()
                os.write(ready_w, b".")
                os.read(go_r, 1)  # the end of the pipe: go
                for _ in range(pushes):
                    push_task_to_queue(tasks.noop)
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    os.close(ready_w)
    os.close(go_r)
    ready = 0
    while ready < count:
        got = os.read(ready_r, count)
        if not got:
            break  # a client died before it connected: its status says why
        ready += len(got)
    os.close(ready_r)
    start = time.perf_counter()
    os.close(go_w)
    failed = [pid for pid in children if os.waitpid(pid, 0)[1] != 0]
    elapsed = time.perf_counter() - start
    if failed:
        raise RuntimeError(f"{len(failed)} of {count} client processes failed")
    return elapsed


def _use_port(port: int | str) -> None:
    """Point this process's client at the broker on `port`."""
    from leek import conf
    from leek.client import connection

    os.environ["LEEK_PORT"] = str(port)
    conf.get_settings.cache_clear()
    connection.close()


def _remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _push_rates(
    ports: dict[str, int | str], pushes: int = 1000, rounds: int = 5
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Single pushes to each broker in turn: `rounds` runs of `pushes` each.

    The rates of each run, tasks/s, and the slowest single push to each broker,
    in seconds: a pause the rate hides (a periodic duty holding the writes up,
    say) shows there."""
    from leek import ping, push_task_to_queue

    rates: dict[str, list[float]] = {name: [] for name in ports}
    slowest = dict.fromkeys(ports, 0.0)
    clock = time.perf_counter
    for _ in range(rounds):
        for name, port in ports.items():
            _use_port(port)
            ping()  # connected before the clock starts
            start = last = clock()
            for _ in range(pushes):
                push_task_to_queue(tasks.noop)
                now = clock()
                slowest[name] = max(slowest[name], now - last)
                last = now
            rates[name].append(pushes / (last - start))
    return rates, slowest


def _tree_rss(pid: int, field: str = "VmRSS") -> int:
    """RSS (or its peak, VmHWM) of a process and its children, in KiB."""
    total = rss_kb(pid, field)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return total + sum(_tree_rss(int(c), field) for c in children)


def make(variant: str, workdir: Path) -> Runner:
    return LeekRunner(variant, workdir)


if __name__ == "__main__":
    main(make, VARIANTS)
