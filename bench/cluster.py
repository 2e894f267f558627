"""Several brokers on one PostgreSQL database: how the work scales with them.

Starts 1, 2, then 3 brokers on 127.0.0.1, all on one PostgreSQL database,
and pushes every task to the first one only (`enqueue_many`, in frames of
100): the others get work only by claiming the tasks the first one's full
lanes left unowned (leek/server/share.py). For each count of brokers and
each kind of task it prints the tasks run per second (first push to last
finish, by the database's clock) and how many each broker ran:

    noop     a task that does nothing: the brokers' own overhead
    io10     a task that sleeps 10 ms, as a task waiting on a network call

Then what sharing costs: the claims an idle broker makes and its CPU time
over IDLE_SECONDS, and one client's sequential pushes per second to a broker
whose lane has room (PREFETCH 0: nothing is ever left unowned) and to one
whose lane is full (every push inserted unowned; a second broker claims
them). A broker alone keeps every task, so the 1-broker figures are those of
a broker without sharing. Run it from the repository,
with PostgreSQL on BENCH_PG_URL (bench/systems/pg_util.py):

    python -m bench.cluster [--workers 4] [--noop 6000] [--io 3000]

The brokers import this module to run `noop` and `io10`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATABASE = "leek_bench_cluster"
#: Seconds the idle broker is watched.
IDLE_SECONDS = 10.0
#: Tasks per frame a push sends.
FRAME = 100


def noop() -> None:
    """Does nothing."""


def io10() -> None:
    """Waits 10 ms, as for a reply from another service."""
    time.sleep(0.01)


def _env(url: str, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEEK_")}
    env.update(
        DJANGO_SETTINGS_MODULE="settings",
        PYTHONPATH=str(REPO),
        DATABASE_URL=url,
        LEEK_PORT=str(port),
        LEEK_NODE_NAME=f"bench-{port}",
        LEEK_HEARTBEAT_INTERVAL="1",
        LEEK_SHUTDOWN_GRACE="1",
        **extra,
    )
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Brokers:
    """`count` broker processes on one database; stopped on exit."""

    def __init__(self, url: str, count: int, logs: Path, **env: str) -> None:
        from bench.common import Proc

        self.ports = [_free_port() for _ in range(count)]
        self.procs = [
            Proc(
                [sys.executable, "-m", "leek.cli", "start"],
                _env(url, port, **env),
                logs / f"broker-{port}.log",
            )
            for port in self.ports
        ]

    def __enter__(self) -> Brokers:
        import leek

        for port in self.ports:
            deadline = time.monotonic() + 30
            with _client(port):
                while not (_up(port) and leek.ping()[0]):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"broker on {port} did not answer")
                    time.sleep(0.05)
        with _client(self.ports[0]):  # the first one knows of the others
            while leek.stats()[1]["sharing"]["peers"] < len(self.ports) - 1:
                if time.monotonic() > deadline:
                    raise TimeoutError("the first broker does not see the others")
                time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        for proc in self.procs:
            proc.stop()


def _up(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class _client:  # noqa: N801 - a context manager used as a statement
    """The client of this process talks to the broker on `port` meanwhile."""

    def __init__(self, port: int) -> None:
        self.port = port

    def __enter__(self) -> None:
        from django.conf import settings

        from leek import conf
        from leek.client import connection

        connection.close()
        settings.LEEK = {**getattr(settings, "LEEK", {}), "PORT": self.port, "BROKERS": []}
        conf.get_settings.cache_clear()

    def __exit__(self, *exc: Any) -> None:
        from leek.client import connection

        connection.close()


def _clear() -> None:
    from leek.models import BrokerNode, FailedTask, SuccessTask, Task

    SuccessTask.objects.all().delete()
    FailedTask.objects.all().delete()
    Task.objects.all().delete()
    BrokerNode.objects.all().delete()


def _scale(
    url: str, logs: Path, brokers: int, fn: Any, count: int, workers: int, **env: str
) -> dict[str, Any]:
    """Push `count` tasks of `fn` to the first of `brokers`; their rate and spread."""
    from django.db.models import Count, Max, Min

    import leek
    from leek.models import SuccessTask

    _clear()
    with Brokers(url, brokers, logs, LEEK_WORKERS=str(workers), **env) as running:
        with _client(running.ports[0]):
            for at in range(0, count, FRAME):
                leek.enqueue_many([(fn, ()) for _ in range(min(FRAME, count - at))])
            deadline = time.monotonic() + 600
            while SuccessTask.objects.count() < count:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{SuccessTask.objects.count()} of {count} ran")
                time.sleep(0.05)
            claims = leek.stats()[1].get("sharing", {})
        span = SuccessTask.objects.aggregate(a=Min("started_at"), b=Max("finished_at"))
        per = dict(
            SuccessTask.objects.values_list("broker").annotate(n=Count("id")).order_by("broker")
        )
    from leek.models import Task

    first = Task.objects.order_by("queued_at").values_list("queued_at", flat=True).first()
    seconds = (span["b"] - (first or span["a"])).total_seconds()
    return {
        "brokers": brokers,
        "task": fn.__name__,
        "tasks": count,
        "seconds": round(seconds, 2),
        "per_second": round(count / seconds),
        "per_broker": [per.get(f"bench-{p}", 0) for p in running.ports],
        "first_broker_claims": claims,
    }


def _cpu(pid: int) -> float:
    """CPU seconds (user and system) of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _idle(url: str, logs: Path) -> dict[str, Any]:
    """An idle broker's claims and CPU time over IDLE_SECONDS."""
    import leek

    _clear()
    with Brokers(url, 1, logs, LEEK_WORKERS="4") as running:
        time.sleep(2)  # past its start
        pid = running.procs[0].pid
        with _client(running.ports[0]):
            before = leek.stats()[1]["sharing"]
            cpu = _cpu(pid)
            time.sleep(IDLE_SECONDS)
            used = _cpu(pid) - cpu
            after = leek.stats()[1]["sharing"]
    return {
        "claims_per_second": round((after["claims"] - before["claims"]) / IDLE_SECONDS, 2),
        "cpu_percent": round(100 * used / IDLE_SECONDS, 2),
    }


