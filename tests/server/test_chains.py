"""Chains, groups and chords on real brokers: results passed along, failures
stopping what follows, and each step released once, crash or not."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

import leek
from leek.exceptions import TaskFailed
from leek.models import FailedTask, Task
from tests.conftest import BOTH_POOLS, free_port, wait_for
from tests.server import chain_tasks as t


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def steps_of(handle: Any) -> list[Any]:
    """The ids of the steps of the chain whose last step is `handle`, in order."""
    chain = Task.objects.get(pk=handle.id).chain
    nexts = dict(Task.objects.filter(chain=chain).values_list("next_step", "id"))
    ids = [handle.id]
    while ids[0] in nexts:
        ids.insert(0, nexts[ids[0]])
    return ids


@BOTH_POOLS
def test_a_chain_passes_each_result_to_the_next_step(broker: Any) -> None:
    handle = leek.chain(t.add.s(1, 2), t.mul.s(10), t.add.s(5)).delay()
    assert handle.result(timeout=30) == 35
    steps = steps_of(handle)
    assert len(steps) == 3
    assert set(Task.objects.filter(id__in=steps).values_list("status", flat=True)) == {"succeeded"}


def test_the_pipe_builds_the_same_chain_with_a_plain_callable(broker: Any) -> None:
    handle = (t.add.s(2, 3) | leek.signature(t.square)).delay()
    assert handle.result(timeout=30) == 25


@BOTH_POOLS
def test_a_failed_middle_step_fails_the_chain_and_the_last_never_runs(
    broker: Any, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    handle = leek.chain(t.add.s(1, 2), t.broken.s(), t.mark.s(str(marks), "last")).delay()
    with pytest.raises(TaskFailed) as failed:
        handle.result(timeout=30)
    middle = Task.objects.get(name="tests.server.chain_tasks.broken")
    assert str(middle.id) in str(failed.value)
    assert "broken on 3" in str(failed.value)
    assert failed.value.remote_type == "leek.EarlierStepFailed"
    assert middle.status == "failed"
    last = Task.objects.get(pk=handle.id)
    assert (last.status, last.attempts, last.started_at) == ("failed", 0, None)
    assert FailedTask.objects.get(task_id=handle.id).final
    assert not marks.exists()


def test_a_retried_step_goes_on_with_the_chain_once_it_succeeds(
    broker_factory: Any, tmp_path: Path
) -> None:
    from tests import tasks

    broker_factory(LEEK_RETRY_BACKOFF="0.05")
    runs = tmp_path / "runs"
    flaky = leek.signature(tasks.flaky, str(runs), 1).set(max_retries=2)
    handle = (flaky | t.add.s(100)).delay()
    assert handle.result(timeout=30) == 102  # flaky's second run returned 2


def test_a_step_is_released_once_across_a_broker_killed_right_after_the_step_before(
    broker_factory: Any, tmp_path: Path
) -> None:
    port = free_port()
    first = broker_factory(port=port, args=("--queues", "default"))
    marks = tmp_path / "marks"
    path = str(marks)
    one = t.mark.s(1, path, "one")
    # The first broker serves only the default queue: the next steps wait in
    # the database for the second broker, whatever the first did before it died.
    two = t.mark.s(path, "two").set(queue="later")
    three = t.mark.s(path, "three").set(queue="later")
    handle = leek.chain(one, two, three).delay()
    ids = steps_of(handle)
    statuses: dict[Any, str] = {}

    def first_step_done() -> bool:
        statuses.update(Task.objects.filter(id__in=ids[:2]).values_list("id", "status"))
        # One query, one snapshot: the success and the release are seen together.
        assert not (statuses[ids[0]] == "succeeded" and statuses[ids[1]] == "waiting")
        return statuses[ids[0]] == "succeeded"

    wait_for(first_step_done, interval=0.001)
    first.kill(signal.SIGKILL)
    assert statuses[ids[1]] == "queued"
    broker_factory(port=port)
    assert handle.result(timeout=30) == 1
    assert lines(marks) == ["one", "two", "three"]


def test_a_chord_of_twenty_runs_its_callback_once_with_every_result(
    broker_factory: Any, tmp_path: Path
) -> None:
    broker_factory(LEEK_WORKERS="4")
    runs = tmp_path / "runs"
    handle = (leek.group(t.add.s(i, i) for i in range(20)) | t.total.s(str(runs))).delay()
    assert handle.result(timeout=60) == sum(2 * i for i in range(20))
    assert lines(runs) == ["total"]


def test_a_chord_whose_members_end_on_two_brokers_runs_its_callback_once(
    broker_factory: Any, tmp_path: Path
) -> None:
    broker_factory(args=("--queues", "a"), LEEK_WORKERS="3")
    broker_factory(args=("--queues", "b"), LEEK_WORKERS="3")  # the one the client pushes to
    runs = tmp_path / "runs"
    members = [t.add.s(i, 0).set(queue="ab"[i % 2]) for i in range(20)]
    handle = (leek.group(members) | t.total.s(str(runs)).set(queue="b")).delay()
    assert handle.result(timeout=60) == sum(range(20))
    assert lines(runs) == ["total"]
    brokers = set(Task.objects.filter(name="tests.server.chain_tasks.add").values_list("broker"))
    assert len(brokers) == 2


def test_a_failed_member_fails_the_chords_callback(broker: Any, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    members = [t.add.s(1, 1), t.broken.s("member"), t.add.s(2, 2)]
    handle = leek.chord(members, t.total.s(str(runs))).delay()
    with pytest.raises(TaskFailed, match="an earlier step failed"):
        handle.result(timeout=30)
    assert not runs.exists()


@BOTH_POOLS
def test_a_groups_results_come_in_its_order(broker: Any) -> None:
    group = leek.group([t.mul.s(i, 3) for i in range(12)]).delay()
    assert group.results(timeout=30) == [3 * i for i in range(12)]
    assert len({Task.objects.get(pk=h.id).chain for h in group}) == 1


def test_a_push_whose_links_leave_a_step_waiting_for_ever_is_refused(broker: Any) -> None:
    from leek.client import connection
    from leek.client.api import message
    from leek.exceptions import BrokerError

    lone = message(t.add, (1, 2))
    lone["waiting"] = True
    with pytest.raises(BrokerError, match="no step of the push releases it"):
        connection.call("enqueue_steps", [lone])
    assert not Task.objects.exists()


def test_a_cancelled_step_fails_the_steps_after_it(broker_factory: Any) -> None:
    broker_factory(args=("--queues", "default"))
    first = t.add.s(1, 2).set(queue="unserved")  # waits in the database: no broker serves it
    handle = (first | t.add.s(3)).delay()
    first_id = steps_of(handle)[0]
    wait_for(lambda: Task.objects.filter(pk=first_id, spooled=True).exists())
    assert leek.TaskHandle(first_id).cancel()
    with pytest.raises(TaskFailed, match=f"an earlier step was cancelled: {first_id}"):
        handle.result(timeout=30)


def test_a_step_cut_short_on_its_last_attempt_fails_the_steps_after_it(
    broker_factory: Any, tmp_path: Path
) -> None:
    from tests import tasks

    port = free_port()
    first = broker_factory(port=port)
    slow = leek.signature(tasks.sleep, 30).set(max_retries=0)
    marks = tmp_path / "marks"
    handle = (slow | t.mark.s(str(marks), "after")).delay()
    slow_id = steps_of(handle)[0]
    wait_for(lambda: Task.objects.get(pk=slow_id).status == "running")
    first.kill(signal.SIGKILL)
    broker_factory(port=port)
    with pytest.raises(TaskFailed, match=f"an earlier step failed: {slow_id}.*WorkerLost"):
        handle.result(timeout=30)
    assert not marks.exists()


def test_a_chain_pushed_while_no_broker_answers_runs_once_one_starts(
    broker_factory: Any, leek_settings: Any, tmp_path: Path
) -> None:
    from tests import tasks

    port = free_port()
    leek_settings(PORT=port, FALLBACK="database")
    marks = tmp_path / "marks"
    handle = leek.chain(t.add.s(1, 2), t.mark.s(str(marks), "second")).delay()
    leek.push_task_to_queue(tasks.sleep, 1.0)  # holds the one worker while sweeps go by
    assert Task.objects.get(pk=handle.id).status == "waiting"
    broker_factory(port=port, LEEK_WORKERS="1", LEEK_SWEEP_INTERVAL="0.1")
    assert handle.result(timeout=30) == 3
    assert lines(marks) == ["second"]


def test_retry_failed_runs_a_chain_on_from_the_step_that_failed(
    broker_factory: Any, tmp_path: Path
) -> None:
    from leek.cli.repair import retry_failed
    from tests import tasks

    broker_factory()
    runs, marks = tmp_path / "runs", tmp_path / "marks"
    flaky = leek.signature(tasks.flaky, str(runs), 1).set(max_retries=0)  # fails its first run
    handle = (flaky | t.mark.s(str(marks), "after") | t.add.s(10)).delay()
    with pytest.raises(TaskFailed, match="an earlier step failed"):
        handle.result(timeout=30)
    assert retry_failed() == 3  # the step that failed, and the two after it
    assert handle.result(timeout=30) == 12  # flaky's second run returned 2
    assert lines(marks) == ["after"]
