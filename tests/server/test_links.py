"""A push of steps whose links could leave a step waiting for ever is refused whole."""

from __future__ import annotations

from typing import Any

import pytest

from leek.client.api import message
from leek.server.intake import Intake
from leek.server.links import steps
from tests.tasks import add


def linked(count: int) -> list[dict[str, Any]]:
    """`count` tasks of a chain: each releases the next, which waits."""
    tasks = [message(add, (i, i)) for i in range(count)]
    for i, task in enumerate(tasks):
        task["chain"] = tasks[0]["id"]
        task["next_step"] = tasks[i + 1]["id"] if i + 1 < count else None
        task["waiting"] = i > 0
    return tasks


def test_a_well_linked_chain_is_taken_with_every_link() -> None:
    tasks, links, ids = steps(Intake(3, ""), linked(3))
    assert ids == [str(t.id) for t in tasks]
    assert [link.waiting for link in links] == [False, True, True]
    assert links[0].next_step == tasks[1].id and links[2].next_step is None


@pytest.mark.parametrize(
    "breaks, error",
    [
        (lambda ts: ts[1].update(next_step=message(add, (0, 0))["id"]), "not in the push"),
        (lambda ts: ts[2].update(next_step=ts[1]["id"]), "loop back"),
        (lambda ts: ts[0].update(next_step=None), "no step of the push releases it"),
        (lambda ts: ts[1].update(waiting=False), "so it must wait"),
        (lambda ts: ts.append(ts[0]), "names a task twice"),
    ],
)
def test_a_link_that_strands_a_step_refuses_the_push(breaks: Any, error: str) -> None:
    tasks = linked(3)
    breaks(tasks)
    with pytest.raises(ValueError, match=error):
        steps(Intake(3, ""), tasks)


def test_an_empty_push_of_steps_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty list"):
        steps(Intake(3, ""), [])
