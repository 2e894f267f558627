"""What a Django process imports to push tasks and follow them."""

from .api import (
    cancel,
    enqueue,
    enqueue_many,
    handled,
    ping,
    push_task_to_queue,
    stats,
    stop,
    waiting,
)
from .canvas import Chain, Group, GroupHandle, Signature, chain, chord, group, signature
from .decorator import TaskFunction, task
from .handle import TaskHandle

__all__ = [
    "Chain",
    "Group",
    "GroupHandle",
    "Signature",
    "chain",
    "chord",
    "group",
    "signature",
    "TaskFunction",
    "TaskHandle",
    "cancel",
    "enqueue",
    "enqueue_many",
    "handled",
    "ping",
    "push_task_to_queue",
    "stats",
    "stop",
    "task",
    "waiting",
]
