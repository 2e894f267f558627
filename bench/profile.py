"""Where a push's microseconds go: one client against one broker, with CPU per side.

    .venv/bin/python -m bench.profile --db sqlite --verb push --n 20000
    .venv/bin/python -m bench.profile --db pg --verb ping --spy /tmp/broker.txt

Starts `leek start` with no workers (`--workers N` to run the tasks meanwhile,
on `--pool`) on an empty database of its own (SQLite
NORMAL in a temporary directory, or the PostgreSQL database `leek_profile`),
then `--threads` client threads of this process (1), or `--processes` client
processes forked from it, send `--n` requests of one verb each, each waiting
for its answer. It prints the rate, the wall time of one request, and the CPU
each side spent on it (the broker's from /proc, with its share in the kernel;
the clients' from getrusage), so a change to the push path shows on which side
it saved. `many` sends enqueue_many of 1,000 tasks, and counts tasks. `drain`
queues `--n` tasks with a broker that runs nothing, then starts another with
`--workers` and times the drain from the first task's start to the last one's,
with the broker's CPU a task, as the bench's drain does.

With `--spy FILE`, py-spy samples the broker meanwhile (every thread, idle ones
left out; with `--gil`, only the thread holding the interpreter lock) and FILE
gets its collapsed stacks; the top functions by samples, each with its own
share and the share of the stacks it is in, are printed. py-spy is not a dependency of leek:
`pip install py-spy` into the virtualenv first.

With `--by-thread`, each of the broker's threads that ran meanwhile, by the
name the kernel has for it (leek/threads.py), with its CPU a request and its
context switches a request: voluntary (it slept: a wait for a socket, a
lock or the interpreter lock) and involuntary (the kernel preempted it).
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import TICKS, Stamps, _percentiles, host_busy

REPO = Path(__file__).resolve().parent.parent
PORT = "8131"
PG_DATABASE = "leek_profile"


def broker_cpu(pid: int) -> tuple[float, float]:
    """Seconds of CPU the process has spent, in user space and in the kernel."""
    return _cpu(Path(f"/proc/{pid}"))


def _cpu(proc: Path) -> tuple[float, float]:
    """Seconds of CPU a process or a thread (its /proc directory) has spent,
    in user space and in the kernel."""
    fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def children_cpu(pid: int) -> float:
    """Seconds of CPU the live descendants of `pid` have spent: its worker
    processes, and the forkserver they are forked from."""
    total = 0.0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return total
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                total += sum(broker_cpu(int(child)))
            except OSError:
                continue
            total += children_cpu(int(child))
    return total


def database_cpu() -> float:
    """Seconds of CPU this host's PostgreSQL processes have spent, the server's
    own (walwriter, checkpointer) with the backends' (0 where none runs here)."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() != "postgres":
                continue
            total += sum(broker_cpu(int(proc.name)))
        except (OSError, ValueError):
            continue  # ended meanwhile
    return total


def by_thread(pid: int) -> dict[int, tuple[str, float, int, int]]:
    """Each thread of `pid`: its name as the kernel has it (leek/threads.py),
    its CPU seconds, and its voluntary and involuntary context switches."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            cpu = sum(_cpu(task))
            status = dict(line.split(":", 1) for line in (task / "status").read_text().splitlines())
        except OSError:
            continue  # ended meanwhile
        found[int(task.name)] = (
            name,
            cpu,
            int(status["voluntary_ctxt_switches"]),
            int(status["nonvoluntary_ctxt_switches"]),
        )
    return found


def print_by_thread(
    before: dict[int, tuple[str, float, int, int]],
    after: dict[int, tuple[str, float, int, int]],
    requests: int,
) -> None:
    """The threads that spent CPU or switched between two `by_thread`s, the
    busiest first: CPU µs, and voluntary (it slept) and involuntary (it was
    preempted) context switches, each a request."""
    rows = []
    for tid, (name, cpu, voluntary, involuntary) in after.items():
        _, cpu0, voluntary0, involuntary0 = before.get(tid, (name, 0.0, 0, 0))
        spent, slept, preempted = cpu - cpu0, voluntary - voluntary0, involuntary - involuntary0
        if spent or slept or preempted:
            rows.append((spent, name, slept, preempted))
    print("the broker's threads, a request: CPU µs, slept, preempted")
    for spent, name, slept, preempted in sorted(rows, reverse=True):
        print(
            f"  {name:<16} {spent / requests * 1e6:8.1f} {slept / requests:7.2f} "
            f"{preempted / requests:7.2f}"
        )


def client_cpu() -> float:
    """Seconds of CPU this process and its waited-for children have spent."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def in_processes(work: Any, count: int) -> None:
    """Run `work` in `count` forked client processes at once, each on a
    connection of its own, and wait for them all. A client that fails makes
    this raise with the client's traceback."""
    children = []
    with tempfile.TemporaryDirectory(prefix="leek-clients-") as told:
        for _ in range(count):
            pid = os.fork()
            if pid == 0:  # a forked client connects anew (leek/client/connection.py)
                code = 1
                try:
                    work()
                    code = 0
                except BaseException:  # kept: os._exit below leaves no traceback
                    Path(told, str(os.getpid())).write_text(traceback.format_exc())
                finally:
                    os._exit(code)
            children.append(pid)
        failed = []
        for pid in children:
            _, status = os.waitpid(pid, 0)
            if status:
                said = Path(told, str(pid))
                failed.append(f"status {status}: {said.read_text() if said.exists() else '?'}")
    if failed:
        raise RuntimeError(f"{len(failed)} client process(es) failed, the first with {failed[0]}")


