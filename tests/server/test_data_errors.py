"""Values the database refuses are an op's own fault, not an outage.

An outcome with a NUL, a name past its column or a task row gone must end its
task (or be dropped, loudly) while the broker stays healthy and the other
writes of its batch commit.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

import leek
from leek.models import FailedTask, SuccessTask, Task
from leek.server.rows import Outcome
from leek.server.store import Store, storable
from tests.conftest import BOTH_POOLS, BrokerProcess, leek_cli, wait_for
from tests.server import odd_tasks
from tests.server.test_store import Replies, new_task


class Pings:
    """`leek ping` (the command, as a monitor runs it) over and over on a thread,
    until stopped; every exit status it gave."""

    def __init__(self, broker: BrokerProcess) -> None:
        self.broker = broker
        self.results: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop)

    def _loop(self) -> None:
        while not self._stop.is_set():
            done = leek_cli(self.broker.port, "ping")
            self.results.append((done.returncode, done.stdout.strip()))

    def __enter__(self) -> Pings:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # A few more after the outcome was written: an unhealthy broker shows
        # within the first of them.
        wait_for(lambda: len(self.results) >= 1, timeout=30)
        seen = len(self.results)
        wait_for(lambda: len(self.results) >= seen + 2, timeout=30)
        self._stop.set()
        self._thread.join(60)

    def all_healthy(self) -> bool:
        return bool(self.results) and all(code == 0 for code, _ in self.results)


@contextmanager
def refusing_trigger(marker: str) -> Iterator[None]:
    """A trigger that has the database refuse a SuccessTask row whose stdout
    holds `marker`: a value of the op's own that no cleaning foresees."""
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(
                "CREATE TRIGGER leek_test_refuse BEFORE INSERT ON leek_successtask "
                f"WHEN NEW.stdout LIKE '%{marker}%' "
                "BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END"
            )
        else:
            cursor.execute(
                "CREATE FUNCTION leek_test_refuse() RETURNS trigger AS $$ BEGIN "
                f"IF NEW.stdout LIKE '%{marker}%' THEN RAISE EXCEPTION "
                "'refused by a test trigger' USING ERRCODE = 'check_violation'; "
                "END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            cursor.execute(
                "CREATE TRIGGER leek_test_refuse BEFORE INSERT ON leek_successtask "
                "FOR EACH ROW EXECUTE FUNCTION leek_test_refuse()"
            )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":
                cursor.execute("DROP TRIGGER leek_test_refuse")
            else:
                cursor.execute("DROP TRIGGER leek_test_refuse ON leek_successtask")
                cursor.execute("DROP FUNCTION leek_test_refuse()")


# -- what the store makes of odd text -----------------------------------------


def test_text_is_made_storable_on_every_database() -> None:
    assert storable.text("a\0b", 100) == "a\\x00b"
    assert storable.text("é\0\ud800", 100) == "é\\x00\\ud800"
    assert storable.text("x" * 10, 5) == "xxxx…"
    assert storable.text("Traceback\n" + "y" * 10, 5, tail=True) == "…yyyy"
    plain = "nothing to do"
    assert storable.text(plain, 100) is plain


def test_a_new_task_keeps_its_values_unless_a_column_refuses_them() -> None:
    task = new_task()
    assert storable.task(task, 100) is task
    odd = storable.task(new_task(name="n\0" + "x" * 300, queue="q" * 80, args_repr="\ud800"), 100)
    assert odd.name.startswith("n\\x00x") and len(odd.name) == 255
    assert len(odd.queue) == 64
    assert odd.args_repr == "\\ud800"


def test_a_batch_with_values_a_column_refuses_is_stored_made_storable(
    transactional_db: Any,
) -> None:
    # Several tasks go in one statement (on PostgreSQL, one binary array a column).
    store = Store("odd-batch", lambda ready: None)
    store.start()
    try:
        tasks = [
            new_task(name="n\0x", payload=b"\0\xff" * 50),
            new_task(args_repr="\ud800", queue="q" * 80),
            new_task(timeout=2.5, run_after=time.time() + 60, priority=-3),
        ]
        replies = Replies()
        store.insert(tasks, replies.to("batch", 1))
        assert replies.all_in.wait(10) and replies.got["batch"][1] is None
    finally:
        store.stop()
    rows = {t.id: t for t in Task.objects.all()}
    first, second, third = (rows[t.id] for t in tasks)
    assert first.name == "n\\x00x" and bytes(first.payload) == b"\0\xff" * 50
    assert second.args_repr == "\\ud800" and len(second.queue) == 64
    assert (third.timeout, third.priority) == (2.5, -3)
    assert third.run_after is not None and third.run_after.timestamp() > time.time() + 50


# -- brokers --------------------------------------------------------------------


@BOTH_POOLS
def test_a_nul_in_stdout_is_stored_escaped_and_the_broker_stays_healthy(
    broker: BrokerProcess,
) -> None:
    with Pings(broker) as pings:
        handle = leek.push_task_to_queue(odd_tasks.print_nul)
        assert handle.result(timeout=20) == "printed"
    assert pings.all_healthy(), pings.results
    assert SuccessTask.objects.get(task_id=handle.id).stdout == "a\\x00b\n"
    assert "database write failed" not in broker.output()


def test_a_nul_in_an_exception_message_is_stored_escaped(broker: BrokerProcess) -> None:
    with Pings(broker) as pings:
        handle = leek.enqueue(odd_tasks.raise_nul, max_retries=0)
        with pytest.raises(leek.TaskFailed) as failed:
            handle.result(timeout=20)
    assert pings.all_healthy(), pings.results
    assert failed.value.remote_message == "bad\\x00value"
    failure = FailedTask.objects.get(task_id=handle.id)
    assert failure.exc_type == "builtins.ValueError" and failure.final
    assert "bad\\x00value" in failure.traceback


