"""What a step of a chain, or a chord's callback, runs as on a worker.

A step's payload is `run_step` over the step's own signed payload and the ids
of the tasks it follows. Its row waits until they have all succeeded, and it
is released in the transaction that records the last success (the store's
chains.py), so when a worker runs it their results are committed: `run_step`
reads them, checks their signatures, and calls the step with the previous
result (a chain) or the list of results in order (a chord) as its first
argument. Both pools run it alike, as any task.
"""

from __future__ import annotations

import uuid
from typing import Any

from .protocol.payload import load_task, load_value


def run_step(payload: bytes, parents: list[str], gather: bool) -> Any:
    """Call the step in `payload` with the results of `parents` before its arguments.

    Raises LookupError naming a parent whose success is not recorded (its row
    was deleted after it released this step)."""
    from .models import SuccessTask

    keys = [uuid.UUID(p) for p in parents]
    rows = dict(
        SuccessTask.objects.filter(task_id__in=keys).order_by("id").values_list("task_id", "result")
    )
    missing = [str(k) for k in keys if k not in rows]
    if missing:
        raise LookupError(
            f"the result of an earlier step is gone: no success recorded for {', '.join(missing)}"
        )
    results = [load_value(rows[k], k) for k in keys]
    fn, args, kwargs = load_task(payload)
    first = results if gather else results[0]
    return fn(first, *args, **kwargs)
