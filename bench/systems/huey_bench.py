"""huey 3 with 2 worker threads, on Redis or on SQLite.

On Redis the consumer blocks on the queue; on SQLite it polls, every
BENCH_POLL_INTERVAL seconds (0.01 by default; huey's own default starts at 0.1 s
and backs off to 10 s when idle).
"""

from __future__ import annotations

import os
import sqlite3
import sys
from importlib.metadata import version
from pathlib import Path
from types import ModuleType

from bench.common import Push, Runner
from bench.suite import main
from bench.systems import redis_util

POLL = os.environ.get("BENCH_POLL_INTERVAL", "0.01")


class HueyRunner(Runner):
    def __init__(self, variant: str, workdir: Path) -> None:
        self.name = f"huey-{variant}"
        super().__init__(variant, workdir)
        self.db = workdir / "huey-bench.sqlite3"
        os.environ["BENCH_HUEY_STORAGE"] = variant
        os.environ["BENCH_HUEY_SQLITE"] = str(self.db)
        self.app: ModuleType | None = None

    def setup(self) -> None:
        base = f"huey {version('huey')}, consumer with {self.workers} worker threads"
        if self.variant == "redis":
            server = redis_util.require_redis()
            self.config = f"{base}; Redis {server} (blocking reads)"
            self.durability = redis_util.redis_durability()
        else:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.db}{suffix}").unlink(missing_ok=True)
            self.config = f"{base}; SQLite {sqlite3.sqlite_version} (polls every {POLL} s)"
        from bench.systems import huey_app

        self.app = huey_app
        if self.variant == "sqlite":
            conn = huey_app.huey.storage.conn
            mode = conn.execute("pragma journal_mode").fetchone()[0]
            sync = conn.execute("pragma synchronous").fetchone()[0]
            names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
            self.durability = f"SQLite journal_mode={mode}, synchronous={names.get(sync, sync)}"

    def versions(self) -> dict[str, str]:
        names = ["huey"] + (["redis"] if self.variant == "redis" else [])
        found = {p: version(p) for p in names}
        if self.variant == "sqlite":
            found["sqlite"] = sqlite3.sqlite_version
        return found

    def reset(self) -> None:
        assert self.app is not None
        self.app.huey.flush()

    def client(self) -> Push:
        assert self.app is not None
        return self.app.noop  # type: ignore[no-any-return]

    def burn_client(self, loops: int) -> Push:
        assert self.app is not None
        burn = self.app.burn

        def push() -> object:
            return burn(loops)

        return push

    def start_workers(self) -> None:
        self.spawn(
            [
                sys.executable,
                "-m",
                "huey.bin.huey_consumer",
                "bench.systems.huey_app.huey",
                "-w",
                str(self.workers),
                "-k",
                "thread",
                "-d",
                POLL,
                "-m",
                POLL,
                "-C",
                "-q",
            ],
            "consumer",
        )


def make(variant: str, workdir: Path) -> Runner:
    return HueyRunner(variant, workdir)


if __name__ == "__main__":
    main(make, ["redis", "sqlite"])
