"""Delayed tasks take bounded memory: payloads for the MEMORY_DELAYED soonest due only."""

from __future__ import annotations

import hashlib
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import leek
from leek.client import connection as client
from leek.client.api import batch
from leek.models import FailedTask, Task
from leek.server.delayed import Delayed
from leek.server.rows import Job, Ready
from tests import tasks
from tests.conftest import BOTH_POOLS, BrokerFactory, BrokerProcess, wait_for

LATER = 30 * 24 * 3600.0  # seconds: a delay no test outlives
BLOB = 10 * 1024  # bytes of argument per task
PAGE = 500  # tasks per enqueue_batch frame (about 5 MB)


# -- the heap itself, with a release that records what it gets ------------------


class Released:
    """A release that records the tasks it gets."""

    def __init__(self) -> None:
        self.items: list[Ready] = []

    def __call__(self, items: list[Ready]) -> None:
        self.items += items


@pytest.fixture
def released() -> Released:
    return Released()


def ready(at: float, payload: bytes = b"x", queue: str = "default", priority: int = 0) -> Ready:
    return Ready(uuid.uuid4(), priority, queue, at, Job(payload, "t", 0, 3, None))


def release_due(delayed: Delayed, released: Released, count: int) -> list[Ready]:
    """Run the heap's thread until `count` tasks came out, then stop it."""
    delayed.start()
    try:
        wait_for(lambda: len(released.items) >= count, timeout=10)
    finally:
        delayed.stop()
    return released.items


def test_only_the_soonest_due_keep_their_payloads(released: Released) -> None:
    delayed = Delayed(released, memory=3)
    now = time.time()
    late = [ready(now + LATER + i) for i in range(5)]
    delayed.add(late)
    assert delayed.held() == 3
    soon = [ready(now - 10 + i) for i in range(2)]
    delayed.add(soon)
    assert delayed.held() == 3  # the latest kept gave theirs up
    out = release_due(delayed, released, 2)
    assert [r.id for r in out] == [r.id for r in soon]
    assert [r.job for r in out] == [r.job for r in soon]


def test_tasks_due_at_the_same_time_come_out_in_the_order_they_went_in(
    released: Released,
) -> None:
    delayed = Delayed(released, memory=0)
    at = time.time() - 1
    items = [ready(at) for _ in range(20)]
    delayed.add(items)
    out = release_due(delayed, released, 20)
    assert [r.id for r in out] == [r.id for r in items]


def test_a_task_past_the_bound_is_released_without_its_payload(released: Released) -> None:
    delayed = Delayed(released, memory=1)
    now = time.time()
    first, second = ready(now - 2), ready(now - 1)
    delayed.add([first, second])
    out = release_due(delayed, released, 2)
    assert [(r.id, r.job) for r in out] == [(first.id, first.job), (second.id, None)]


def test_a_task_of_another_queue_and_priority_comes_out_as_it_went_in(
    released: Released,
) -> None:
    delayed = Delayed(released, memory=0)
    item = ready(time.time() - 1, queue="pdfs", priority=7)
    delayed.add([item])
    assert delayed.counts() == {"pdfs": 1}
    (out,) = release_due(delayed, released, 1)
    assert (out.id, out.priority, out.queue, out.job) == (item.id, 7, "pdfs", None)
    assert delayed.counts() == {}


def test_a_cancelled_task_gives_its_payload_up_at_once(released: Released) -> None:
    delayed = Delayed(released, memory=10)
    items = [ready(time.time() + LATER, queue=q) for q in ("default", "pdfs")]
    delayed.add(items)
    assert delayed.held() == 2
    assert delayed.cancel(items[1].id)
    assert delayed.held() == 1
    assert delayed.counts() == {"default": 1}
    assert not delayed.cancel(items[1].id)
    assert not delayed.cancel(uuid.uuid4())


