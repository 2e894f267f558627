"""What every runner shares: worker processes, the stamp file, and the workloads.

A runner subclasses `Runner` and supplies six hooks: `setup`, `reset` (empty its
queue while no worker runs), `client` (a push function for the calling thread),
`burn_client` (the same for the CPU-bound task), `start_workers` and
`stop_workers`. The workloads (`enqueue`, `drain`, `latency`, `mixed`,
`cpu_drain`, `cpu_push`) are written once here on top of those hooks, so every
system is measured by the same code; bench/suite.py runs them as a runner's
command line.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.tasks import STAMP_LEN

REPO = Path(__file__).resolve().parent.parent
Push = Callable[[], object]


class Skip(Exception):  # noqa: N818 - "skip this system", not an error
    """The system cannot run here (its server is unreachable); says why."""


class Stamps:
    """The stamp file that bench.tasks.noop appends to: one line per task started."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def clear(self) -> None:
        with open(self.path, "wb"):
            pass

    def count(self) -> int:
        try:
            return os.stat(self.path).st_size // STAMP_LEN
        except FileNotFoundError:
            return 0

    def read(self) -> list[float]:
        data = self.path.read_bytes()
        return [float(line) for line in data.split(b"\n") if line]

    def last(self) -> float:
        with open(self.path, "rb") as f:
            f.seek(-STAMP_LEN, os.SEEK_END)
            return float(f.read(STAMP_LEN))

    def wait(self, count: int, timeout: float) -> None:
        """Block until `count` tasks have started; raise TimeoutError with the count seen."""
        deadline = time.monotonic() + timeout
        while self.count() < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.count()} of {count} tasks ran in {timeout:.0f}s")
            time.sleep(0.0002)


