"""How fast the admin's pages are with a million tasks on PostgreSQL.

Fills a separate database (leek_admin_bench) with 1,000,000 Task rows, their
SuccessTask and FailedTask rows and two live brokers, in SQL (generate_series),
then times the pages through Django's test client, logged in as a superuser:
the median of 5 requests after one warm-up, in milliseconds. Target: < 300 ms.

    .venv/bin/python bench/admin_bench.py            # fill once, then time
    .venv/bin/python bench/admin_bench.py --fresh    # drop and fill again

Needs psql and a PostgreSQL server (PG_URL, default postgres://postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
DATABASE = "leek_admin_bench"
TARGET_MS = 300.0

FILL_TASKS = """
INSERT INTO leek_task (id, name, queue, priority, status, payload, args_repr, attempts,
                       max_retries, timeout, queued_at, run_after, started_at, finished_at,
                       broker, spooled, code_version, progress, progress_note)
SELECT md5(i::text)::uuid,
       CASE WHEN i % 50000 = 0 THEN 'app.tasks.yearly_report'
            ELSE 'app.tasks.' || (ARRAY['send_email', 'render_pdf', 'sync_crm', 'resize_image',
                                        'bill_customer', 'notify_slack', 'import_csv',
                                        'cleanup'])[1 + i % 8] END,
       CASE WHEN i % 40000 = 1 THEN 'audit'
            ELSE (ARRAY['default', 'emails', 'reports', 'media', 'billing'])[1 + (i / 7) % 5] END,
       i % 3,
       CASE WHEN s < 900 THEN 'succeeded' WHEN s < 950 THEN 'failed'
            WHEN s < 980 THEN 'cancelled' WHEN s < 998 THEN 'queued' ELSE 'running' END,
       convert_to(repeat(md5(i::text), 6), 'UTF8'),
       format('%s, user_id=%s, notify=True', i % 5000, i),
       CASE WHEN s < 980 OR s >= 998 THEN 1 ELSE 0 END,
       3, NULL,
       now() - i * interval '2.5 seconds',
       NULL,
       CASE WHEN s < 950 OR s >= 998
            THEN now() - i * interval '2.5 seconds' + interval '1 second' END,
       CASE WHEN s < 980 THEN now() - i * interval '2.5 seconds' + interval '2 seconds' END,
       '10.0.0.' || (1 + i % 2) || ':8002', false, 'v42', NULL, ''
FROM (SELECT i, (i * 7919) % 1000 AS s FROM generate_series(1::bigint, %(rows)s) AS i) AS g
"""

FILL_RUNS = [
    """
    INSERT INTO leek_successtask (task_id, name, attempt, started_at, finished_at, duration,
                                  result, result_repr, stdout, stderr)
    SELECT id, name, 1, started_at, finished_at, 1.0, NULL, 'True', 'sent\n', ''
    FROM leek_task WHERE status = 'succeeded'
    """,
    """
    INSERT INTO leek_failedtask (task_id, name, attempt, started_at, failed_at, exc_type,
                                 exc_message, traceback, final, requeued_at, stdout, stderr)
    SELECT id, name, 1, started_at, finished_at, 'builtins.ConnectionError',
           'upstream timed out', 'Traceback (most recent call last):\n  ...\n', true, NULL, '', ''
    FROM leek_task WHERE status = 'failed'
    """,
]


def psql(base: str, sql: str) -> str:
    parts = urlsplit(base)
    command = [
        "psql",
        "-h",
        parts.hostname or "127.0.0.1",
        "-p",
        str(parts.port or 5432),
        "-U",
        parts.username or "postgres",
        "-d",
        "postgres",
        "-Atc",
        sql,
    ]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def setup_django(url: str) -> None:
    os.environ.update(
        DATABASE_URL=url,
        DJANGO_SETTINGS_MODULE="settings",
        DEBUG="false",
        ALLOWED_HOSTS="testserver,127.0.0.1,localhost",
    )
    sys.path.insert(0, str(REPO))
    import django

    django.setup()


def fill(rows: int) -> None:
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE leek_task, leek_successtask, leek_failedtask CASCADE")
        cursor.execute(FILL_TASKS.replace("%(rows)s", str(int(rows))))
        for sql in FILL_RUNS:
            cursor.execute(sql)
    with connection.cursor() as cursor:  # autocommit: VACUUM cannot run in a transaction
        cursor.execute("VACUUM ANALYZE leek_task, leek_successtask, leek_failedtask")
    print(f"filled {rows:,} tasks and their runs in {time.perf_counter() - started:.1f} s")


def live_brokers() -> None:
    from django.utils import timezone

    from leek.models import BrokerNode

    now = timezone.now()
    for name in ("10.0.0.1:8002", "10.0.0.2:8002"):
        BrokerNode.objects.update_or_create(
            name=name,
            defaults={
                "host": name.split(":")[0],
                "port": 8002,
                "pid": 100,
                "version": "0.1.0",
                "code_version": "v42",
                "started_at": now,
                "heartbeat_at": now,
                "workers": 4,
                "workers_alive": 4,
                "handled": 0,
            },
        )


class QueryLog:
    """Counts a request's queries and keeps the slowest (an execute_wrapper)."""

    def __init__(self) -> None:
        self.count = 0
        self.slowest: tuple[float, str] = (0.0, "")

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.count += 1
            took = (time.perf_counter() - start) * 1000
            if took > self.slowest[0]:
                self.slowest = (took, sql)