def test_cancelled_entries_leave_the_heap_once_they_are_half_of_it(
    released: Released,
) -> None:
    delayed = Delayed(released, memory=0)
    items = [ready(time.time() + LATER + i) for i in range(100)]
    delayed.add(items)
    for item in items[:50]:
        assert delayed.cancel(item.id)
    assert len(delayed._heap) == 100  # dead entries wait: half the heap, not more
    assert delayed.cancel(items[50].id)
    assert len(delayed._heap) == 49
    assert len(delayed) == 49 and delayed.counts() == {"default": 49}


def test_a_task_added_again_waits_once_at_its_new_time(released: Released) -> None:
    delayed = Delayed(released, memory=10)
    item = ready(time.time() + LATER)
    delayed.add([item])
    again = Ready(item.id, 0, "default", time.time() - 1, item.job)
    delayed.add([again])
    assert delayed.counts() == {"default": 1} and delayed.held() == 1
    (out,) = release_due(delayed, released, 1)
    assert out.id == item.id and out.job == item.job
    assert delayed.counts() == {} and delayed.held() == 0


def test_a_payload_freed_by_a_release_makes_room_for_the_next(released: Released) -> None:
    delayed = Delayed(released, memory=1)
    first = ready(time.time() - 1)
    delayed.add([first])
    release_due(delayed, released, 1)
    assert delayed.held() == 0
    delayed.add([ready(time.time() + LATER)])
    assert delayed.held() == 1


def test_the_order_of_kept_payloads_stays_small_as_tasks_come_and_go(
    released: Released,
) -> None:
    delayed = Delayed(released, memory=5)
    for _ in range(50):
        items = [ready(time.time() + LATER) for _ in range(5)]
        delayed.add(items)
        for item in items:
            delayed.cancel(item.id)
    assert delayed.held() == 0
    assert len(delayed._latest) <= 2 * 5 + 64


# -- the setting -----------------------------------------------------------------


def memory_errors(leek_settings: Any, value: Any) -> list[str]:
    from leek.checks import check_settings

    leek_settings(MEMORY_DELAYED=value)
    return [e.msg for e in check_settings() if e.id == "leek.E002"]


@pytest.mark.parametrize("value", [-1, "many", 2.5])
def test_the_check_refuses_a_memory_delayed_that_is_not_a_count(
    leek_settings: Any, value: Any
) -> None:
    assert memory_errors(leek_settings, value) == [
        f"LEEK['MEMORY_DELAYED'] must be a whole number of at least 0, got {value!r}."
    ]


