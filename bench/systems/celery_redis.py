"""Celery 5 on Redis: a prefork worker with concurrency 2.

The module is also the Celery app the worker loads (`-A bench.systems.celery_redis`).
Results are off (`task_ignore_result`), Celery's defaults otherwise: acks early,
prefetch multiplier 4.
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

from celery import Celery

from bench import tasks
from bench.common import Push, Runner
from bench.suite import main
from bench.systems import redis_util

app = Celery("bench", broker=redis_util.REDIS_URL)
app.conf.update(
    task_ignore_result=True,
    task_default_queue="bench",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop() -> None:
    tasks.noop()


@app.task(name="bench.burn")  # type: ignore[untyped-decorator]
def burn(loops: int) -> None:
    tasks.burn(loops)


class CeleryRunner(Runner):
    name = "celery-redis"
    slow_scale = 0.5  # drain and mixed on half of N, to keep `make bench` short

    def setup(self) -> None:
        server = redis_util.require_redis()
        self.config = (
            f"Celery {version('celery')}, kombu {version('kombu')}, Redis {server}; "
            f"prefork worker, concurrency {self.workers}, results off"
        )
        self.durability = redis_util.redis_durability() + "; acks on receipt (Celery default)"

    def versions(self) -> dict[str, str]:
        return {p: version(p) for p in ("celery", "kombu", "redis")}

    def reset(self) -> None:
        redis_util.flush()

    def client(self) -> Push:
        def push() -> object:
            return noop.delay()

        return push

    def burn_client(self, loops: int) -> Push:
        def push() -> object:
            return burn.delay(loops)

        return push

    def start_workers(self) -> None:
        self.spawn(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.systems.celery_redis",
                "worker",
                "-P",
                "prefork",
                "-c",
                str(self.workers),
                "-Q",
                "bench",
                "-l",
                "warning",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            "worker",
        )


def make(variant: str, workdir: Path) -> Runner:
    return CeleryRunner(variant, workdir)


if __name__ == "__main__":
    main(make, ["prefork"])
