"""The command line of a runner module: the workloads in order, repeated, as JSON.

    python -m bench.systems.NAME --variant V --workdir DIR --out FILE [--n N] ...

run.py starts one such process per system. The process writes its JSON document
after every repetition, so a system that dies late still leaves its figures.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import tasks
from bench.common import Runner, Skip

FIGURES = {  # name -> (workload, key in its result)
    "enqueue_1": ("enqueue_1", "rate"),
    "enqueue_4": ("enqueue_4", "rate"),
    "drain": ("drain", "rate"),
    "latency_p50": ("latency", "p50"),
    "latency_p99": ("latency", "p99"),
    "mixed": ("mixed", "rate"),
    "mixed_cpu_us": ("mixed", "cpu_us"),
    "cpu_rate": ("cpu_drain", "rate"),
    "cpu_push_p50": ("cpu_push", "p50"),
    "cpu_push_p99": ("cpu_push", "p99"),
}


def _suite(runner: Runner, args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """One repetition of every workload, in an order that reuses each queue it fills."""
    n = args.n
    slow_n = max(200, int(n * runner.slow_scale))
    runs: dict[str, list[dict[str, Any]]] = {}
    errors: list[str] = []

    def step(key: str, fn: Callable[[], dict[str, Any]]) -> bool:
        try:
            runs.setdefault(key, []).append(fn())
            return True
        except Exception as exc:  # one workload failing must not sink the others
            errors.append(f"{key}: {_brief(exc)}")
            traceback.print_exc()
            return False

    runner.stop_workers()
    runner.reset()
    runner.stamps.clear()
    if step("enqueue_1", lambda: runner.enqueue(n, 1)):
        # a slow system drains a smaller queue: queue just slow_n again (untimed)
        if slow_n < n:
            runner.reset()
            runner.enqueue(slow_n, 1)
        step("drain", lambda: runner.drain(slow_n, prefilled=True))
    else:
        step("drain", lambda: runner.drain(slow_n))
    try:
        if not runner.procs:
            runner.start_workers()
    except Exception as exc:
        errors.append(f"start_workers: {_brief(exc)}")
    step("latency", lambda: runner.latency(args.latency_n))
    step("mixed", lambda: runner.mixed(slow_n, args.threads))
    runner.stop_workers()
    runner.reset()
    step(f"enqueue_{args.threads}", lambda: runner.enqueue(n, args.threads))
    runner.reset()
    step("cpu_drain", lambda: runner.cpu_drain(args.cpu_n, args.burn_loops))
    runner.stop_workers()
    runner.reset()
    # the most burns a second the workers can run: each with a core of its own
    per_second = runner.workers * 1000 / args.burn_ms
    step("cpu_push", lambda: runner.cpu_push(args.latency_n, args.burn_loops, per_second))
    runner.stop_workers()
    runner.reset()
    if errors:
        runs.setdefault("errors", []).append({"messages": errors})
    return runs


def _brief(exc: BaseException) -> str:
    """An exception in one line: its type and the last line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1][:300] if lines else ''}"


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for figure, (workload, key) in FIGURES.items():
        values = [r[key] for r in runs.get(workload, []) if key in r]
        if values:
            figures[figure] = {"median": statistics.median(values), "runs": values}
    return figures


def main(factory: Callable[[str, Path], Runner], variants: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Run one system's benchmark suite.")
    parser.add_argument("--variant", choices=variants, default=variants[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--latency-n", type=int, default=500)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--recovery-repeat", type=int, default=1)
    parser.add_argument("--cpu-n", type=int, default=600)
    parser.add_argument("--burn-ms", type=float, default=10.0)
    parser.add_argument("--burn-loops", type=int, default=0, help="0: calibrate here")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    FIGURES[f"enqueue_{args.threads}"] = (f"enqueue_{args.threads}", "rate")
    args.burn_loops = args.burn_loops or tasks.loops_for(args.burn_ms)

    runner = factory(args.variant, args.workdir)
    doc: dict[str, Any] = {"system": runner.name, "variant": args.variant}

    def write() -> None:
        args.out.write_text(json.dumps(doc, indent=2))

    def on_term(signum: int, frame: object) -> None:
        runner.teardown()
        sys.exit(1)

    signal.signal(signal.SIGTERM, on_term)
    try:
        runner.setup()
    except Skip as exc:
        doc["skipped"] = str(exc)
        write()
        return
    doc.update(
        config=runner.config,
        durability=runner.durability,
        versions=runner.versions(),
        n=args.n,
        drain_n=max(200, int(args.n * runner.slow_scale)),
        cpu_n=args.cpu_n,
        burn={"ms": args.burn_ms, "loops": args.burn_loops},
    )
    all_runs: dict[str, list[dict[str, Any]]] = {}
    try:
        for i in range(args.repeat):
            print(f"  {runner.name}: run {i + 1} of {args.repeat}", file=sys.stderr, flush=True)
            runs = _suite(runner, args)
            for key, value in runs.items():
                all_runs.setdefault(key, []).extend(value)
            doc.update(runs=all_runs, figures=summarize(all_runs))
            write()
            if set(runs) == {"errors"}:
                print(f"  {runner.name}: every workload failed; not repeating", file=sys.stderr)
                break
        if doc.get("figures"):
            try:
                extra = runner.own_figures(args)
            except Exception as exc:
                traceback.print_exc()
                doc["extra_error"] = _brief(exc)
            else:
                if extra:
                    doc["extra"] = extra
    finally:
        runner.teardown()
    doc.update(runs=all_runs, figures=summarize(all_runs))
    write()
