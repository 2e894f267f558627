"""The in-memory queue of a paused queue: passed over, kept in order, given back on resume."""

from __future__ import annotations

import uuid

from leek.server.dispatch import Dispatcher
from leek.server.rows import Ready


def ready(queue: str, priority: int = 0) -> Ready:
    return Ready(uuid.uuid4(), priority, queue, None)


def drain(dispatcher: Dispatcher) -> list[uuid.UUID]:
    taken = []
    while (item := dispatcher.take(timeout=0)) is not None:
        taken.append(item[0].id)
    return taken


def test_a_paused_queue_is_passed_over_and_resumed_in_priority_then_push_order() -> None:
    dispatcher = Dispatcher(memory_payloads=0)
    dispatcher.pause(frozenset({"slow"}))
    low = [ready("slow", 0) for _ in range(3)]
    high = [ready("slow", 5) for _ in range(2)]
    other = [ready("default", 1) for _ in range(2)]
    dispatcher.push([low[0], high[0], other[0], low[1], high[1], other[1], low[2]])
    assert drain(dispatcher) == [r.id for r in other]
    assert dispatcher.counts() == {"slow": 5}
    late = ready("slow", 5)
    dispatcher.push([late])
    assert drain(dispatcher) == []
    dispatcher.pause(frozenset())
    assert drain(dispatcher) == [r.id for r in [*high, late, *low]]
    assert dispatcher.counts() == {}


def test_a_task_cancelled_while_its_queue_is_paused_is_not_given_back() -> None:
    dispatcher = Dispatcher(memory_payloads=0)
    dispatcher.pause(frozenset({"slow"}))
    kept, cancelled = ready("slow"), ready("slow")
    dispatcher.push([kept, cancelled])
    assert drain(dispatcher) == []
    dispatcher.cancel(cancelled.id, "slow")
    dispatcher.pause(frozenset())
    assert drain(dispatcher) == [kept.id]
    assert dispatcher.counts() == {}


def test_tasks_pushed_before_their_queue_is_paused_wait_too() -> None:
    dispatcher = Dispatcher(memory_payloads=0)
    first, second = ready("slow"), ready("slow")
    dispatcher.push([first, second])
    dispatcher.pause(frozenset({"slow", "other"}))
    assert drain(dispatcher) == []
    dispatcher.pause(frozenset({"other"}))
    assert drain(dispatcher) == [first.id, second.id]
