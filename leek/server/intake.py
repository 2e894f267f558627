"""What a client pushes, checked and turned into the tasks the broker inserts.

The client checks a task's fields when it builds a push (leek/fields.py); the
broker checks them again here, since it trusts no client: a field out of range
refuses the whole push with a ValueError, which the client gets as its reply.
The three push verbs (docs/protocol.md) carry their tasks in two shapes: whole
task dicts (``enqueue``, ``enqueue_many``) and a batch whose tasks share their
options (``enqueue_batch``).
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from .. import fields, ids, ratelimit
from .metrics import OFF, Metrics
from .rows import NewTask

logger = logging.getLogger(__name__)

#: The verbs that push tasks, each answered once its tasks are committed.
PUSHES = frozenset({"enqueue", "enqueue_batch", "enqueue_many"})
#: A task's queue, priority, max_retries, timeout, run_after, code_version,
#: key, key_running, expires and rate_limit (NewTask's fields in that order).
Options = tuple[str, int, int, float | None, float | None, str, str | None, bool, float | None, str]


class Intake:
    """Turns a push's data into NewTasks, and counts the pushes of other code versions."""

    def __init__(self, max_retries: int, code_version: str) -> None:
        self.max_retries = max_retries  # for a task that names none
        self.code_version = code_version
        self.drift: Counter[str] = Counter()  # pushes per client code version unlike ours
        self.metrics: Metrics = OFF
        #: Called with a client code version unlike ours, the first time one is seen.
        self.new_code: Callable[[str], object] | None = None

    def tasks(self, verb: str, data: Any) -> list[NewTask]:
        """The tasks of a push."""
        try:
            return self._tasks(verb, data)
        except (ValueError, TypeError, KeyError):
            self.metrics.refused("invalid")
            raise

    def _tasks(self, verb: str, data: Any) -> list[NewTask]:
        if verb not in PUSHES:
            raise ValueError(f"{verb!r} is not a push: expected one of {', '.join(sorted(PUSHES))}")
        if verb == "enqueue":
            return [self.task(data)]
        if verb == "enqueue_batch":
            return self.batch(data)
        return [self.task(item) for item in data]

    @staticmethod
    def reply(verb: str, tasks: list[NewTask]) -> Any:
        """The value of a push's reply once its tasks are committed: enqueue,
        the id; enqueue_many, the ids; enqueue_batch, how many. A task that
        was not inserted because another holds its key answers with that
        task's id."""
        if verb == "enqueue_batch":
            return len(tasks)
        ids = [str(t.holder or t.id) for t in tasks]
        return ids[0] if verb == "enqueue" else ids

    def task(self, item: dict[str, Any]) -> NewTask:
        """A whole task, as enqueue and enqueue_many send each."""
        return _new(
            uuid.UUID(str(item["id"])),
            item["name"],
            item["payload"],
            item.get("args_repr", ""),
            self.options(item),
        )

    def batch(self, batch: dict[str, Any]) -> list[NewTask]:
        """The tasks of an enqueue_batch: options once, then (id, name,
        payload, args_repr) for each task, its id as 16 bytes."""
        options = self.options(batch["options"], len(batch["tasks"]))
        tasks = []
        for task_id, name, payload, args_repr in batch["tasks"]:
            if len(task_id) != 16:
                raise ValueError(f"a task id in a batch is 16 bytes, got {len(task_id)}")
            task_id = ids.from_bytes(task_id)
            tasks.append(_new(task_id, name, payload, args_repr, options))
        return tasks

    def options(self, item: dict[str, Any], count: int = 1) -> Options:
        """The checked queue, priority, max_retries, timeout, run_after,
        code_version, key, key_running, expires and rate_limit of a task or of a
        batch of `count` tasks (NewTask's fields in that order)."""
        code = str(item.get("code_version") or "")
        if code and self.code_version and code != self.code_version:
            first = not self.drift[code]
            self.drift[code] += count
            if first:
                logger.warning(
                    "client code differs client_version=%s broker_version=%s",
                    code,
                    self.code_version,
                    extra={"action": "code_drift"},
                )
                if self.new_code is not None:
                    self.new_code(code[:64])
        retries = fields.max_retries(item.get("max_retries"))
        return (
            str(item.get("queue") or "default")[:64],
            fields.priority(item.get("priority", 0)),
            self.max_retries if retries is None else retries,
            fields.timeout(item.get("timeout")),
            fields.run_after(item.get("run_after")),
            code[:64],
            fields.key(item.get("key")),
            bool(item.get("key_running", False)),
            fields.expires(item.get("expires")),
            ratelimit.field(item.get("rate_limit")),
        )


def _new(task_id: uuid.UUID, name: Any, payload: Any, args_repr: Any, options: Options) -> NewTask:
    """A NewTask from a task's own fields, as their columns take them, and its checked options."""
    return NewTask(task_id, str(name)[:255], bytes(payload), str(args_repr), *options)
