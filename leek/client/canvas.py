"""Chains, groups and chords: calls pushed together, each step run after what it follows.

A `Signature` describes one call and its options without pushing it
(``resize.s(photo_id)``, or ``signature(fn, *args)`` for a plain callable).
``chain(a, b, c)`` runs each step once the one before it has succeeded, with
that step's result as its first argument; ``group(...)`` runs its members side
by side; ``group(...) | callback`` (a chord) runs the callback once every
member has succeeded, with their results, in order, as its first argument.

Every task of one of these is written at once, in one push (the
``enqueue_steps`` verb): the first steps queued, the others waiting, each row
naming the step its success releases (``next_step``) and the chain it belongs
to (``chain``). The broker releases a waiting step in the transaction that
records the success of the last task it follows, and fails it, with the steps
after it, in the one that records a final failure (server/store/chains.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from ..exceptions import TaskNotReady
from ..ids import new_task_id, new_task_ids
from ..protocol.payload import dump_task
from ..steps import run_step
from .api import message
from .decorator import TaskFunction
from .delivery import send
from .handle import TaskHandle

#: The push verb of a chain, group or chord: its tasks as enqueue_many sends
#: them, with their links (``waiting``, ``next_step``, ``chain``).
VERB = "enqueue_steps"


@dataclass(frozen=True)
class Signature:
    """fn(*args, **kwargs) with the options of its push, not pushed yet."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str = "default"
    priority: int = 0
    max_retries: int | None = None
    timeout: float | None = None

    def set(self, **options: Any) -> Signature:
        """The same call with other options (queue, priority, max_retries, timeout)."""
        return replace(self, **options)

    def __or__(self, other: Signature) -> Chain:
        return chain(self, other)

    def delay(self) -> TaskHandle:
        """Push the call alone."""
        return chain(self).delay()


def signature(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Signature:
    """The signature of fn(*args, **kwargs), with an @task function's options."""
    if not callable(fn):
        raise TypeError(f"a signature needs a callable, got {type(fn).__name__}")
    if isinstance(fn, TaskFunction):
        return Signature(
            fn.fn,
            args,
            kwargs,
            queue=fn.queue,
            priority=fn.priority,
            max_retries=fn.max_retries,
            timeout=fn.timeout,
        )
    return Signature(fn, args, kwargs)


class Group:
    """Calls run side by side; `| callback` makes a chord."""

    def __init__(self, members: Iterable[Signature]) -> None:
        self.members = list(members)
        if not self.members:
            raise ValueError("a group needs at least one signature")
        for member in self.members:
            _check(member)

    def __or__(self, callback: Signature) -> Chain:
        return Chain(self, [callback])

    def delay(self) -> GroupHandle:
        """Push every member in one push; the handle waits for all of them."""
        steps = [_Step(sig, new_task_id()) for sig in self.members]
        _push(steps, new_task_id())
        return GroupHandle([TaskHandle(s.id) for s in steps])


def group(*members: Signature | Iterable[Signature]) -> Group:
    """A group of signatures, given one by one or as one iterable."""
    if len(members) == 1 and not isinstance(members[0], Signature):
        return Group(members[0])
    return Group(m for m in members if isinstance(m, Signature))


class Chain:
    """Steps run one after the other, optionally after a group (then a chord)."""

    def __init__(self, head: Group | None, steps: list[Signature]) -> None:
        if head is None and not steps:
            raise ValueError("a chain needs at least one signature")
        for step in steps:
            _check(step)
        self.head = head
        self.steps = steps

    def __or__(self, other: Signature) -> Chain:
        return Chain(self.head, [*self.steps, _check(other)])

    def delay(self) -> TaskHandle:
        """Push every step in one push; the handle of the last one, whose
        result is the chain's (TaskFailed when a step failed for good)."""
        ids = new_task_ids(len(self.steps) + (len(self.head.members) if self.head else 0))
        tasks: list[_Step] = []
        before: list[uuid.UUID] = []
        if self.head is not None:
            tasks = [_Step(sig, i) for sig, i in zip(self.head.members, ids, strict=False)]
            before = [t.id for t in tasks]
            ids = ids[len(tasks) :]
        gather = self.head is not None
        for sig, step_id in zip(self.steps, ids, strict=True):
            for task in tasks[-len(before) :] if before else ():
                task.next_step = step_id
            tasks.append(_Step(sig, step_id, before, gather))
            before, gather = [step_id], False
        _push(tasks, new_task_id())
        return TaskHandle(tasks[-1].id)


def chain(*steps: Signature | Group) -> Chain:
    """Steps run one after the other; a group first makes the next step a chord's callback."""
    if steps and isinstance(steps[0], Group):
        return Chain(steps[0], [s for s in steps[1:] if isinstance(s, Signature)])
    if any(isinstance(s, Group) for s in steps):
        raise TypeError("a group can only start a chain (group | callback is a chord)")
    return Chain(None, [s for s in steps if isinstance(s, Signature)])


def chord(members: Iterable[Signature], callback: Signature) -> Chain:
    """`callback` run once every member has succeeded, with their results in order."""
    return Group(members) | callback


class GroupHandle:
    """The members of a pushed group."""

    def __init__(self, handles: list[TaskHandle]) -> None:
        self.handles = handles

    def __repr__(self) -> str:
        return f"<GroupHandle of {len(self.handles)}>"

    def __iter__(self) -> Any:
        return iter(self.handles)

    def __len__(self) -> int:
        return len(self.handles)

    def ready(self) -> bool:
        """True once every member has finished, whichever way."""
        return all(h.ready() for h in self.handles)

    def results(self, timeout: float | None = None) -> list[Any]:
        """Every member's result, in the group's order, waiting up to `timeout`
        seconds for all of them (None: forever). Raises the first failed
        member's TaskFailed (or TaskCancelled), TaskNotReady on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for handle in self.handles:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0 and not handle.ready():
                raise TaskNotReady(f"group member {handle.id} not finished after {timeout} s")
            values.append(handle.result(timeout=None if left is None else max(left, 0.0)))
        return values


@dataclass
class _Step:
    """One task of a push of steps, and its links."""

    sig: Signature
    id: uuid.UUID
    before: list[uuid.UUID] = field(default_factory=list)  # the tasks whose results it takes
    gather: bool = False  # their results as one list (a chord's callback)
    next_step: uuid.UUID | None = None

    def message(self, chain_id: uuid.UUID) -> dict[str, Any]:
        sig = self.sig
        data = message(
            sig.fn,
            sig.args,
            sig.kwargs,
            self.id,
            queue=sig.queue,
            priority=sig.priority,
            max_retries=sig.max_retries,
            timeout=sig.timeout,
        )
        if self.before:
            parents = [str(b) for b in self.before]
            data["payload"] = dump_task(run_step, (data["payload"], parents, self.gather), {})
            taken = "<results>" if self.gather else "<previous result>"
            data["args_repr"] = f"{taken}, {data['args_repr']}" if data["args_repr"] else taken
        data["waiting"] = bool(self.before)
        data["next_step"] = None if self.next_step is None else str(self.next_step)
        data["chain"] = str(chain_id)
        return data


def _push(steps: list[_Step], chain_id: uuid.UUID) -> None:
    send(VERB, [s.message(chain_id) for s in steps])


def _check(sig: Any) -> Signature:
    if not isinstance(sig, Signature):
        raise TypeError(
            f"a step is a signature (task.s(...) or leek.signature(fn, ...)), "
            f"got {type(sig).__name__}"
        )
    return sig
