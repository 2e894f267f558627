"""A push too large for one frame: a batch goes in parts, anything else is
refused before a byte is sent, and a broker never sees a frame it refuses.

The brokers here read frames of 64 KiB at most (LEEK_MAX_FRAME), as the
clients do, so that a few thousand tasks make a batch of several frames."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from django.db import transaction

import leek
from leek.client import sizes
from leek.client.api import batch
from leek.exceptions import BrokerUnavailable, PayloadError
from leek.models import Task
from leek.protocol.frame import OVERHEAD, encode
from tests import tasks
from tests.conftest import BrokerFactory, BrokerProcess, wait_for

LIMIT = 64 * 1024


@pytest.fixture
def small_frames(
    broker_factory: BrokerFactory, leek_settings: Callable[..., None]
) -> BrokerProcess:
    """A broker and this client, both at frames of LIMIT bytes; a push no broker
    commits raises rather than going to the database."""
    leek_settings(MAX_FRAME=LIMIT, FALLBACK="raise")
    return broker_factory(LEEK_MAX_FRAME=str(LIMIT))


def rejected() -> int:
    """How many frames the broker has refused."""
    ok, stats = leek.stats()
    assert ok, stats
    return int(stats["rejected_frames"])


def test_a_batch_larger_than_a_frame_goes_in_parts_and_runs_whole(
    small_frames: BrokerProcess,
) -> None:
    calls = [(tasks.echo, (i, "x" * 100)) for i in range(2000)]
    assert len(list(sizes.cut(batch(calls)[1]["tasks"], sizes.limit()))) > 3
    handles = leek.enqueue_many(calls)
    assert len(handles) == 2000
    assert Task.objects.count() == 2000
    for i in (0, 999, 1999):  # the first part, one between, the last
        assert handles[i].result(timeout=20) == {"args": [i, "x" * 100], "kwargs": {}}
    wait_for(leek.handled, equals=(True, 2000), timeout=60)
    assert rejected() == 0


def test_every_part_fits_whatever_its_tasks_hold() -> None:
    rng = random.Random(7)  # noqa: S311 - sizes for a test, not a secret
    calls = [
        (tasks.echo, ("🥬" * rng.randrange(0, 600), bytes(rng.randrange(0, 3000))))
        for _ in range(3000)
    ]
    _, data, _ = batch(calls, queue="q" * 64, rate_limit="1000/s")
    room = LIMIT - sizes.ROOM
    parts = list(sizes.cut(data["tasks"], room))
    assert [t for part in parts for t in part] == data["tasks"]  # all, once, in order
    for number, part in enumerate(parts, 1):
        body = len(encode(b"k" * 32, (number, "enqueue_batch", {**data, "tasks": part})))
        assert body - OVERHEAD <= LIMIT
    assert len(parts) > 10


@pytest.mark.parametrize("text", ["", "plain", "é" * 50, "🥬" * 50, "\ud800" * 50, "a🥬\udfff"])
def test_a_texts_bound_is_never_below_its_utf8_length(text: str) -> None:
    assert sizes.bound(text) >= len(text.encode("utf-8", "surrogatepass"))


def test_a_batch_of_wide_characters_is_cut_by_its_bytes_not_its_characters(
    small_frames: BrokerProcess,
) -> None:
    # Counted in characters, nine of these fit one frame; in UTF-8 they are
    # some 73 KB, more than the broker reads: they must go in parts.
    calls = [(tasks.echo, (i, "🥬" * 1000)) for i in range(9)]
    _, data, bound = batch(calls)
    assert sum(len(t[2]) + len(t[3]) for t in data["tasks"]) < sizes.limit() < LIMIT
    assert bound > sizes.limit()  # so it is counted, task by task
    assert len(list(sizes.cut(data["tasks"], sizes.limit()))) == 2
    handles = leek.enqueue_many(calls)
    assert Task.objects.count() == 9
    assert rejected() == 0
    assert handles[8].result(timeout=20) == {"args": [8, "🥬" * 1000], "kwargs": {}}


def test_one_task_too_large_for_a_frame_is_refused_before_sending(
    small_frames: BrokerProcess,
) -> None:
    with pytest.raises(
        leek.PayloadError, match=r"tests\.tasks\.echo .* LEEK\['MAX_FRAME'\] = 65,536"
    ):
        leek.enqueue(tasks.echo, (b"x" * LIMIT,))
    with pytest.raises(PayloadError, match="MAX_FRAME"):  # alone in a batch as well
        leek.enqueue_many([(tasks.add, (1, 2)), (tasks.echo, (b"x" * LIMIT,))])
    assert Task.objects.count() == 0  # nothing of the batch went
    assert rejected() == 0
    assert leek.enqueue(tasks.add, (2, 3)).result(timeout=20) == 5


def test_a_group_too_large_for_a_frame_is_refused_before_sending(
    small_frames: BrokerProcess,
) -> None:
    members = [leek.signature(tasks.echo, i, "x" * 200) for i in range(1000)]
    too_large = r"enqueue_steps request is too large to send: .*MAX_FRAME"
    with pytest.raises(PayloadError, match=too_large):
        leek.group(members).delay()
    assert Task.objects.count() == 0
    assert rejected() == 0
    assert leek.ping() == (True, "I'm OK")


def test_a_part_that_fails_says_how_many_went_before_it(
    broker_factory: BrokerFactory, leek_settings: Callable[..., None]
) -> None:
    # The client cuts at 256 KiB; the broker reads 64 KiB at most, so it
    # commits the first part (300 small tasks) and refuses the second (one large).
    leek_settings(MAX_FRAME=4 * LIMIT, FALLBACK="raise")
    broker_factory(LEEK_MAX_FRAME=str(LIMIT))
    calls = [(tasks.add, (i, 1)) for i in range(300)] + [(tasks.echo, (b"x" * (3 * LIMIT),))]
    assert [len(part) for part in sizes.cut(batch(calls)[1]["tasks"], sizes.limit())] == [300, 1]
    with pytest.raises(BrokerUnavailable, match="FrameTooLarge") as raised:
        leek.enqueue_many(calls)
    assert any("the first 300 of its 301 tasks" in note for note in raised.value.__notes__)
    assert Task.objects.count() == 300
    assert not Task.objects.filter(name="tests.tasks.echo").exists()


@pytest.mark.parametrize("atomic_push", ["on_commit", "outbox"])
def test_a_batch_larger_than_a_frame_in_a_transaction_goes_whole_after_the_commit(
    small_frames: BrokerProcess, leek_settings: Callable[..., None], atomic_push: str
) -> None:
    leek_settings(ATOMIC_PUSH=atomic_push)
    calls = [(tasks.add, (i, 1)) for i in range(1000)] + [(tasks.echo, ("x" * 20_000,))]
    with transaction.atomic():
        handles = leek.enqueue_many(calls)
    assert len(handles) == 1001
    assert handles[999].result(timeout=20) == 1000
    assert handles[1000].result(timeout=20) == {"args": ["x" * 20_000], "kwargs": {}}
    wait_for(leek.handled, equals=(True, 1001), timeout=60)
    assert Task.objects.count() == 1001
    assert rejected() == 0


def test_a_broker_with_a_smaller_limit_says_so_when_it_cuts_a_send_short(
    broker_factory: BrokerFactory, leek_settings: Callable[..., None]
) -> None:
    # The client sends frames of up to 8 MiB, the broker reads 64 KiB: it
    # refuses a 4 MB push by its header and closes while the client still
    # sends, so the client's write fails on a reset. It reads the refusal the
    # broker sent before it closed, and says what it was.
    leek_settings(MAX_FRAME=128 * LIMIT, FALLBACK="raise")
    broker_factory(LEEK_MAX_FRAME=str(LIMIT))
    with pytest.raises(BrokerUnavailable) as raised:
        leek.enqueue(tasks.echo, (b"x" * (64 * LIMIT),))
    message = str(raised.value)
    assert "reset" not in message, message  # each try names the refusal, not the reset
    assert f"over the limit of {LIMIT} bytes" in message, message
    assert "LEEK['MAX_FRAME'] is 8,388,608 bytes: set it alike" in message
    assert Task.objects.count() == 0
    assert rejected() == 1  # refused once: not sent to it again
    assert leek.enqueue(tasks.add, (2, 3)).result(timeout=20) == 5  # the broker serves on