def _py_spy() -> str:
    """py-spy: beside this interpreter (installed into its virtualenv), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("--spy needs py-spy: pip install py-spy into this virtualenv")
    return found


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
    parser.add_argument(
        "--verb", choices=["push", "ping", "many", "latency", "drain"], default="push"
    )
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=1, help="client threads, N requests each")
    parser.add_argument(
        "--processes", type=int, default=0, help="client processes instead, N requests each"
    )
    parser.add_argument("--spy", type=Path, help="write the broker's collapsed stacks here")
    parser.add_argument("--workers", type=int, default=0, help="workers running the no-op tasks")
    parser.add_argument("--pool", choices=["threads", "processes"], default="threads")
    parser.add_argument("--syscalls", type=Path, help="count the broker's system calls (strace)")
    parser.add_argument("--gil", action="store_true", help="sample threads holding the GIL only")
    parser.add_argument(
        "--by-thread",
        action="store_true",
        help="the broker's CPU and context switches a request, by thread",
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="leek-profile-"))
    env = prepare(args.db, workdir, args.workers, args.pool)
    log = open(workdir / "broker.log", "wb")  # noqa: SIM115 - closed below
    brokers: list[subprocess.Popen[bytes]] = []
    samplers: list[subprocess.Popen[bytes]] = []
    try:
        import django

        django.setup()
        from leek.client import connection

        if args.verb == "drain":
            # Filled by a broker that runs nothing, then drained by a fresh
            # one, which finds the tasks in the database, as the bench's drain.
            brokers.append(launch({**env, "LEEK_WORKERS": "0"}, log))
            fill(args.n)
            brokers[-1].terminate()
            brokers[-1].wait(30)
            brokers.append(launch(env, log))
            drain(Stamps(Path(env["BENCH_STAMP_FILE"])), args, brokers[-1].pid, samplers)
        else:
            brokers.append(launch(env, log))
            requests(args, env, brokers[-1].pid, samplers)
        connection.close()
    finally:
        for sampler in samplers:  # SIGINT: each writes what it found, then ends
            sampler.send_signal(signal.SIGINT)
            sampler.wait(30)
        for broker in brokers:
            broker.terminate()
            broker.wait(30)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.spy:
        print(f"broker, on the CPU ({args.spy}):")
        for name, share, total in summarise(args.spy):
            print(f"  {share:6.1%} {total:6.1%}  {name}")


def launch(env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    """A broker, once it answers ping."""
    import leek

    broker = subprocess.Popen(
        [sys.executable, "-m", "leek.cli", "start"], cwd=REPO, env=env, stdout=log, stderr=log
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if leek.ping()[0]:
                return broker
        except Exception:
            if time.monotonic() > deadline or broker.poll() is not None:
                broker.kill()
                raise
        time.sleep(0.05)


def samplers_of(
    args: argparse.Namespace, pid: int, samplers: list[subprocess.Popen[bytes]]
) -> None:
    """Start the samplers the arguments ask for on the broker `pid`."""
    if args.spy:
        samplers.append(
            sample(
                [_py_spy(), "record", "--pid", str(pid), "--format", "raw"]
                + ["--rate", "997", "--nonblocking", "-o", str(args.spy)]
                + (["--gil"] if args.gil else [])
            )
        )
    if args.syscalls:
        samplers.append(sample(["strace", "-c", "-f", "-p", str(pid), "-o", str(args.syscalls)]))


def fill(n: int) -> None:
    """`n` no-op tasks queued, in batches of 1,000."""
    import leek
    from bench import tasks

    for start in range(0, n, 1000):
        leek.enqueue_many([(tasks.noop, ()) for _ in range(min(1000, n - start))])


def drain(
    stamps: Stamps, args: argparse.Namespace, pid: int, samplers: list[subprocess.Popen[bytes]]
) -> None:
    """Time the drain of the `args.n` tasks queued, from the first task's
    start to the last one's, and the broker's CPU a task meanwhile."""
    stamps.wait(1, 60)
    samplers_of(args, pid, samplers)
    base, cpu0, workers0 = stamps.count(), broker_cpu(pid), children_cpu(pid)
    database0, host0 = database_cpu(), host_busy()
    stamps.wait(args.n, 600)
    user, system = (b - a for a, b in zip(cpu0, broker_cpu(pid), strict=True))
    workers = children_cpu(pid) - workers0
    database, host = database_cpu() - database0, host_busy()
    times = stamps.read()
    count = args.n - base
    wall = times[-1] - times[base - 1]
    print(
        f"{args.db} drain, {args.workers} {args.pool}: {count / wall:,.0f}/s; per task: "
        f"broker CPU {(user + system) / count * 1e6:.1f} µs "
        f"({system / (user + system) if user + system else 0:.0%} in the kernel)"
        + (f", worker processes' CPU {workers / count * 1e6:.1f} µs" if workers else "")
        + elsewhere(database, host0, host, count)
    )


def elsewhere(
    database: float, host0: tuple[float, float], host: tuple[float, float], count: int
) -> str:
    """The database server's CPU a task (when it runs on this host), and how
    busy the host's CPUs were meanwhile."""
    busy, total = (b - a for a, b in zip(host0, host, strict=True))
    said = f", database server's CPU {database / count * 1e6:.1f} µs" if database else ""
    return f"{said}; the host's CPUs {busy / total if total else 0:.0%} busy"


