"""A broker's threads carry their names into the kernel, for `top -H`, perf and /proc."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

import leek
from leek.threads import Named, name_thread
from tests import tasks
from tests.conftest import BOTH_POOLS, BrokerProcess

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux's /proc")


def thread_names(pid: int) -> list[str]:
    """The kernel's name of each thread of `pid`."""
    return [
        (task / "comm").read_text().strip() for task in sorted(Path(f"/proc/{pid}/task").iterdir())
    ]


def own_name() -> str:
    """The kernel's name of the calling thread."""
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()


@BOTH_POOLS
def test_each_of_a_brokers_threads_is_named_in_the_kernel(broker: BrokerProcess) -> None:
    assert leek.push_task_to_queue(tasks.add, 1, 2).result(timeout=30) == 3
    assert broker.proc is not None
    names = thread_names(broker.proc.pid)
    for name in (
        "leek-loop",
        "leek-writer",
        "leek-duties",
        "leek-delayed",
        "leek-server",
        "leek-lobby",
        "leek-verb-0",
        "leek-worker-1",
    ):
        assert name in names, names
    # the process keeps its own name (its main thread's, whose id is the
    # process's): only the threads leek starts are renamed
    main = Path(f"/proc/{broker.proc.pid}/task/{broker.proc.pid}/comm").read_text().strip()
    assert main == Path(sys.executable).name[:15]


def test_a_named_thread_gives_the_kernel_its_name_cut_to_what_the_kernel_keeps() -> None:
    seen: list[str] = []
    thread = Named(target=lambda: seen.append(own_name()), name="leek-a-long-name-of-a-lane-7")
    thread.start()
    thread.join()
    assert seen == ["leek-a-long-nam"]


def test_a_name_is_cut_to_the_kernels_bytes_between_two_characters() -> None:
    seen: list[str] = []

    def run() -> None:
        name_thread("leek-worker-ééé")  # 12 bytes, then 2 a character
        seen.append(own_name())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == ["leek-worker-é"]