def test_an_exception_type_name_past_its_column_fails_the_task_with_its_name_cut(
    broker_factory: Any,
) -> None:
    broker: BrokerProcess = broker_factory(LEEK_WORKERS="4")
    moment = time.time() + 1.0  # they end together: one batch of outcomes
    with Pings(broker) as pings:
        bad = leek.enqueue(odd_tasks.raise_long_name, args=(moment,), max_retries=0)
        good = [leek.enqueue(odd_tasks.add_at, args=(moment, i, i)) for i in range(3)]
        with pytest.raises(leek.TaskFailed, match="a type name past its column"):
            bad.result(timeout=20)
        assert [h.result(timeout=20) for h in good] == [0, 2, 4]
    assert pings.all_healthy(), pings.results
    exc_type = FailedTask.objects.get(task_id=bad.id).exc_type
    assert len(exc_type) == 255 and exc_type.endswith("…")
    assert exc_type.startswith(f"tests.server.odd_tasks.{odd_tasks.LONG_NAME[:40]}")


def test_an_outcome_the_database_refuses_fails_its_task_and_only_its_task(
    broker_factory: Any,
) -> None:
    broker: BrokerProcess = broker_factory(LEEK_WORKERS="4")
    with refusing_trigger("refuse-me"):
        moment = time.time() + 1.0
        with Pings(broker) as pings:
            bad = leek.enqueue(odd_tasks.say_at, args=(moment, "refuse-me"))
            good = [leek.enqueue(odd_tasks.say_at, args=(moment, f"keep-{i}")) for i in range(3)]
            with pytest.raises(leek.TaskFailed) as failed:
                bad.result(timeout=20)
            assert [h.result(timeout=20) for h in good] == ["keep-0", "keep-1", "keep-2"]
    assert pings.all_healthy(), pings.results
    assert failed.value.remote_type == "leek.exceptions.OutcomeNotStored"
    message = failed.value.remote_message
    assert "the result of attempt 1 could not be stored" in message
    assert "refused by a test trigger" in message
    failure = FailedTask.objects.get(task_id=bad.id)
    assert failure.final and failure.stdout == "" and failure.traceback == ""
    assert "outcome not stored, its task failed instead" in broker.output()
    assert "database write failed" not in broker.output()


def test_the_outcome_of_a_task_deleted_while_it_runs_is_dropped_loudly(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    with Pings(broker) as pings:
        doomed = leek.push_task_to_queue(odd_tasks.wait_for_file, str(go))
        wait_for(lambda: doomed.status() == "running")
        Task.objects.filter(pk=doomed.id).delete()  # an admin deletes it
        go.touch()
        wait_for(lambda: "outcome dropped: its task is gone" in broker.output())
        assert leek.push_task_to_queue(odd_tasks.add_at, 0, 2, 3).result(timeout=20) == 5
    assert pings.all_healthy(), pings.results
    assert f"task={doomed.id}" in broker.output()
    assert not SuccessTask.objects.filter(task_id=doomed.id).exists()
    assert "database write failed" not in broker.output()


# -- one batch, on the store itself ---------------------------------------------


def test_a_refused_outcome_costs_its_batch_one_more_transaction_and_nothing_else(
    transactional_db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store("test-node", lambda ready: None)
    store.start()
    kept, refused, gone = new_task(), new_task(), new_task()
    replies = Replies()
    try:
        store.insert([kept, refused, gone], replies.to("tasks", 1))
        assert replies.all_in.wait(10)
        Task.objects.filter(pk=gone.id).delete()
        now = time.time()

        def success(task_id: uuid.UUID, stdout: str) -> Outcome:
            return Outcome(task_id, "tests.tasks.noop", 1, now, now, True, stdout=stdout)

        with refusing_trigger("refuse-me"):
            fresh = new_task()
            later = Replies()

            def queue_one_batch() -> Any:  # all queued while no batch is written: one batch
                store.record(success(kept.id, "fine\0"))
                store.record(success(refused.id, "refuse-me"))
                store.record(success(gone.id, "fine"))
                store.insert([fresh], later.to("fresh", 1))
                return store.call(lambda cursor, dialect: "called")

            def all_lanes_held() -> Any:  # on PostgreSQL the outcomes have a lane of their own
                if store.outcomes is store.tasks:
                    return queue_one_batch()
                return store.outcomes.between_batches(queue_one_batch)

            commits = store.all_commits()
            call = store.between_batches(all_lanes_held)
            assert call.wait(10) == "called"
            assert later.all_in.wait(10) and later.got["fresh"][1] is None
            wait_for(lambda: store.all_commits() >= commits + len(store.lanes))
        assert store.healthy
    finally:
        store.stop()
    # One commit a lane: the batch that held the refused outcome, written apart once.
    assert store.all_commits() == commits + len(store.lanes)
    statuses = dict(Task.objects.values_list("id", "status"))
    assert statuses == {
        kept.id: "succeeded",
        refused.id: "failed",
        fresh.id: "queued",
    }
    assert SuccessTask.objects.get(task_id=kept.id).stdout == "fine\\x00"
    assert FailedTask.objects.get(task_id=refused.id).exc_type == storable.NOT_STORED
    assert not SuccessTask.objects.filter(task_id=gone.id).exists()
    assert "outcome dropped: its task is gone" in caplog.text
    assert "database write failed" not in caplog.text
