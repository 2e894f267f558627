"""What a Django process calls: push tasks, follow them, ask the broker how it is."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from .. import conf, fields, ratelimit
from ..exceptions import (
    BrokerUnavailable,
    LeekError,
)
from ..ids import new_task_id, new_task_ids
from ..protocol.payload import dump_task, task_dumper, task_name
from . import connection, sizes
from .delivery import send
from .delivery import waits_for_commit as waits_for_commit  # leek.backends imports it here
from .handle import TaskHandle as TaskHandle  # its path until it had a module of its own

TaskCall = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]
#: No callable yet (`batch`): None is not callable, and must be refused as one.
_NONE = object()


def _describe(args: tuple[Any, ...], kwargs: dict[str, Any], limit: int = 2000) -> str:
    if not args and not kwargs:
        return ""
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    text = ", ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _run_after(delay: float | timedelta | None, run_at: datetime | None) -> float | None:
    if delay is not None and run_at is not None:
        raise ValueError("give delay or run_at, not both")
    if run_at is not None:
        if run_at.tzinfo is None or run_at.utcoffset() is None:
            raise ValueError(
                f"run_at must be timezone-aware, got naive {run_at.isoformat()}; "
                "use django.utils.timezone.now() + timedelta(...)"
            )
        return run_at.timestamp()
    if delay is not None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if seconds < 0:
            raise ValueError(f"delay must be zero or more seconds, got {seconds}")
        return time.time() + seconds if seconds > 0 else None
    return None


def _expires(expires: timedelta | datetime | None, run_after: float | None) -> float | None:
    """The Unix time a task expires at, from a timedelta (from now) or an
    aware datetime; ValueError for one at or before the task's run_after,
    as it could never run."""
    if expires is None:
        return None
    if isinstance(expires, timedelta):
        moment = time.time() + expires.total_seconds()
    elif isinstance(expires, datetime):
        if expires.tzinfo is None or expires.utcoffset() is None:
            raise ValueError(
                f"expires must be timezone-aware, got naive {expires.isoformat()}; "
                "use a timedelta, or django.utils.timezone.now() + timedelta(...)"
            )
        moment = expires.timestamp()
    else:
        raise TypeError(f"expires must be a timedelta or a datetime, got {type(expires).__name__}")
    if run_after is not None and moment <= run_after:
        raise ValueError("expires must come after the task's delay or run_at: it would never run")
    return moment


def _options(
    *,
    queue: str,
    priority: int,
    run_after: float | None,
    max_retries: int | None,
    timeout: float | None,
    key: str | None = None,
    key_running: bool = False,
    expires: float | None = None,
    rate_limit: str | None = None,
) -> dict[str, Any]:
    """The checked options of a push, shared by every task in it; a task
    without a rate limit sends none."""
    options = {
        "queue": queue,
        "priority": fields.priority(priority),
        "max_retries": fields.max_retries(max_retries),
        "timeout": fields.timeout(timeout),
        "run_after": fields.run_after(run_after),
        "code_version": conf.get("CODE_VERSION"),
    }
    # Only when set: a broker that knows no keys or expiry never sees them.
    if key is not None:
        options["key"] = fields.key(key)
        options["key_running"] = bool(key_running)
    elif key_running:
        raise ValueError("key_running needs a key")
    if expires is not None:
        options["expires"] = fields.expires(expires)
    limit = ratelimit.field(rate_limit)
    if limit:
        options["rate_limit"] = limit
    return options


def _parts(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[str, bytes, str]:
    """The name, payload and args_repr of a call: what differs between the tasks of a push."""
    return _name(fn), dump_task(fn, args, kwargs), _describe(args, kwargs)


def _name(fn: Callable[..., Any]) -> str:
    """The name of a task's callable; TypeError for one that is not callable."""
    if not callable(fn):
        raise TypeError(f"a task must be callable, got {type(fn).__name__}")
    return task_name(fn)


def _whole(
    task_id: str, name: str, payload: bytes, args_repr: str, options: dict[str, Any]
) -> dict[str, Any]:
    """One task as `enqueue` sends it (and the database fallback writes it)."""
    return {"id": task_id, "name": name, "payload": payload, "args_repr": args_repr, **options}


