"""Task ids: version 7 UUIDs that sort by the time they were made."""

from __future__ import annotations

import copy
import os
import pickle
import time
import uuid

import pytest

from leek.ids import from_bytes, from_int, new_task_id, new_task_ids


def test_task_ids_are_uuid7_and_sort_by_time() -> None:
    ids = []
    for _ in range(5):
        ids.append(new_task_id())
        time.sleep(0.002)
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert sorted(ids, key=lambda i: i.bytes) == ids
    assert abs((ids[0].int >> 80) / 1000 - time.time()) < 5  # milliseconds since the epoch
    assert len({new_task_id() for _ in range(10_000)}) == 10_000


def test_from_int_makes_the_uuid_the_constructor_makes() -> None:
    values = [0, 1, (1 << 128) - 1, *(int.from_bytes(os.urandom(16), "big") for _ in range(1000))]
    for value in values:
        made, standard = from_int(value), uuid.UUID(int=value)
        assert made == standard and hash(made) == hash(standard)
        assert type(made) is uuid.UUID
        assert str(made) == str(standard) and made.bytes == standard.bytes
        assert made.is_safe == standard.is_safe
        assert pickle.loads(pickle.dumps(made)) == standard
        assert copy.deepcopy(made) == standard
    with pytest.raises(TypeError):
        made.int = 5  # type: ignore[misc] # immutable, as a UUID is


def test_from_bytes_makes_the_uuid_the_constructor_makes() -> None:
    for raw in [bytes(16), b"\xff" * 16, *(os.urandom(16) for _ in range(1000))]:
        made, standard = from_bytes(raw), uuid.UUID(bytes=raw)
        assert made == standard and made.bytes == raw and str(made) == str(standard)


def test_a_batch_of_ids_is_uuid7_each_of_its_own() -> None:
    batch = new_task_ids(1000)
    assert len(set(batch)) == 1000
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in batch)
    assert all(uuid.UUID(str(i)) == i for i in batch)
