"""The floors `make bench` sets leek's figures against measure what they say.

A floor is leek's own write with nothing around it: a figure from a write
that was not committed when its time was taken would be no floor (a batch
handed to the store's writer thread and not waited for was)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_the_write_floors_time_committed_writes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'floor.sqlite3'}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "settings",
        "DATABASE_URL": url,
        "LEEK_SQLITE_SYNCHRONOUS": "NORMAL",
        "BENCH_FLOORS_QUICK": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench.floors", url, "NORMAL"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # It checks itself that every write it timed was committed when timed.
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(found) == {
        "commit_us",
        "commit_after_nap_us",
        "batch_row_us",
        "busy_push",
        "group",
        "mixed_per_s",
        "mixed_cpu_us",
    }
    assert all(found[key] > 0 for key in ("commit_us", "commit_after_nap_us", "batch_row_us"))
    assert set(found["group"]) == {
        "one_polling_per_s",
        "one_spin_per_s",
        "one_per_s",
        "four_polling_per_s",
        "four_spin_per_s",
        "four_per_s",
    }
    assert all(rate > 0 for rate in found["group"].values())
    assert found["mixed_per_s"] > 0  # it checks itself that every task ran once
    # The host's CPU a task, in /proc's ticks: a run of the few tasks of a quick
    # floor may fall within one tick.
    assert found["mixed_cpu_us"] >= 0


def test_the_batch_floor_served_in_turns_writes_and_times_what_it_is_asked(
    tmp_path: Path,
) -> None:
    import sqlite3
    from contextlib import closing

    from bench.floors import BATCH, batch_floor

    path = tmp_path / "batches.sqlite3"
    floor = batch_floor(f"sqlite:///{path}")
    try:
        # 2,500 tasks: two whole batches and a part, each committed when timed
        # (it checks that itself when its input ends, and exits 1 if not).
        reply, _ = floor.communicate("2500\n1\n", timeout=120)
    finally:
        floor.kill()
    assert floor.returncode == 0
    first, second = ([float(us) for us in line.split()] for line in reply.splitlines())
    assert first[0] > 0 and second[0] > 0  # the write
    assert first[1] > 0  # the checkpoint of what it wrote
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM leek_task").fetchone() == (BATCH + 2501,)