def time_pages(pages: dict[str, str], runs: int) -> list[tuple[str, float, QueryLog]]:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    user_model = get_user_model()
    user = user_model.objects.filter(username="bench").first()
    if user is None:
        user = user_model.objects.create_superuser("bench", "bench@example.com", "bench")
    client = Client()
    client.force_login(user)
    results = []
    for label, url in pages.items():
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        times = []
        log = QueryLog()
        for _ in range(runs):
            log = QueryLog()
            with connection.execute_wrapper(log):
                start = time.perf_counter()
                client.get(url)
                times.append((time.perf_counter() - start) * 1000)
        results.append((label, statistics.median(times), log))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--verbose", action="store_true", help="print each page's slowest query")
    parser.add_argument("--fresh", action="store_true", help="drop and fill the database again")
    args = parser.parse_args()
    base = os.environ.get("PG_URL", "postgres://postgres@127.0.0.1:5432")
    if args.fresh:
        psql(base, f"DROP DATABASE IF EXISTS {DATABASE}")
    if not psql(base, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"):  # noqa: S608
        psql(base, f"CREATE DATABASE {DATABASE}")
    setup_django(f"{base}/{DATABASE}")
    from django.core.management import call_command

    from leek.models import FailedTask, Task

    call_command("migrate", verbosity=0)
    if Task.objects.order_by().values("pk")[: args.rows].count() < args.rows:
        fill(args.rows)
    live_brokers()
    some = (
        Task.objects.filter(status="failed").order_by("-queued_at").values_list("pk", flat=True)[0]
    )
    failure = FailedTask.objects.order_by("-failed_at").values_list("pk", flat=True)[0]
    pages = {
        "task list": "/admin/leek/task/",
        "task list, page 50": "/admin/leek/task/?p=50",
        "status = failed": "/admin/leek/task/?status__exact=failed",
        "status = running": "/admin/leek/task/?status__exact=running",
        "queue = billing": "/admin/leek/task/?queue=billing",
        "name = app.tasks.cleanup": "/admin/leek/task/?name=app.tasks.cleanup",
        "name: 20 of 1M rows": "/admin/leek/task/?name=app.tasks.yearly_report",
        "queue: 25 of 1M rows": "/admin/leek/task/?queue=audit",
        "failed + billing": "/admin/leek/task/?status__exact=failed&queue=billing",
        "search 'user_id=4242,'": "/admin/leek/task/?q=user_id%3D4242%2C",
        "search 'render_pdf'": "/admin/leek/task/?q=render_pdf",
        "search by task id": f"/admin/leek/task/?q={some}",
        "task page": f"/admin/leek/task/{some}/change/",
        "success list": "/admin/leek/successtask/",
        "failure list": "/admin/leek/failedtask/",
        "failure page": f"/admin/leek/failedtask/{failure}/change/",
        "dashboard": "/admin/leek/task/dashboard/",
    }
    print(
        f"{Task.objects.order_by().values('pk')[:2_000_000].count():,} tasks; "
        f"median of {args.runs} requests after a warm-up"
    )
    print(f"{'page':<28} {'ms':>8} {'queries':>8} {'slowest query ms':>17}")
    slow = 0
    for label, ms, log in time_pages(pages, args.runs):
        flag = "" if ms < TARGET_MS else "  over target"
        slow += bool(flag)
        print(f"{label:<28} {ms:8.1f} {log.count:8d} {log.slowest[0]:17.1f}{flag}")
        if args.verbose:
            print(f"    {log.slowest[1][:400]}")
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
