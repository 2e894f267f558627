"""Workers load the payloads of waiting tasks a page at a time: two workers
taking tasks at once load two pages, never the same page twice."""

from __future__ import annotations

import uuid

from leek.server.dispatch import AHEAD, Dispatcher
from leek.server.rows import Job, Ready


def queued(count: int) -> tuple[Dispatcher, list[uuid.UUID]]:
    """A dispatcher holding `count` tasks whose payloads are in the database only."""
    dispatcher = Dispatcher(memory_payloads=1000)
    ids = [uuid.uuid4() for _ in range(count)]
    dispatcher.push([Ready(i, 0, "default", None) for i in ids])
    return dispatcher, ids


def take(dispatcher: Dispatcher) -> tuple[Ready, list[uuid.UUID]]:
    taken = dispatcher.take(timeout=0)
    assert taken is not None
    return taken


def job(task_id: uuid.UUID) -> Job:
    return Job(task_id.bytes, "tests.tasks.add", 0, 0, None)


def test_a_take_while_another_workers_page_loads_names_the_page_after_it() -> None:
    dispatcher, ids = queued(3 * AHEAD)
    first, first_ahead = take(dispatcher)
    assert (first.id, first_ahead) == (ids[0], ids[1 : 1 + AHEAD])
    # The second worker takes the next task before the first one's page is in:
    # it loads that task alone, and the page after the first one's.
    second, second_ahead = take(dispatcher)
    assert second.id == ids[1]
    assert second_ahead == ids[1 + AHEAD : 1 + 2 * AHEAD]
    dispatcher.keep({i: job(i) for i in first_ahead if i != ids[1]}, first_ahead)
    # The first page is in memory now: the next takes load nothing.
    third, third_ahead = take(dispatcher)
    assert (third.id, third.job, third_ahead) == (ids[2], job(ids[2]), [])


def test_a_page_that_failed_to_load_is_named_again() -> None:
    dispatcher, ids = queued(3 * AHEAD)
    _, ahead = take(dispatcher)
    dispatcher.keep({}, ahead)  # the database was away: nothing came
    second, second_ahead = take(dispatcher)
    assert (second.id, second.job) == (ids[1], None)
    assert second_ahead == ids[2 : 2 + AHEAD]