def message(
    fn: Callable[..., Any],
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    task_id: uuid.UUID | None = None,
    *,
    queue: str = "default",
    priority: int = 0,
    run_after: float | None = None,
    max_retries: int | None = None,
    timeout: float | None = None,
    key: str | None = None,
    key_running: bool = False,
    expires: float | None = None,
    rate_limit: str | None = None,
) -> dict[str, Any]:
    """The data of the `enqueue` verb for fn(*args, **kwargs), under `task_id` or
    a new id: what :func:`enqueue` sends.

    `run_after` and `expires` are Unix times, None for at once and never.
    Raises ValueError naming an option out of range, TypeError for a `fn`
    that is not callable and PayloadError for a call that cannot be pickled, or
    is too large for a frame (sizes.py)."""
    parts = _parts(fn, args, kwargs or {})
    sizes.check(*parts)
    options = _options(
        queue=queue,
        priority=priority,
        run_after=run_after,
        max_retries=max_retries,
        timeout=timeout,
        key=key,
        key_running=key_running,
        expires=expires,
        rate_limit=rate_limit,
    )
    return _whole(str(task_id or new_task_id()), *parts, options)


def enqueue(
    fn: Callable[..., Any],
    args: Iterable[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    queue: str = "default",
    priority: int = 0,
    delay: float | timedelta | None = None,
    run_at: datetime | None = None,
    max_retries: int | None = None,
    timeout: float | None = None,
    key: str | None = None,
    key_running: bool = False,
    expires: timedelta | datetime | None = None,
    rate_limit: str | None = None,
) -> TaskHandle:
    """Push fn(*args, **kwargs) to the broker; returns once it is committed
    (or, inside transaction.atomic(), at once: it is sent on commit, or
    written in the transaction with ATOMIC_PUSH "outbox").

    With `key`, a push while another task holds that key (it waits; with
    `key_running`, or runs) adds nothing and returns that task's handle.
    With `expires` (a timedelta from now, or an aware datetime), a task not
    started by then is marked expired and never runs.
    `rate_limit` ("10/m": at most so many starts per second, minute or hour
    of tasks of this name, across every broker; leek/ratelimit.py) makes the
    task wait, queued, for its turn."""
    task_id = new_task_id()
    run_after = _run_after(delay, run_at)
    data = message(
        fn,
        tuple(args),
        dict(kwargs or {}),
        task_id,
        queue=queue,
        priority=priority,
        run_after=run_after,
        max_retries=max_retries,
        timeout=timeout,
        key=key,
        key_running=key_running,
        expires=_expires(expires, run_after),
        rate_limit=rate_limit,
    )
    held = send("enqueue", data)
    # the id sent back is this push's own unless another task holds its key
    return TaskHandle(task_id if held is None or held == data["id"] else held)


def push_task_to_queue(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> TaskHandle:
    """Push fn(*args, **kwargs) with the default options."""
    return enqueue(fn, args, kwargs)


def enqueue_many(
    calls: Iterable[TaskCall | tuple[Callable[..., Any], tuple[Any, ...]]],
    *,
    queue: str = "default",
    priority: int = 0,
    max_retries: int | None = None,
    timeout: float | None = None,
    rate_limit: str | None = None,
) -> list[TaskHandle]:
    """Push many (fn, args[, kwargs]) calls in one frame and one commit.

    The options travel once for the whole batch and each task as a short
    tuple (the ``enqueue_batch`` verb of docs/protocol.md). A batch larger
    than one frame (``LEEK["MAX_FRAME"]``) goes in parts, in order, each one
    frame and one commit of its own (sizes.py); should a part fail, the parts
    before it are committed, and the error's note says how many tasks they hold."""
    ids, data, bound = batch(
        calls,
        queue=queue,
        priority=priority,
        max_retries=max_retries,
        timeout=timeout,
        rate_limit=rate_limit,
    )
    if ids:
        _send_parts(data, bound)
    return [TaskHandle(task_id) for task_id in ids]


def _send_parts(data: dict[str, Any], bound: int) -> None:
    """Send the ``enqueue_batch`` `data` in one frame, or in parts when it is
    larger than one (sizes.cut), one after another. Raises PayloadError, before
    anything is sent, for a task too large for a frame. `bound`: the most
    bytes its tasks can take in a frame (sizes.bound), which spares the
    count of each task's size when the whole batch fits."""
    tasks = data["tasks"]
    room = sizes.limit()
    parts = [tasks] if bound <= room else list(sizes.cut(tasks, room))
    if len(parts) == 1:
        send("enqueue_batch", data)
        return
    sent = 0
    for number, part in enumerate(parts):
        try:
            send("enqueue_batch", {"options": data["options"], "tasks": part})
        except LeekError as exc:
            if sent:
                exc.add_note(
                    f"enqueue_many: the first {sent:,} of its {len(tasks):,} tasks went in "
                    f"{number} frames before this one and are committed: push only the rest again"
                )
            raise
        sent += len(part)


def batch(
    calls: Iterable[TaskCall | tuple[Callable[..., Any], tuple[Any, ...]]],
    *,
    queue: str = "default",
    priority: int = 0,
    max_retries: int | None = None,
    timeout: float | None = None,
    rate_limit: str | None = None,
) -> tuple[list[uuid.UUID], dict[str, Any], int]:
    """New ids for `calls`, each (fn, args) or (fn, args, kwargs), the data
    of the `enqueue_batch` verb that pushes them, and the most bytes its
    tasks can take in a frame (sizes.bound): what :func:`enqueue_many`
    sends, in one frame or in parts.

    Raises as :func:`message` does, but for a task too large for a frame,
    which :func:`enqueue_many` refuses before it sends the batch."""
    options = _options(
        queue=queue,
        priority=priority,
        run_after=None,
        max_retries=max_retries,
        timeout=timeout,
        rate_limit=rate_limit,
    )
    calls = list(calls)
    ids = new_task_ids(len(calls))
    tasks: list[tuple[bytes, str, bytes, str]] = []
    append = tasks.append
    # A batch mostly calls one function: its name is made once, and the frame
    # pickles the one string once, the rest as references to it.
    last: object = _NONE
    name = ""
    named = 0  # the most bytes `name` takes
    taken = 0
    dump = task_dumper()
    for task_id, call in zip(ids, calls, strict=True):
        if len(call) == 2:
            fn, args = call
            kwargs: dict[str, Any] = {}
        else:
            fn, args, kwargs = call
            kwargs = dict(kwargs)
        if fn is not last:
            name, last = _name(fn), fn
            named = sizes.bound(name)
        if type(args) is not tuple:
            args = tuple(args)
        payload = dump(fn, args, kwargs)
        text = _describe(args, kwargs) if args or kwargs else ""
        taken += len(payload) + named + sizes.bound(text)
        append((task_id.bytes, name, payload, text))
    return ids, {"options": options, "tasks": tasks}, taken + len(tasks) * sizes.TASK


def cancel(task_id: uuid.UUID | str, running: bool = False) -> bool:
    """Cancel a task; True means it never runs.

    The broker that holds the task decides: it refuses (False) once a worker
    has taken it. With `running`, a task running on the broker asked is
    cancelled too and stopped: its worker process is killed, or on the
    threads pool ``current_task().cancelled`` turns True for it to read.

    When no broker answers, the task is cancelled in the database, if it is
    queued and no live broker owns it (one whose heartbeat is within
    HEARTBEAT_TIMEOUT could start it any moment): else False."""
    try:
        return bool(connection.call("cancel", {"id": str(task_id), "running": running}))
    except BrokerUnavailable:
        return _cancel_in_database(task_id)


def _cancel_in_database(task_id: uuid.UUID | str) -> bool:
    from django.db.models import Exists, OuterRef, Q
    from django.utils import timezone

    from ..liveness import alive
    from ..models import BrokerNode, Task

    now = timezone.now()
    dead_after = float(conf.get("HEARTBEAT_TIMEOUT"))
    live = BrokerNode.objects.filter(alive(dead_after), name=OuterRef("broker"))
    unowned = Q(broker="") | ~Exists(live)
    cancelled = Task.objects.filter(unowned, pk=task_id, status="queued").update(
        status="cancelled", finished_at=now, lock_key=None
    )
    return bool(cancelled)


def _ask(verb: str, data: Any = None) -> tuple[bool, Any]:
    try:
        return True, connection.call(verb, data)
    except LeekError as exc:
        return False, str(exc)


def ping() -> tuple[bool, str]:
    """(True, "I'm OK") when the broker and all its worker threads are healthy."""
    ok, value = _ask("ping", {})
    if not ok:
        return False, value
    return bool(value["ok"]), str(value["message"])


def waiting(queue: str | None = None) -> tuple[bool, Any]:
    """(True, number of tasks waiting), for one queue or all."""
    return _ask("waiting", {"queue": queue})


def handled(queue: str | None = None) -> tuple[bool, Any]:
    """(True, number of tasks handled since the broker started)."""
    return _ask("handled", {"queue": queue})


def stats() -> tuple[bool, Any]:
    """(True, dict of the broker's figures)."""
    return _ask("stats", {})


def stop() -> tuple[bool, Any]:
    """Ask the broker to stop gracefully."""
    return _ask("stop", {})
