"""A web process that pushes one keyed task many times at once.

Run as ``python -m tests.server.key_pusher KEY COUNT PATH`` with the settings
of a broker under test (tests.conftest.broker_env): it waits until PATH
exists (so that every process starts pushing at the same moment), pushes
``control_tasks.gated(PATH + ".open")`` COUNT times from COUNT threads, each
with key KEY, and prints the id of each handle, one a line.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import django


def main(key: str, count: str, path: str) -> None:
    django.setup()
    from django.db import connection

    import leek
    from tests.server import control_tasks

    start = Path(path)
    while not start.exists():
        time.sleep(0.005)
    ids: list[str] = []
    lock = threading.Lock()

    def push() -> None:
        handle = leek.enqueue(control_tasks.gated, (f"{path}.open",), key=key)
        with lock:
            ids.append(str(handle.id))
        connection.close()

    threads = [threading.Thread(target=push) for _ in range(int(count))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sys.stdout.write("".join(f"{i}\n" for i in ids))


if __name__ == "__main__":
    main(*sys.argv[1:4])
