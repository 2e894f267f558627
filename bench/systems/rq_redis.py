"""RQ 2 on Redis: two worker processes, either SimpleWorker or the default forking Worker.

Both are far slower than the rest (the forking Worker forks a work horse for
every job), so their drain and mixed workloads use a fraction of N, to keep
`make bench` short; the rate is the same, and the results give the N used.
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

from bench import tasks
from bench.common import Push, Runner
from bench.suite import main
from bench.systems import redis_util

WORKER_CLASS = {"simple": "rq.worker.SimpleWorker", "fork": "rq.worker.Worker"}


class RQRunner(Runner):
    def __init__(self, variant: str, workdir: Path) -> None:
        self.name = f"rq-{variant}"
        self.slow_scale = 0.05 if variant == "fork" else 0.3
        super().__init__(variant, workdir)

    def setup(self) -> None:
        server = redis_util.require_redis()
        kind = (
            "SimpleWorker (jobs in the worker)"
            if self.variant == "simple"
            else ("Worker (forks a work horse per job)")
        )
        self.config = (
            f"RQ {version('rq')}, Redis {server}; {self.workers} x {kind}; default result TTL"
        )
        self.durability = redis_util.redis_durability()

    def versions(self) -> dict[str, str]:
        return {p: version(p) for p in ("rq", "redis")}

    def reset(self) -> None:
        redis_util.flush()

    def client(self) -> Push:
        from redis import Redis
        from rq import Queue

        queue = Queue("bench", connection=Redis.from_url(redis_util.REDIS_URL))

        def push() -> object:
            return queue.enqueue(tasks.noop)

        return push

    def burn_client(self, loops: int) -> Push:
        from redis import Redis
        from rq import Queue

        queue = Queue("bench", connection=Redis.from_url(redis_util.REDIS_URL))

        def push() -> object:
            return queue.enqueue(tasks.burn, loops)

        return push

    def start_workers(self) -> None:
        for i in range(self.workers):
            self.spawn(
                [
                    sys.executable,
                    "-m",
                    "rq.cli",
                    "worker",
                    "-u",
                    redis_util.REDIS_URL,
                    "-w",
                    WORKER_CLASS[self.variant],
                    "--logging_level",
                    "WARNING",
                    "--disable-job-desc-logging",
                    "-n",
                    f"bench-{self.variant}-{i}",
                    "bench",
                ],
                f"worker{i}",
            )


def make(variant: str, workdir: Path) -> Runner:
    return RQRunner(variant, workdir)


if __name__ == "__main__":
    main(make, list(WORKER_CLASS))