class Proc:
    """A worker or broker process in its own session, so its children die with it."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv = argv
        self.log = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        with open(log.parent / "pids.txt", "a") as pids:  # run.py reaps leftovers
            pids.write(f"{self.popen.pid}\n")

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
        if self.alive():
            try:
                os.killpg(self.popen.pid, sig)
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
            except ProcessLookupError:
                pass
        self._log.close()

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def wait_until(check: Callable[[], bool], timeout: float, what: str, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(step)


def deadline_for(n: int) -> float:
    """A generous limit for n tasks: no system here is slower than 25 tasks/s."""
    return 60.0 + n / 25.0


#: Clock ticks a second of /proc's CPU times.
TICKS = os.sysconf("SC_CLK_TCK")


def host_busy() -> tuple[float, float]:
    """Seconds this host's CPUs have been busy, and in all, since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields) - idle) / TICKS, sum(fields) / TICKS


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    """Resident memory of one process (VmHWM: its peak), from /proc; 0 without /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Runner:
    """One system under test. Subclasses fill in the hooks below."""

    name = "system"
    #: What is being run, in a line: versions, workers, storage.
    config = ""
    #: How the system's own durability is set, in a line.
    durability = ""
    #: Worker processes or threads the system gets (the same everywhere: 2).
    workers = 2
    #: Scale of N for drain and mixed on systems far slower than the rest.
    slow_scale = 1.0

    def __init__(self, variant: str, workdir: Path) -> None:
        self.variant = variant
        self.workdir = workdir
        self.stamps = Stamps(workdir / f"stamps-{self.name}.txt")
        os.environ["BENCH_STAMP_FILE"] = str(self.stamps.path)
        self.procs: list[Proc] = []

    # ---- hooks -------------------------------------------------------------
    def setup(self) -> None:
        """Check the system's server, create its storage; raise Skip if it cannot run."""

    def reset(self) -> None:
        """Empty the queue and results (no worker is running)."""
        raise NotImplementedError

    def client(self) -> Push:
        """A function that pushes one noop and returns once it is acknowledged."""
        raise NotImplementedError

    def burn_client(self, loops: int) -> Push:
        """A function that pushes one burn(loops) and returns once it is acknowledged."""
        raise NotImplementedError(f"{self.name} has no CPU-bound task")

    def start_workers(self) -> None:
        raise NotImplementedError

    def stop_workers(self) -> None:
        for proc in self.procs:
            proc.stop()
        self.procs = []

    def before_enqueue(self) -> None:
        """Called before a timed enqueue with no worker running (leek starts its broker)."""

    def after_enqueue(self) -> None:
        """Called after it (leek stops its broker, leaving the queue in the database)."""

    def close_client(self) -> None:
        """Called in each client thread when it is done (close database connections)."""

    def teardown(self) -> None:
        self.stop_workers()

    def own_figures(self, args: argparse.Namespace) -> dict[str, Any]:
        """Figures only this system has (leek's backlog and recovery)."""
        return {}

    def versions(self) -> dict[str, str]:
        return {}

    # ---- helpers -----------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.update(extra)
        return env

    def spawn(self, argv: list[str], tag: str, **env: str) -> Proc:
        proc = Proc(argv, self.env(**env), self.workdir / f"{self.name}-{tag}.log")
        self.procs.append(proc)
        return proc

    def check_workers(self) -> None:
        for proc in self.procs:
            if not proc.alive():
                raise RuntimeError(f"{' '.join(proc.argv)} exited:\n{proc.tail()}")

    # ---- workloads ---------------------------------------------------------
    def enqueue(self, n: int, threads: int = 1) -> dict[str, Any]:
        """n pushes, each acknowledged, from `threads` client threads; no worker runs."""
        self.before_enqueue()
        try:
            elapsed = _timed_pushes(self, n, threads)
        finally:
            self.after_enqueue()
        return {"rate": n / elapsed, "n": n, "threads": threads, "seconds": elapsed}

    def drain(self, n: int, prefilled: bool = False) -> dict[str, Any]:
        """n tasks queued first, then the workers start: tasks/s from first start to last.

        The rate is counted from the first task's start, so a system's start-up
        time is not in it; the wall time from launching the workers is kept too.
        """
        if not prefilled:
            self.stamps.clear()
            self.enqueue(n, 1)
        stamps, launched = self._run_queue(n)
        span = max(max(stamps) - min(stamps), 1e-9)
        return {
            "rate": n / span,
            "n": n,
            "seconds": span,
            "wall_from_launch": max(stamps) - launched,
            "first_task_after": min(stamps) - launched,
        }

    def _run_queue(self, n: int) -> tuple[list[float], float]:
        """Start the workers on a queue of n tasks and wait for all of them:
        their stamps, and when the workers were launched."""
        self.stamps.clear()
        launched = time.time()
        self.start_workers()
        try:
            self.stamps.wait(n, deadline_for(n))
        except TimeoutError:
            self.check_workers()
            raise
        return self.stamps.read(), launched

    def latency(self, n: int) -> dict[str, Any]:
        """n tasks one after another with idle workers: enqueue -> task start, ms."""
        push = self.client()
        try:
            base = self.stamps.count()
            push()
            self.stamps.wait(base + 1, 30)
            samples = []
            for _ in range(n):
                time.sleep(0.002)  # let the worker that ran the last one go idle
                base = self.stamps.count()
                start = time.time()
                push()
                self.stamps.wait(base + 1, 30)
                samples.append((self.stamps.last() - start) * 1000)
        finally:
            self.close_client()
        return _percentiles(samples)

    def mixed(self, n: int, threads: int = 4) -> dict[str, Any]:
        """`threads` clients push n tasks while the workers run: end-to-end
        tasks/s, and the host's CPU a task meanwhile (`cpu_us`: every process
        of the host, the system's server, database, workers and clients alike,
        until the last task has started)."""
        base = self.stamps.count()
        busy, _ = host_busy()
        start = time.time()
        _timed_pushes(self, n, threads)
        try:
            self.stamps.wait(base + n, deadline_for(n))
        except TimeoutError:
            self.check_workers()
            raise
        cpu = (host_busy()[0] - busy) / n * 1e6
        span = max(self.stamps.read()[base:]) - start
        return {"rate": n / span, "n": n, "threads": threads, "seconds": span, "cpu_us": cpu}

    def cpu_drain(self, n: int, loops: int) -> dict[str, Any]:
        """n burn(loops) tasks queued first, then the workers start: tasks/s
        from the first task's end to the last one's (n - 1 tasks ended between).

        Counting from the first end leaves the workers' start-up out, as the
        drain does; the idle tail of the last worker to finish is at most one
        task long."""
        self.before_enqueue()
        try:
            _timed_pushes(self, n, 1, lambda: self.burn_client(loops))
        finally:
            self.after_enqueue()
        stamps, launched = self._run_queue(n)
        span = max(max(stamps) - min(stamps), 1e-9)
        return {
            "rate": (n - 1) / span,
            "n": n,
            "loops": loops,
            "seconds": span,
            "wall_from_launch": max(stamps) - launched,
        }

    def cpu_push(self, n: int, loops: int, per_second: float) -> dict[str, Any]:
        """Up to n pushes from one client while every worker runs burn(loops)
        tasks: how long each push takes to be acknowledged, ms.

        Every push is a burn, the timed ones too. The queue is filled first,
        with no worker running, with enough burns to keep workers that run
        `per_second` of them busy through n pushes of SLOW_PUSH seconds each,
        CPU_PUSH_SPACING apart; then the workers start, and once the first
        burn has ended the timed pushes begin. Nothing else pushes while a
        timed push runs (one untimed push first opens the client's
        connection). Slower pushes stop early, once workers that fast could
        have run FILL_USED of the queue: the result's `n` counts the pushes
        timed. Fails if the workers ran out of work before the end."""
        queued = round(per_second * (n * (CPU_PUSH_SPACING + SLOW_PUSH) + 2))
        self.before_enqueue()
        try:
            _timed_pushes(self, queued, 1, lambda: self.burn_client(loops))
        finally:
            self.after_enqueue()
        self.stamps.clear()
        self.start_workers()
        push = self.burn_client(loops)
        clock = time.perf_counter
        samples = []
        try:
            push()
            self.stamps.wait(1, deadline_for(queued))
            started = clock()
            deadline = started + FILL_USED * queued / per_second
            for _ in range(n):
                if clock() > deadline:
                    break
                time.sleep(CPU_PUSH_SPACING)
                start = clock()
                push()
                samples.append((clock() - start) * 1000)
            elapsed = clock() - started
        finally:
            self.close_client()
        ran = self.stamps.count()
        pushed = queued + 1 + len(samples)
        if pushed - ran < self.workers:
            raise RuntimeError(
                f"the workers ran out of work: {ran} of {pushed} burn tasks had run "
                f"after {len(samples)} timed pushes"
            )
        return {**_percentiles(samples), "queued": queued, "ran": ran, "seconds": elapsed}