def _pushes(url: str, logs: Path, prefetch: str, count: int = 2000) -> float:
    """One client's sequential pushes per second to the first of two brokers,
    whose single worker a long task holds (PREFETCH 0: each push kept in
    memory; otherwise its lane is full and each is inserted unowned, for the
    second broker to claim)."""
    import leek

    _clear()
    with Brokers(url, 2, logs, LEEK_WORKERS="1", LEEK_PREFETCH=prefetch) as running:
        with _client(running.ports[0]):
            leek.enqueue(time.sleep, (60,))
            leek.enqueue(noop)  # fills a lane of bound 1
            for _ in range(200):  # connection and prepared statements warm
                leek.enqueue(noop)
            began = time.perf_counter()
            for _ in range(count):
                leek.enqueue(noop)
            return count / (time.perf_counter() - began)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4, help="workers per broker (4)")
    parser.add_argument("--noop", type=int, default=6000, help="no-op tasks per run (6000)")
    parser.add_argument("--io", type=int, default=3000, help="10 ms tasks per run (3000)")
    parser.add_argument("--brokers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--scale-only", action="store_true", help="no idle and push figures")
    parser.add_argument("--prefetch", default="", help="LEEK_PREFETCH of the brokers (its default)")
    args = parser.parse_args(argv)
    from bench.systems.pg_util import require_database, url_for

    require_database(DATABASE)
    url = url_for(DATABASE)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
    sys.path.insert(0, str(REPO))
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, check=True, env=os.environ
    )
    import django

    django.setup()
    logs = Path(tempfile.mkdtemp(prefix="leek-bench-cluster-"))
    print(  # noqa: T201
        f"PostgreSQL, {args.workers} thread workers per broker, PREFETCH "
        f"{args.prefetch or 'default'}; logs in {logs}"
    )
    print(f"{'task':<6} {'brokers':>7} {'tasks':>6} {'seconds':>8} {'tasks/s':>8}  per broker")  # noqa: T201
    results = []
    for fn, count in ((noop, args.noop), (io10, args.io)):
        for brokers in args.brokers:
            env = {"LEEK_PREFETCH": args.prefetch} if args.prefetch else {}
            r = _scale(url, logs, brokers, fn, count, args.workers, **env)
            results.append(r)
            print(  # noqa: T201
                f"{r['task']:<6} {r['brokers']:>7} {r['tasks']:>6} {r['seconds']:>8.2f} "
                f"{r['per_second']:>8}  {r['per_broker']}  {r['first_broker_claims']}",
                flush=True,
            )
    if args.scale_only:
        return 0
    idle = _idle(url, logs)
    print(  # noqa: T201
        f"idle broker: {idle['claims_per_second']} claims/s, {idle['cpu_percent']}% of a core"
    )
    kept = _pushes(url, logs, "0")
    given = _pushes(url, logs, "1")
    print(  # noqa: T201
        f"sequential pushes/s: kept in memory {kept:.0f}, inserted unowned {given:.0f}",
        flush=True,
    )
    (logs / "results.json").write_text(
        json.dumps({"scale": results, "idle": idle, "pushes": [kept, given]})
    )
    _clear()
    return 0


if __name__ == "__main__":
    sys.exit(main())
