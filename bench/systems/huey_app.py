"""The huey instance and tasks the huey consumer loads (`bench.systems.huey_app.huey`).

BENCH_HUEY_STORAGE picks the storage: "redis" (RedisHuey at BENCH_REDIS_URL) or
"sqlite" (SqliteHuey at BENCH_HUEY_SQLITE, huey's defaults: WAL journal,
SQLite's own synchronous setting).
"""

from __future__ import annotations

import os

from huey import Huey, RedisHuey, SqliteHuey

from bench import tasks
from bench.systems.redis_util import REDIS_URL

STORAGE = os.environ.get("BENCH_HUEY_STORAGE", "redis")

huey: Huey
if STORAGE == "sqlite":
    huey = SqliteHuey("bench", filename=os.environ.get("BENCH_HUEY_SQLITE", "huey-bench.db"))
else:
    huey = RedisHuey("bench", url=REDIS_URL)


@huey.task(name="bench_noop")  # type: ignore[untyped-decorator]
def noop() -> None:
    tasks.noop()


@huey.task(name="bench_burn")  # type: ignore[untyped-decorator]
def burn(loops: int) -> None:
    tasks.burn(loops)