def test_the_check_takes_a_memory_delayed_of_zero_and_the_environment_sets_it(
    leek_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert memory_errors(leek_settings, 0) == []
    monkeypatch.setenv("LEEK_MEMORY_DELAYED", "250")
    leek_settings()  # read the settings again
    from leek import conf

    assert conf.get("MEMORY_DELAYED") == 250


# -- real brokers ----------------------------------------------------------------


def rss_kib(process: BrokerProcess) -> int:
    """The broker process's resident memory, in KiB."""
    assert process.proc is not None
    for line in Path(f"/proc/{process.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS line")


def blob(n: int) -> str:
    """A 10 KB argument that tells its task apart, and that does not compress
    (the database would spend its time compressing it)."""
    return hashlib.shake_256(str(n).encode()).hexdigest(BLOB // 2)


def push_delayed(
    calls: list[tuple[Any, tuple[Any, ...]]], delay: float, **options: Any
) -> list[uuid.UUID]:
    """Push `calls` with a delay, PAGE to a frame, as enqueue_batch takes them."""
    ids: list[uuid.UUID] = []
    for start in range(0, len(calls), PAGE):
        page_ids, data, _ = batch(calls[start : start + PAGE], **options)
        data["options"]["run_after"] = time.time() + delay
        client.call("enqueue_batch", data)
        ids += page_ids
    return ids


def push_late(count: int) -> None:
    """Push `count` tasks of 10 KB, delayed for a month."""
    for start in range(0, count, PAGE):
        calls = [(tasks.echo, (blob(n),)) for n in range(start, min(count, start + PAGE))]
        push_delayed(calls, LATER)


def delayed_stats() -> tuple[int, int]:
    """The broker's waiting tasks and delayed payloads in memory."""
    ok, stats = leek.stats()
    assert ok, stats
    return sum(stats["waiting"].values()), stats["delayed_payloads_in_memory"]


def test_delayed_tasks_past_the_bound_keep_no_payload_in_the_broker(
    broker_factory: BrokerFactory,
) -> None:
    broker = broker_factory(LEEK_MEMORY_DELAYED="100")
    push_late(PAGE)  # the broker's buffers and caches, grown once
    before = rss_kib(broker)
    push_late(20_000 - PAGE)
    grown = rss_kib(broker) - before
    assert delayed_stats() == (20_000, 100)
    # held whole, their payloads alone would take 200 MB
    assert grown < 40 * 1024, f"the broker grew {grown} KiB for 20,000 delayed tasks"


def test_tasks_due_soon_run_with_their_arguments_though_their_payloads_were_dropped(
    broker_factory: BrokerFactory,
) -> None:
    broker_factory(LEEK_MEMORY_DELAYED="100")
    push_late(1_000)
    soon = [(tasks.echo, (blob(n),)) for n in range(300)]
    ids = push_delayed(soon, 2.0)
    assert delayed_stats() == (1_300, 100)
    for n, task_id in enumerate(ids):
        assert leek.TaskHandle(task_id).result(timeout=30) == {"args": [blob(n)], "kwargs": {}}
    assert delayed_stats() == (1_000, 0)


def test_a_cancelled_delayed_task_gives_its_payload_up_and_never_runs(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    cancelled = leek.enqueue(tasks.append_line, (str(marks), blob(0)), delay=3.0)
    kept = leek.enqueue(tasks.append_line, (str(marks), "kept"), delay=3.5)
    assert delayed_stats() == (2, 2)
    assert cancelled.cancel()
    assert delayed_stats() == (1, 1)
    assert kept.result(timeout=20) == "kept"  # due after the cancelled one
    assert marks.read_text() == "kept\n"
    assert cancelled.status() == "cancelled"
    assert delayed_stats() == (0, 0)


@BOTH_POOLS
def test_a_retry_whose_payload_was_dropped_runs_with_its_arguments(
    broker_factory: BrokerFactory, tmp_path: Path, pool: str
) -> None:
    broker_factory(LEEK_POOL=pool, LEEK_MEMORY_DELAYED="0", LEEK_RETRY_BACKOFF="0.5")
    marks = tmp_path / "marks"
    handle = leek.enqueue(tasks.fail_noting, (str(marks), blob(1)), max_retries=2)
    with pytest.raises(leek.TaskFailed, match="noted"):
        handle.result(timeout=30)
    digest = hashlib.sha256(blob(1).encode()).hexdigest()
    assert marks.read_text().splitlines() == [digest] * 3
    assert Task.objects.get().attempts == 3
    attempts = FailedTask.objects.order_by("attempt").values_list("attempt", "final")
    assert list(attempts) == [(1, False), (2, False), (3, True)]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_hundred_thousand_delayed_tasks_stay_small_in_the_broker_and_after_its_restart(
    broker_factory: BrokerFactory,
) -> None:
    count = 200_000
    broker = broker_factory()
    push_late(count)
    assert delayed_stats() == (count, 1000)
    # held whole, their payloads alone would take 2 GB
    assert rss_kib(broker) < 150 * 1024, f"broker RSS {rss_kib(broker)} KiB"
    broker.kill(signal.SIGTERM)
    # Its start claims the 200k tasks again under its new epoch (one UPDATE)
    # before it listens: longer than a start's usual wait.
    broker.start(wait=False).wait_ready(timeout=300)
    wait_for(lambda: delayed_stats()[0] == count, timeout=120, interval=0.5)
    assert delayed_stats() == (count, 0)  # loaded from the database without their payloads
    assert rss_kib(broker) < 150 * 1024, f"broker RSS {rss_kib(broker)} KiB after its restart"
