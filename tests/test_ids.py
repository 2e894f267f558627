"""Task ids: version 7 UUIDs that sort by the time they were made."""

from __future__ import annotations

import time
import uuid

from leek.ids import new_task_id


def test_task_ids_are_uuid7_and_sort_by_time() -> None:
    ids = []
    for _ in range(5):
        ids.append(new_task_id())
        time.sleep(0.002)
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert sorted(ids, key=lambda i: i.bytes) == ids
    assert abs((ids[0].int >> 80) / 1000 - time.time()) < 5  # milliseconds since the epoch
    assert len({new_task_id() for _ in range(10_000)}) == 10_000
