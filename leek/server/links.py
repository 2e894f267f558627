"""A push of linked steps (a chain, a group, a chord), checked.

The ``enqueue_steps`` verb carries tasks as ``enqueue_many`` does, each with
its links: ``chain`` (the id the steps share), ``next_step`` (the step its
success releases, a task of the same push) and ``waiting`` (whether it waits
for the tasks whose next step it is). The broker trusts no client: a link to
a task outside the push, a waiting step that nothing releases, a step that
releases itself or a loop refuse the whole push with a ValueError.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from .intake import Intake
from .rows import NewTask

#: The verb of a push of linked steps.
VERB = "enqueue_steps"


@dataclass(slots=True)
class Link:
    """Where a step sits: its chain, the step it releases, whether it waits."""

    chain: uuid.UUID | None
    next_step: uuid.UUID | None
    waiting: bool


def steps(intake: Intake, data: Any) -> tuple[list[NewTask], list[Link], list[str]]:
    """The tasks of a push of steps, their links, and the reply's value (their ids)."""
    if not isinstance(data, list) or not data:
        raise ValueError("enqueue_steps takes a non-empty list of tasks")
    tasks = [intake.task(item) for item in data]
    links = [
        Link(_id(item.get("chain")), _id(item.get("next_step")), bool(item.get("waiting")))
        for item in data
    ]
    _check(tasks, links)
    return tasks, links, [str(t.id) for t in tasks]


def _id(value: Any) -> uuid.UUID | None:
    return None if value is None else uuid.UUID(str(value))


def _check(tasks: list[NewTask], links: list[Link]) -> None:
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        raise ValueError("a push of steps names a task twice")
    nexts = {t.id: link.next_step for t, link in zip(tasks, links, strict=True)}
    released = {n for n in nexts.values() if n is not None}
    for task_id, after in nexts.items():
        if after is not None and after not in nexts:
            raise ValueError(f"step {task_id} releases {after}, which is not in the push")
    for task, link in zip(tasks, links, strict=True):
        if link.waiting and task.id not in released:
            raise ValueError(f"step {task.id} waits, and no step of the push releases it")
        if not link.waiting and task.id in released:
            raise ValueError(f"step {task.id} is released by another step, so it must wait")
    for start in nexts:  # every path of next steps ends: no loop
        seen, at = {start}, nexts[start]
        while at is not None:
            if at in seen:
                raise ValueError(f"the steps after {start} loop back to {at}")
            seen.add(at)
            at = nexts[at]
