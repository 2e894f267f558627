"""Run leek and its peers on the same workloads, one after another, and report.

    python -m bench.run [--quick] [--n N] [--repeat R] [--only NAME ...] [--skip NAME ...]

Every system runs in a subprocess of its own (bench/systems/*.py), so one that
crashes or hangs costs only its own figures. Results go to bench/results.json,
a table to the terminal and to docs/benchmarks.md (between its markers), and a
chart to docs/benchmarks.png. Settings also come from the environment:
BENCH_N, BENCH_REPEAT, BENCH_LATENCY_N, BENCH_CPU_N, BENCH_BURN_MS,
BENCH_QUICK=1, BENCH_BACKLOG (1 for a million tasks, or a number), BENCH_ONLY /
BENCH_SKIP (comma-separated names).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import floors, report, tasks
from bench.common import REPO, Skip
from bench.systems import pg_util, redis_util

#: name -> (runner module, variant, service it needs)
SYSTEMS: dict[str, tuple[str, str, str]] = {
    "celery-redis": ("celery_redis", "prefork", "redis"),
    "rq-simple": ("rq_redis", "simple", "redis"),
    "rq-fork": ("rq_redis", "fork", "redis"),
    "huey-redis": ("huey_bench", "redis", "redis"),
    "huey-sqlite": ("huey_bench", "sqlite", ""),
    "tasks-db-sqlite": ("tasks_db", "sqlite", ""),
    "tasks-db-pg": ("tasks_db", "pg", "postgres"),
    "leek-sqlite-normal": ("leek_bench", "sqlite-normal", ""),
    "leek-sqlite-normal-processes": ("leek_bench", "sqlite-normal-processes", ""),
    "leek-sqlite-full": ("leek_bench", "sqlite-full", ""),
    "leek-pg": ("leek_bench", "pg", "postgres"),
    "leek-pg-processes": ("leek_bench", "pg-processes", "postgres"),
}
RESULTS = REPO / "bench" / "results.json"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value.replace("_", "")) if value else default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    backlog_env = os.environ.get("BENCH_BACKLOG", "").strip()
    backlog = 1_000_000 if backlog_env == "1" else _env_int("BENCH_BACKLOG", 0) or None
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        default=quick,
        help="N=1000, 200 latency samples, one run, backlog 20,000, 300 CPU-bound tasks",
    )
    parser.add_argument("--n", type=int, default=None, help="tasks per workload (3000)")
    parser.add_argument("--repeat", type=int, default=None, help="runs per figure (3)")
    parser.add_argument("--latency-n", type=int, default=None, help="latency samples (500)")
    parser.add_argument(
        "--cpu-n", type=int, default=None, help="CPU-bound tasks the workers drain (600)"
    )
    parser.add_argument(
        "--burn-ms",
        type=float,
        default=float(os.environ.get("BENCH_BURN_MS") or 10),
        help="milliseconds of one core each CPU-bound task takes, calibrated once (10)",
    )
    parser.add_argument(
        "--backlog",
        type=int,
        default=backlog,
        help="leek's backlog size (100,000; BENCH_BACKLOG=1 for 1,000,000)",
    )
    parser.add_argument(
        "--recovery-repeat",
        type=int,
        default=_env_int("BENCH_RECOVERY_REPEAT", 1),
        help="leek's restarts on the backlog, each refilling it first (1)",
    )
    parser.add_argument("--only", nargs="*", default=_names("BENCH_ONLY"), metavar="NAME")
    parser.add_argument("--skip", nargs="*", default=_names("BENCH_SKIP"), metavar="NAME")
    parser.add_argument(
        "--timeout",
        type=float,
        default=_env_int("BENCH_SYSTEM_TIMEOUT", 900),
        help="seconds one system may take before it is stopped",
    )
    parser.add_argument("--no-docs", action="store_true", help="leave docs/ untouched")
    args = parser.parse_args(argv)
    args.threads = 4  # the tables name the figure "4 clients"
    q = args.quick
    args.n = args.n or _env_int("BENCH_N", 1000 if q else 3000)
    args.repeat = args.repeat or _env_int("BENCH_REPEAT", 1 if q else 3)
    args.latency_n = args.latency_n or _env_int("BENCH_LATENCY_N", 200 if q else 500)
    args.cpu_n = args.cpu_n or _env_int("BENCH_CPU_N", 300 if q else 600)
    if args.backlog is None:
        args.backlog = 20_000 if q else 100_000
    for name in [*args.only, *args.skip]:
        if name not in SYSTEMS:
            parser.error(f"unknown system {name!r}; known: {', '.join(SYSTEMS)}")
    return args


def _names(var: str) -> list[str]:
    return [n.strip() for n in os.environ.get(var, "").split(",") if n.strip()]


def check_services() -> dict[str, str]:
    """Which shared servers answer: service -> "" when fine, else why not."""
    found: dict[str, str] = {}
    try:
        found["redis"] = ""
        found["redis_version"] = redis_util.require_redis()
    except Skip as exc:
        found["redis"] = str(exc)
    try:
        found["postgres"] = ""
        found["postgres_version"] = pg_util.require_database("leek_bench")
    except Skip as exc:
        found["postgres"] = str(exc)
    return found


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "platform": platform.platform(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        info["leek_commit"] = (
            subprocess.run(
                ["git", "describe", "--always", "--dirty", "--abbrev=7"],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            or "?"
        )
    except OSError:
        info["leek_commit"] = "?"
    info["floors"] = floors.measure()
    return info


def run_system(
    name: str, args: argparse.Namespace, workdir: Path, burn_loops: int
) -> dict[str, Any]:
    module, variant, _ = SYSTEMS[name]
    out = workdir / f"{name}.json"
    argv = [
        sys.executable,
        "-m",
        f"bench.systems.{module}",
        "--variant",
        variant,
        "--n",
        str(args.n),
        "--repeat",
        str(args.repeat),
        "--threads",
        str(args.threads),
        "--latency-n",
        str(args.latency_n),
        "--workdir",
        str(workdir),
        "--out",
        str(out),
        "--backlog",
        str(args.backlog if name.startswith("leek") else 0),
        "--recovery-repeat",
        str(args.recovery_repeat),
        "--cpu-n",
        str(args.cpu_n),
        "--burn-ms",
        str(args.burn_ms),
        "--burn-loops",
        str(burn_loops),
    ]
    env = dict(os.environ, BENCH_WORKDIR=str(workdir), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    log = workdir / f"{name}.log"
    started = time.monotonic()
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # its handler stops the workers it started
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            code = -1
    _reap(workdir)
    doc: dict[str, Any] = {}
    if out.exists():
        doc = json.loads(out.read_text())
    doc.update(system=name, seconds=round(time.monotonic() - started, 1), log=str(log))
    if code == -1:
        doc["error"] = f"stopped after {args.timeout:.0f}s"
    elif code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:]
        doc["error"] = f"exited with status {code}: " + " | ".join(tail)[:300]
    return doc


def _reap(workdir: Path) -> None:
    """Kill any worker process group a runner left behind (it records their ids)."""
    pids = workdir / "pids.txt"
    if not pids.exists():
        return
    for line in pids.read_text().split():
        pid = int(line)
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    pids.unlink()


def _kept_systems(settings: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    """A partial run (--only/--skip) keeps the other systems of the last run made
    with the same settings, so one system can be measured again on its own."""
    last = _last()
    if last.get("settings") != settings:
        return []
    return [d for d in last.get("systems", []) if d.get("system") not in names]


def _last() -> dict[str, Any]:
    """bench/results.json of the last run; empty if there is none."""
    try:
        return dict(json.loads(RESULTS.read_text()))
    except (OSError, ValueError):
        return {}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n for n in SYSTEMS if (not args.only or n in args.only) and n not in args.skip]
    services = check_services()
    for service in ("redis", "postgres"):
        if services[service]:
            needing = [n for n in names if SYSTEMS[n][2] == service]
            print(f"!! {services[service]}: skipping {', '.join(needing) or 'nothing'}")
    workdir = Path(os.environ.get("BENCH_WORKDIR") or tempfile.mkdtemp(prefix="leek-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"bench: N={args.n}, latency samples={args.latency_n}, runs per figure={args.repeat}, "
        f"leek backlog={args.backlog:,}; logs in {workdir}",
        flush=True,
    )
    results: dict[str, Any] = {
        "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "n": args.n,
            "repeat": args.repeat,
            "latency_n": args.latency_n,
            "threads": args.threads,
            "backlog": args.backlog,
            "recovery_repeat": args.recovery_repeat,
            "cpu_n": args.cpu_n,
            "burn_ms": args.burn_ms,
            "poll_interval": float(os.environ.get("BENCH_POLL_INTERVAL", "0.01")),
        },
        "services": {k: v for k, v in services.items() if k.endswith("_version")},
        "systems": [],
    }
    kept = _kept_systems(results["settings"], names) if args.only or args.skip else []
    # One count of loops for every system in the results, so that all do the
    # same work: the kept systems' count, or one calibrated now.
    kept_burn = _last().get("burn") if kept else None
    results["burn"] = kept_burn or {"ms": args.burn_ms, "loops": tasks.loops_for(args.burn_ms)}
    burn_loops = results["burn"]["loops"]
    print(f"bench: a CPU-bound task is {burn_loops:,} loops ({args.burn_ms:g} ms when calibrated)")
    if kept:
        print(f"bench: keeping {', '.join(d['system'] for d in kept)} from the last run")
    ran: list[dict[str, Any]] = []
    for name in names:
        service = SYSTEMS[name][2]
        if service and services[service]:
            doc: dict[str, Any] = {"system": name, "skipped": services[service]}
        else:
            print(f"== {name}", flush=True)
            doc = run_system(name, args, workdir, burn_loops)
            if doc.get("skipped"):
                print(f"!! {name} skipped: {doc['skipped']}")
            elif doc.get("error"):
                print(f"!! {name}: {doc['error']}")
            else:
                print(f"   done in {doc['seconds']:.0f}s", flush=True)
        ran.append(doc)
        order = list(SYSTEMS)
        results["systems"] = sorted(  # the kept ones once, however many ran
            [d for d in kept if d["system"] not in names] + ran,
            key=lambda d: order.index(d["system"]) if d["system"] in order else len(order),
        )
        RESULTS.write_text(json.dumps(results, indent=2))
    print()
    print(report.text(results))
    if not args.no_docs:
        report.update_docs(results, REPO / "docs" / "benchmarks.md")
        try:
            from bench import plot

            plot.plot(results, REPO / "docs" / "benchmarks.png")
        except ImportError as exc:
            print(f"(no chart: {exc})")
    print(f"\nresults: {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