#: Seconds between two timed pushes of cpu_push.
CPU_PUSH_SPACING = 0.005
#: The mean push, in seconds, that cpu_push fills its queue for.
SLOW_PUSH = 0.025
#: The share of its queue after which cpu_push stops timing pushes: the rest
#: is a margin for workers faster than the calibration said.
FILL_USED = 0.7


def _percentiles(samples: list[float]) -> dict[str, Any]:
    """p50, p99, mean and max of latency samples, in the unit they come in."""
    samples = sorted(samples)
    return {
        "p50": statistics.median(samples),
        "p99": samples[min(len(samples) - 1, round(0.99 * len(samples)) - 1)],
        "mean": statistics.fmean(samples),
        "max": samples[-1],
        "n": len(samples),
    }


def _timed_pushes(
    runner: Runner, n: int, threads: int, client: Callable[[], Push] | None = None
) -> float:
    """Push n tasks from `threads` threads at once, each thread's push function
    made by `client` (the runner's noop client unless given); seconds from go to
    the last ack."""
    make = client or runner.client
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []
    share = [n // threads + (1 if i < n % threads else 0) for i in range(threads)]

    def work(count: int) -> None:
        try:
            push = make()
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
            return
        try:
            barrier.wait()
            for _ in range(count):
                push()
        except BaseException as exc:
            errors.append(exc)
        finally:
            runner.close_client()

    pool = [threading.Thread(target=work, args=(c,), daemon=True) for c in share]
    for t in pool:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    start = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        first = errors[0]
        raise RuntimeError(
            f"{len(errors)} client thread(s) failed; first: {type(first).__name__}: {first}"
        ) from first
    return elapsed
