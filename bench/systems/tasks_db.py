"""django-tasks-db: Django's database task backend, with 2 `db_worker` processes.

On SQLite (tuned as leek's: WAL, synchronous=NORMAL) or PostgreSQL. The workers
poll the table every BENCH_POLL_INTERVAL seconds when it is empty (0.01 by
default; the command's own default is 1 s) and loop without sleeping while
there is work.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from bench.common import Push, Runner
from bench.suite import main
from bench.systems import pg_util

POLL = os.environ.get("BENCH_POLL_INTERVAL", "0.01")
PG_DATABASE = "bench_tasks_db"


class TasksDBRunner(Runner):
    def __init__(self, variant: str, workdir: Path) -> None:
        self.name = f"tasks-db-{variant}"
        self.slow_scale = 0.2 if variant == "sqlite" else 0.05  # drain/mixed: a few seconds
        super().__init__(variant, workdir)
        self.sqlite = workdir / "tasks-db-bench.sqlite3"
        if variant == "sqlite":
            self.url = f"sqlite:///{self.sqlite}"
        else:
            self.url = pg_util.url_for(PG_DATABASE)
        os.environ["BENCH_TASKS_DB_URL"] = self.url
        os.environ["DJANGO_SETTINGS_MODULE"] = "bench.tasks_db_settings"

    def setup(self) -> None:
        if self.variant == "pg":
            server = pg_util.require_database(PG_DATABASE)
            store = f"PostgreSQL {server}"
        else:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.sqlite}{suffix}").unlink(missing_ok=True)
            store = "SQLite (WAL, synchronous=NORMAL)"
        subprocess.run(
            [sys.executable, "-m", "django", "migrate", "-v", "0"],
            env=self.env(),
            check=True,
            cwd=self.workdir,
        )
        import django

        django.setup()
        from bench.systems import tasks_db_app

        self.task = tasks_db_app.noop
        self.burn = tasks_db_app.burn
        self.config = (
            f"django-tasks-db {version('django-tasks-db')} (django-tasks "
            f"{version('django-tasks')}, Django {version('django')}); {store}; "
            f"{self.workers} db_worker processes, poll {POLL} s"
        )
        if self.variant == "pg":
            self.durability = pg_util.synchronous_commit(PG_DATABASE)
            pg_util.checkpoint(PG_DATABASE)
        else:
            self.durability = "SQLite WAL, synchronous=NORMAL"

    def versions(self) -> dict[str, str]:
        names = ["django-tasks-db", "django-tasks", "django"]
        return {p: version(p) for p in names + (["psycopg"] if self.variant == "pg" else [])}

    def reset(self) -> None:
        from django_tasks_db.models import DBTaskResult

        DBTaskResult.objects.all().delete()

    def client(self) -> Push:
        return self.task.enqueue

    def burn_client(self, loops: int) -> Push:
        enqueue = self.burn.enqueue

        def push() -> object:
            return enqueue(loops)

        return push

    def close_client(self) -> None:
        from django.db import connections

        connections.close_all()

    def start_workers(self) -> None:
        for i in range(self.workers):
            self.spawn(
                [
                    sys.executable,
                    "-m",
                    "django",
                    "db_worker",
                    "--interval",
                    POLL,
                    "--no-startup-delay",
                    "--no-reload",
                    "--worker-id",
                    f"bench-{i}",
                ],
                f"worker{i}",
            )


def make(variant: str, workdir: Path) -> Runner:
    return TasksDBRunner(variant, workdir)


if __name__ == "__main__":
    main(make, ["sqlite", "pg"])
