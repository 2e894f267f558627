"""What LEEK["METRICS"] costs: one client pushing tasks one by one, metrics off and on.

Each run starts a broker of its own (a fresh SQLite database, WORKERS 4
running the no-op tasks as they come) and has one client push `-n` tasks
sequentially, each push waiting for its acknowledgement; with metrics on, a
thread scrapes the page once a second meanwhile, as Prometheus would. Runs
alternate off, on, on, off, ... so a machine that slows down over time
weighs on both alike. It prints each run's pushes per second and the median
of each mode. From the repository, with the main virtualenv:

    python -m bench.metrics -n 20000 --rounds 3
    python -m bench.metrics --calls     # the metrics calls alone, per task

The broker imports this module to run `noop`; importing it does nothing else.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def noop() -> None:
    """The task every push sends."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _push(count: int) -> None:
    """In a client process: push `count` tasks one by one; print the seconds taken."""
    import django

    django.setup()
    import leek
    from leek.client import connection

    leek.push_task_to_queue(noop)  # connect first
    start = time.perf_counter()
    for _ in range(count):
        leek.push_task_to_queue(noop)
    print(time.perf_counter() - start)
    connection.close()


def _scrape(port: int, stop: threading.Event, pages: list[str]) -> None:
    while not stop.wait(1.0):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:  # noqa: S310
                pages.append(page.read().decode())
        except OSError as exc:
            print(f"scrape failed: {exc}", file=sys.stderr)


def _run(count: int, metrics: bool, workdir: Path) -> float:
    """One broker, one client pushing `count` tasks: pushes per second."""
    db = workdir / f"bench-{time.monotonic_ns()}.sqlite3"
    port, metrics_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEEK_")}
    env.update(
        DJANGO_SETTINGS_MODULE="settings",
        PYTHONPATH=str(REPO),
        DATABASE_URL=f"sqlite:///{db}",
        LEEK_PORT=str(port),
        LEEK_WORKERS="4",
        LEEK_STATE_DIR=str(workdir / "state"),
        LEEK_METRICS=f"127.0.0.1:{metrics_port}" if metrics else "",
    )
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "-v0"], cwd=REPO, env=env, check=True)
    log = (workdir / "broker.log").open("ab")
    broker = subprocess.Popen(
        [python, "-m", "leek.cli", "start"], cwd=REPO, env=env, stdout=log, stderr=log
    )
    stop, pages = threading.Event(), []
    try:
        for _ in range(200):
            ping = subprocess.run(
                [python, "-m", "leek.cli", "ping"], cwd=REPO, env=env, capture_output=True
            )
            if ping.returncode == 0:
                break
            time.sleep(0.1)
        scraper = threading.Thread(target=_scrape, args=(metrics_port, stop, pages))
        if metrics:
            scraper.start()
        client = subprocess.run(
            [python, "-m", "bench.metrics", "--push", str(count)],
            cwd=REPO,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        seconds = float(client.stdout.strip().splitlines()[-1])
    finally:
        stop.set()
        if metrics:
            scraper.join()
        broker.terminate()
        broker.wait(60)
        log.close()
    if metrics and not pages:
        raise RuntimeError("metrics on, and no page was scraped")
    return count / seconds


def _calls(repeat: int = 200_000) -> dict[str, float]:
    """Microseconds the hot paths spend on metrics per task (a push, its
    attempt, its share of a commit of 10), with metrics off and on: the best
    of five timings of `repeat` tasks."""
    import timeit

    import django

    django.setup()
    from leek.ids import new_task_id
    from leek.server.metrics import OFF, Metrics, Recorder
    from leek.server.rows import NewTask, Outcome

    task = NewTask(new_task_id(), "noop", b"", "", "default", 0, 0, None, None, "")
    now = time.time()
    outcome = Outcome(new_task_id(), "noop", 1, now, now + 0.001, True)

    def per_task(metrics: Metrics) -> float:
        def one() -> None:
            metrics.pushed([task], None)
            metrics.finished("default", outcome)

        best = min(timeit.repeat(one, number=repeat, repeat=5))
        commit = min(
            timeit.repeat(
                lambda: metrics.committed("leek-writer", 10, 0.001), number=repeat, repeat=5
            )
        )
        return (best + commit / 10) / repeat * 1e6

    return {"off": per_task(OFF), "on": per_task(Recorder(None))}  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-n", type=int, default=20_000, help="tasks per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each mode")
    parser.add_argument("--push", type=int, help=argparse.SUPPRESS)  # a client process
    parser.add_argument("--calls", action="store_true", help="time the hot paths' calls only")
    args = parser.parse_args()
    if args.push is not None:
        _push(args.push)
        return
    if args.calls:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
        for mode, micros in _calls().items():
            print(f"metrics {mode:3}  {micros:6.2f} µs of metrics calls per task")
        return
    rates: dict[str, list[float]] = {"off": [], "on": []}
    order = ["off", "on", "on", "off"] * ((args.rounds + 1) // 2)
    with tempfile.TemporaryDirectory() as tmp:
        for mode in order[: 2 * args.rounds]:
            rate = _run(args.n, mode == "on", Path(tmp))
            rates[mode].append(rate)
            print(f"metrics {mode:3}  {rate:8.0f} pushes/s", flush=True)
    for mode, values in rates.items():
        print(f"median, metrics {mode}: {statistics.median(values):.0f} pushes/s")


if __name__ == "__main__":
    main()
