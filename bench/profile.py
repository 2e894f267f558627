"""Where a push's microseconds go: one client against one broker, with CPU per side.

    .venv/bin/python -m bench.profile --db sqlite --verb push --n 20000
    .venv/bin/python -m bench.profile --db pg --verb ping --spy /tmp/broker.txt

Starts `leek start` with no workers (`--workers N` to run the tasks meanwhile,
on `--pool`) on an empty database of its own (SQLite
NORMAL in a temporary directory, or the PostgreSQL database `leek_profile`),
then `--threads` client threads of this process (1) send `--n` requests of one
verb each, each waiting for its answer. It prints the rate, the wall time of
one request, and the CPU each side spent on it (the broker's from /proc, the
client's from `time.process_time`), so a change to the push path shows on
which side it saved. `many` sends enqueue_many of 1,000 tasks, and counts tasks.

With `--spy FILE`, py-spy samples the broker meanwhile (every thread, idle ones
left out; with `--gil`, only the thread holding the interpreter lock) and FILE
gets its collapsed stacks; the top functions by samples, each with its own
share and the share of the stacks it is in, are printed. py-spy is not a dependency of leek:
`pip install py-spy` into the virtualenv first.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import Stamps, _percentiles

REPO = Path(__file__).resolve().parent.parent
PORT = "8131"
PG_DATABASE = "leek_profile"
TICKS = os.sysconf("SC_CLK_TCK")


def broker_cpu(pid: int) -> float:
    """Seconds of CPU the process has spent, user and system."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def sample(argv: list[str]) -> subprocess.Popen[bytes]:
    """A sampler of the broker (py-spy, strace), given a second to attach."""
    sampler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return sampler


def prepare(db: str, workdir: Path, workers: int, pool: str) -> dict[str, str]:
    env = dict(os.environ)
    if db == "pg":
        from bench.systems import pg_util

        pg_util.require_database(PG_DATABASE)
        url = pg_util.url_for(PG_DATABASE)
    else:
        url = f"sqlite:///{workdir / 'profile.sqlite3'}"
    env.update(
        DJANGO_SETTINGS_MODULE="settings",
        DATABASE_URL=url,
        LEEK_PORT=PORT,
        LEEK_HOST="127.0.0.1",
        LEEK_WORKERS=str(workers),
        LEEK_POOL=pool,
        BENCH_STAMP_FILE=str(workdir / "stamps"),
        LEEK_FALLBACK="raise",
        LEEK_LOG_LEVEL="WARNING",
        LEEK_SQLITE_SYNCHRONOUS="FULL" if db == "sqlite-full" else "NORMAL",
    )
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=REPO, env=env, check=True
    )
    if db == "pg":
        subprocess.run(
            [sys.executable, "manage.py", "flush", "--no-input"], cwd=REPO, env=env, check=True
        )
    os.environ.update(env)
    return env


def summarise(collapsed: Path, top: int = 25) -> list[tuple[str, float, float]]:
    """(function, self share, total share) of the most sampled functions."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    return [(f, n / samples, total[f] / samples) for f, n in own.most_common(top)]


def latency(stamps: Stamps, n: int) -> None:
    """`n` pushes 2 ms apart, each timed from the call to its task's start
    (its stamp), with the workers idle, as the bench's latency workload
    times them: p50 and p99 in ms."""
    import leek
    from bench import tasks

    samples = []
    for _ in range(n):
        time.sleep(0.002)
        base = stamps.count()
        start = time.time()
        leek.push_task_to_queue(tasks.noop)
        stamps.wait(base + 1, 30)
        samples.append((stamps.last() - start) * 1000)
    found = _percentiles(samples)
    print(f"latency: p50 {found['p50']:.2f} ms, p99 {found['p99']:.2f} ms over {n} pushes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", choices=["sqlite", "sqlite-full", "pg"], default="sqlite")
    parser.add_argument("--verb", choices=["push", "ping", "many", "latency"], default="push")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=1, help="client threads, N requests each")
    parser.add_argument("--spy", type=Path, help="write the broker's collapsed stacks here")
    parser.add_argument("--workers", type=int, default=0, help="workers running the no-op tasks")
    parser.add_argument("--pool", choices=["threads", "processes"], default="threads")
    parser.add_argument("--syscalls", type=Path, help="count the broker's system calls (strace)")
    parser.add_argument("--gil", action="store_true", help="sample threads holding the GIL only")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="leek-profile-"))
    env = prepare(args.db, workdir, args.workers, args.pool)
    log = open(workdir / "broker.log", "wb")  # noqa: SIM115 - closed below
    broker = subprocess.Popen(
        [sys.executable, "-m", "leek.cli", "start"], cwd=REPO, env=env, stdout=log, stderr=log
    )
    samplers: list[subprocess.Popen[bytes]] = []
    try:
        import django

        django.setup()
        import leek
        from bench import tasks
        from leek.client import connection

        deadline = time.monotonic() + 60
        while True:
            try:
                if leek.ping()[0]:
                    break
            except Exception:
                if time.monotonic() > deadline or broker.poll() is not None:
                    raise
            time.sleep(0.05)
        if args.verb == "latency":
            latency(Stamps(Path(env["BENCH_STAMP_FILE"])), args.n)
            return
        if args.verb == "ping":
            call: Any = leek.ping
        elif args.verb == "many":
            batch = [(tasks.noop, ()) for _ in range(1000)]

            def call() -> object:
                return leek.enqueue_many(batch)
        else:

            def call() -> object:
                return leek.push_task_to_queue(tasks.noop)

        for _ in range(min(2000, args.n // 10 + 1)):  # warm both sides
            call()
        if args.spy:
            samplers.append(
                sample(
                    ["py-spy", "record", "--pid", str(broker.pid), "--format", "raw"]
                    + ["--rate", "997", "--nonblocking", "-o", str(args.spy)]
                    + (["--gil"] if args.gil else [])
                )
            )
        if args.syscalls:
            samplers.append(
                sample(["strace", "-c", "-f", "-p", str(broker.pid), "-o", str(args.syscalls)])
            )

        def work() -> None:
            for _ in range(args.n):
                call()

        threads = [threading.Thread(target=work) for _ in range(args.threads)]
        cpu0, client0, wall0 = broker_cpu(broker.pid), time.process_time(), time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - wall0
        client = time.process_time() - client0
        server = broker_cpu(broker.pid) - cpu0
        requests = args.n * args.threads
        per = 1e6 / requests
        unit = "task" if args.verb == "many" else "request"
        count = requests * (1000 if args.verb == "many" else 1)
        print(
            f"{args.db} {args.verb} x{args.threads}: {count / wall:,.0f}/s; per {unit}: "
            f"{wall * 1e6 / count:.1f} µs wall, broker CPU {server * per:.1f} µs, "
            f"client CPU {client * per:.1f} µs (per request)"
        )
        connection.close()
    finally:
        for sampler in samplers:  # SIGINT: each writes what it found, then ends
            sampler.send_signal(signal.SIGINT)
            sampler.wait(30)
        broker.terminate()
        broker.wait(30)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.spy:
        print(f"broker, on the CPU ({args.spy}):")
        for name, share, total in summarise(args.spy):
            print(f"  {share:6.1%} {total:6.1%}  {name}")


if __name__ == "__main__":
    main()
