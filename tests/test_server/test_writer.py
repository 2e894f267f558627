"""The group commit on a real database: what one bad write may and may not cost."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from leek.models import Task
from leek.protocol import new_task_id
from leek.server.store import NewTask, Store


def new_task(**changes: Any) -> NewTask:
    fields: dict[str, Any] = {
        "id": new_task_id(),
        "name": "tests.tasks.noop",
        "queue": "default",
        "priority": 0,
        "payload": b"x",
        "args_repr": "",
        "max_retries": 0,
        "timeout": None,
        "run_after": None,
        "code_version": "",
    }
    return NewTask(**{**fields, **changes})


class Replies:
    def __init__(self) -> None:
        self.got: dict[str, tuple[Any, BaseException | None]] = {}
        self.all_in = threading.Event()

    def to(self, name: str, expected: int) -> Any:
        def done(value: Any, error: BaseException | None) -> None:
            self.got[name] = (value, error)
            if len(self.got) == expected:
                self.all_in.set()

        return done


def test_an_error_that_is_not_the_database_fails_only_its_own_writes(
    transactional_db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store("test-node", lambda ready: None)
    store.start()
    good, bad = new_task(), new_task(run_after=float("inf"))  # no datetime holds it
    replies = Replies()

    def broken(cursor: Any, dialect: Any) -> None:
        raise RuntimeError("a bug in a sweep")

    def queue_one_batch() -> Any:  # all queued while no batch is written: one batch
        store.insert([good], replies.to("good", 2))
        store.insert([bad], replies.to("bad", 2))
        return store.call(broken)

    try:
        sweep = store.between_batches(queue_one_batch)
        assert replies.all_in.wait(10), replies.got
        value, error = replies.got["good"]
        assert error is None and [r.id for r in value] == [good.id]
        value, error = replies.got["bad"]
        assert isinstance(error, OverflowError)
        with pytest.raises(RuntimeError, match="a bug in a sweep"):
            sweep.wait(10)
        assert store.call(lambda cursor, dialect: "still writing").wait(10) == "still writing"
    finally:
        store.stop()
    assert list(Task.objects.values_list("id", flat=True)) == [good.id]
    assert store.healthy  # the database was never the problem
    assert "write refused kind=insert error=OverflowError" in caplog.text


def test_a_failing_commit_handler_still_sends_the_replies(transactional_db: Any) -> None:
    def on_ready(ready: Any) -> None:
        raise RuntimeError("the queues refused")

    store = Store("test-node", on_ready)
    store.start()
    replies = Replies()
    task = new_task()
    try:
        store.insert([task], replies.to("task", 1))
        assert replies.all_in.wait(10)
    finally:
        store.stop()
    value, error = replies.got["task"]
    assert error is None and [r.id for r in value] == [task.id]
    assert Task.objects.filter(pk=task.id).exists()
