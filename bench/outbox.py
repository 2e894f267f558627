"""What ATOMIC_PUSH "outbox" costs against "on_commit": transactions that push a task.

Each transaction writes a user row (an auth group) and pushes one task, like
a view that saves an order and sends its confirmation. Both modes run the
same transactions against a running broker, one after the other:

    on_commit   BEGIN; insert the group; COMMIT; then the push goes to the
                broker, which inserts the task and commits before it answers
    outbox      BEGIN; insert the group; insert the task row; COMMIT; then
                one wake (the sweep verb): the broker claims the row and runs it

For each mode it prints, per transaction: the time inside it (BEGIN to
COMMIT), the time the caller waits in all (the commit hooks included), and
how long after the COMMIT the task started on the broker. Run it from the
repository with the settings and database of a running `leek start`:

    DATABASE_URL=... python manage.py migrate
    DATABASE_URL=... leek start &
    DATABASE_URL=... python -m bench.outbox -n 500 --clients 1 4

The broker imports this module to run `noop`; importing it does nothing else.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import threading
import time
import uuid
from typing import Any


def noop() -> None:
    """The task every transaction pushes."""


def _stamp(stamps: list[float]) -> None:
    stamps.append(time.time())


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def _transactions(count: int, tag: str) -> list[tuple[uuid.UUID, float, float, float]]:
    """Run `count` transactions on this thread: (task id, start, commit, end) of each."""
    from django.contrib.auth.models import Group
    from django.db import connection, transaction

    import leek
    from leek.client import connection as broker

    done = []
    try:
        for i in range(count):
            stamps: list[float] = []
            start = time.time()
            with transaction.atomic():
                # The first hook runs right after COMMIT, before the push's own.
                transaction.on_commit(functools.partial(_stamp, stamps))
                Group.objects.create(name=f"bench-outbox-{tag}-{i}")
                handle = leek.enqueue(noop)
            done.append((handle.id, start, stamps[0], time.time()))
    finally:
        broker.close()
        connection.close()
    return done


def _run(mode: str, count: int, clients: int) -> dict[str, Any]:
    """`count` transactions in each of `clients` threads under ATOMIC_PUSH `mode`."""
    from django.conf import settings
    from django.test.utils import override_settings

    from leek.models import SuccessTask

    results: list[list[tuple[uuid.UUID, float, float, float]]] = [[] for _ in range(clients)]
    run = uuid.uuid4().hex[:8]

    def client(n: int) -> None:
        results[n] = _transactions(count, f"{run}-{n}")

    with override_settings(LEEK={**getattr(settings, "LEEK", {}), "ATOMIC_PUSH": mode}):
        _transactions(20, f"{run}-warm")  # connections open, statements prepared
        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        began = time.time()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.time() - began
    done = [row for rows in results for row in rows]
    ids = [row[0] for row in done]
    deadline = time.monotonic() + 120
    started: dict[uuid.UUID, float] = {}
    while len(started) < len(ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(started)} of {len(ids)} tasks ran within 120 s")
        time.sleep(0.05)
        rows = SuccessTask.objects.filter(task_id__in=ids).values_list("task_id", "started_at")
        started = {task_id: at.timestamp() for task_id, at in rows}
    inside = [(commit - start) * 1000 for _, start, commit, _ in done]
    total = [(end - start) * 1000 for _, start, _, end in done]
    wait = [(started[task_id] - commit) * 1000 for task_id, _, commit, _ in done]
    return {
        "mode": mode,
        "clients": clients,
        "transactions": len(done),
        "per_second": len(done) / elapsed,
        "inside_ms": statistics.median(inside),
        "total_ms": statistics.median(total),
        "total_p99_ms": _percentile(total, 99),
        "start_ms": statistics.median(wait),
        "start_p99_ms": _percentile(wait, 99),
    }


def _clean() -> None:
    from django.contrib.auth.models import Group

    from leek.models import Task

    Group.objects.filter(name__startswith="bench-outbox-").delete()
    Task.objects.filter(name=f"{__name__}.noop").delete()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=500, help="transactions per client (500)")
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[1], help="threads pushing at once (1)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
    sys.path.insert(0, os.getcwd())
    import django

    django.setup()
    from django.db import connection

    import leek

    ok, message = leek.ping()
    if not ok:
        print(f"bench.outbox: no healthy broker: {message}; start one with `leek start`")  # noqa: T201
        return 2
    print(  # noqa: T201
        f"database {connection.vendor}, {args.n} transactions per client\n"
        f"{'mode':<10} {'clients':>7} {'txn/s':>8} {'in txn':>8} {'caller':>8} "
        f"{'p99':>8} {'start':>8} {'p99':>8}   (medians in ms; start: COMMIT to task start)"
    )
    try:
        for clients in args.clients:
            for mode in ("on_commit", "outbox"):
                r = _run(mode, args.n, clients)
                print(  # noqa: T201
                    f"{r['mode']:<10} {r['clients']:>7} {r['per_second']:>8.0f} "
                    f"{r['inside_ms']:>8.2f} {r['total_ms']:>8.2f} {r['total_p99_ms']:>8.2f} "
                    f"{r['start_ms']:>8.2f} {r['start_p99_ms']:>8.2f}",
                    flush=True,
                )
    finally:
        _clean()
    return 0


if __name__ == "__main__":
    sys.exit(main())