def requests(
    args: argparse.Namespace,
    env: dict[str, str],
    pid: int,
    samplers: list[subprocess.Popen[bytes]],
) -> None:
    """Time `args.n` requests of `args.verb` from each client."""
    import leek
    from bench import tasks

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
    samplers_of(args, pid, samplers)

    def work() -> None:
        for _ in range(args.n):
            call()

    clients = args.processes or args.threads
    cpu0, client0, wall0 = broker_cpu(pid), client_cpu(), time.perf_counter()
    workers0, database0, host0 = children_cpu(pid), database_cpu(), host_busy()
    threads0 = by_thread(pid) if args.by_thread else {}
    if args.processes:
        in_processes(work, args.processes)
    else:
        threads = [threading.Thread(target=work) for _ in range(args.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    wall = time.perf_counter() - wall0
    threads1 = by_thread(pid) if args.by_thread else {}
    client = client_cpu() - client0
    user, system = (b - a for a, b in zip(cpu0, broker_cpu(pid), strict=True))
    workers = children_cpu(pid) - workers0
    database, host = database_cpu() - database0, host_busy()
    server = user + system
    requests = args.n * clients
    per = 1e6 / requests
    unit = "task" if args.verb == "many" else "request"
    count = requests * (1000 if args.verb == "many" else 1)
    print(
        f"{args.db} {args.verb} x{clients}{' processes' if args.processes else ''}: "
        f"{count / wall:,.0f}/s; per {unit}: "
        f"{wall * 1e6 / count:.1f} µs wall, broker CPU {server * per:.1f} µs "
        f"({system / server if server else 0:.0%} in the kernel), "
        f"client CPU {client * per:.1f} µs (per request)"
        + (f", worker processes' CPU {workers * per:.1f} µs" if workers else "")
        + elsewhere(database, host0, host, requests)
    )
    if args.by_thread:
        print_by_thread(threads0, threads1, requests)


if __name__ == "__main__":
    main()
