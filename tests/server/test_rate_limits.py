"""Rate limits: a token bucket in the database that every broker sharing it takes from."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from django.core import checks
from django.test import Client
from django.urls import reverse

import leek
from leek import ratelimit
from leek.client import connection as client
from leek.exceptions import BrokerError
from leek.models import FailedTask, RateLimit, Task
from tests import tasks
from tests.conftest import BOTH_POOLS, BrokerFactory, free_port, leek_cli, wait_for
from tests.server import limited_tasks

#: The least time 30 starts at "10/s" can span, one token at once (the burst)
#: and the rest at 10 a second, less 20 %.
RATE = 10.0
COUNT = 30


def starts(path: Path) -> list[float]:
    return sorted(float(line) for line in path.read_text().split())


def least_span(count: int, per_second: float) -> float:
    """The shortest span of `count` starts at `per_second`, run 20 % fast."""
    return (count - ratelimit.BURST) / (per_second * 1.2)


def test_a_rate_limit_reads_per_second_minute_or_hour() -> None:
    assert ratelimit.parse("10/s") == ratelimit.Rate(10, 1.0)
    assert ratelimit.parse("30/m").per_second == 0.5
    assert str(ratelimit.parse(" 7 / h ")) == "7/h"
    assert ratelimit.field(None) == ratelimit.field("") == ""
    assert ratelimit.field("5/m") == "5/m"


@pytest.mark.parametrize("bad", ["10", "10/d", "ten/s", "0/s", "-1/s", "1.5/s", 10, "10/sec"])
def test_a_rate_limit_in_any_other_form_is_refused_with_the_forms_it_takes(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"rate_limit must"):
        ratelimit.parse(bad)


def test_a_bad_rate_limit_fails_at_the_decorator_and_at_enqueue() -> None:
    with pytest.raises(ValueError, match=r'"N/s", "N/m" or "N/h".*got \'10/d\''):
        leek.task(rate_limit="10/d")(tasks.add)
    with pytest.raises(ValueError, match=r"got 'fast'"):
        leek.enqueue(tasks.add, (1, 2), rate_limit="fast")


def test_the_broker_refuses_a_push_whose_rate_limit_does_not_read(
    broker_factory: BrokerFactory,
) -> None:
    from leek.client.api import message

    broker_factory()
    data = {**message(tasks.add, (1, 2)), "rate_limit": "lots/s"}
    with pytest.raises(BrokerError, match=r"rate_limit must"):
        client.call("enqueue", data, push=True)
    assert not Task.objects.exists()


@pytest.mark.django_db  # the model checks read the database on Django 6
def test_a_queue_rate_limit_that_does_not_read_fails_the_checks(settings: Any) -> None:
    settings.LEEK = {"QUEUES": {"reports": {"workers": 1, "rate_limit": "30/d"}}}
    found = [m for m in checks.run_checks() if m.id == "leek.E007"]
    assert len(found) == 1, found
    assert "LEEK['QUEUES']['reports'] has rate_limit must be" in found[0].msg
    assert "got '30/d'" in found[0].msg


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ((), "(leek.E007) LEEK['QUEUES']['mail'] has rate_limit must be"),  # the system checks
        (("--skip-checks",), "error: LEEK['QUEUES']['mail'] has rate_limit must be"),
    ],
)
def test_a_broker_whose_queue_limit_does_not_read_says_so_and_does_not_start(
    broker_factory: BrokerFactory, args: tuple[str, ...], says: str
) -> None:
    broker = broker_factory(
        wait=False, args=args, LEEK_QUEUES=json.dumps({"mail": {"rate_limit": "9"}})
    )
    assert broker.proc is not None
    assert broker.proc.wait(30) == 1
    assert says in broker.output()
    assert "Traceback" not in broker.output()


def test_tasks_of_a_limited_name_start_no_faster_than_the_limit(
    broker_factory: BrokerFactory,
    tmp_path: Path,
) -> None:
    broker = broker_factory(LEEK_WORKERS="4")
    path = tmp_path / "starts"
    handles = leek.enqueue_many([(limited_tasks.stamp, (str(path),))] * COUNT, rate_limit="10/s")
    for handle in handles:
        handle.result(timeout=60)
    times = starts(path)
    span = times[-1] - times[0]
    assert len(times) == COUNT
    assert span >= least_span(COUNT, RATE), (span, times)
    assert span <= (COUNT - 1) / RATE * 4, (span, times)  # a line that stalls would show here
    rows = Task.objects.filter(pk__in=[h.id for h in handles])
    assert {(t.status, t.attempts, t.rate_limit) for t in rows} == {("succeeded", 1, "10/s")}
    assert not FailedTask.objects.exists()
    bucket = RateLimit.objects.get()
    assert (bucket.key, bucket.rate, bucket.burst) == (f"task:{rows[0].name}", RATE, 1.0)
    shown = json.loads(leek_cli(broker.port, "--json", "stats").stdout)["rate_limits"]
    assert shown["buckets"][bucket.key]["rate"] == "10/s"
    assert shown["taken"] == COUNT


def test_the_decorator_limit_holds_for_delay(broker_factory: BrokerFactory, tmp_path: Path) -> None:
    broker_factory(LEEK_WORKERS="4")
    path = tmp_path / "starts"
    handles = [limited_tasks.ten_a_second.delay(str(path)) for _ in range(12)]
    for handle in handles:
        handle.result(timeout=60)
    times = starts(path)
    assert times[-1] - times[0] >= least_span(12, RATE), times
    assert set(Task.objects.values_list("rate_limit", flat=True)) == {"10/s"}


def test_brokers_sharing_the_database_share_one_limit(
    broker_factory: BrokerFactory,
    tmp_path: Path,
) -> None:
    first = broker_factory(LEEK_WORKERS="4")
    second = broker_factory(LEEK_WORKERS="4")
    path = tmp_path / "starts"
    half = [(limited_tasks.stamp, (str(path),))] * (COUNT // 2)
    handles = leek.enqueue_many(half, rate_limit="10/s")  # to the second
    broker_factory.leek_settings(PORT=first.port)
    handles += leek.enqueue_many(half, rate_limit="10/s")
    for handle in handles:
        handle.result(timeout=60)
    times = starts(path)
    span = times[-1] - times[0]
    assert len(times) == COUNT
    assert span >= least_span(COUNT, RATE), (span, times)
    ran_on = set(Task.objects.values_list("broker", flat=True))
    assert {b.rsplit(":", 1)[1] for b in ran_on} == {str(first.port), str(second.port)}
    assert set(Task.objects.values_list("attempts", flat=True)) == {1}
    assert not FailedTask.objects.exists()


@BOTH_POOLS
def test_tasks_without_a_limit_run_while_a_limited_one_waits(
    broker_factory: BrokerFactory, pool: str
) -> None:
    broker = broker_factory(LEEK_WORKERS="1", LEEK_POOL=pool)
    first = leek.enqueue(tasks.add, (1, 1), rate_limit="1/h")
    assert first.result(timeout=30) == 2
    waits = leek.enqueue(tasks.add, (2, 2), rate_limit="1/h")
    wait_for(lambda: leek.stats()[1]["rate_limits"]["waited"] == 1)
    for n in range(5):
        assert leek.push_task_to_queue(tasks.add, n, 1).result(timeout=30) == n + 1
    task = Task.objects.get(pk=waits.id)
    assert (task.status, task.attempts) == ("queued", 0)
    assert leek.waiting() == (True, 1)
    assert leek.ping() == (True, "I'm OK")
    stats = json.loads(leek_cli(broker.port, "--json", "stats").stdout)["rate_limits"]
    bucket = stats["buckets"][f"task:{task.name}"]
    assert bucket["rate"] == "1/h" and bucket["tokens"] < 0.01
    assert waits.cancel() is True
    assert leek.waiting() == (True, 0)
    assert Task.objects.get(pk=waits.id).attempts == 0


def test_a_task_cancelled_while_it_waits_in_line_never_runs_and_the_line_goes_on(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    broker_factory(LEEK_WORKERS="2")
    path = tmp_path / "starts"
    handles = [leek.enqueue(limited_tasks.stamp, (str(path),), rate_limit="2/s") for _ in range(5)]
    wait_for(leek.waiting, equals=(True, 4))  # the first runs; four wait their turn
    assert handles[2].cancel() is True
    for handle in handles[:2] + handles[3:]:
        handle.result(timeout=30)
    times = starts(path)
    assert len(times) == 4
    assert times[-1] - times[0] >= least_span(4, 2.0), times
    cancelled = Task.objects.get(pk=handles[2].id)
    assert (cancelled.status, cancelled.attempts) == ("cancelled", 0)
    assert leek.waiting() == (True, 0)


def test_a_retry_waits_for_a_token_like_a_first_attempt(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    broker_factory()
    runs = tmp_path / "runs"
    handle = leek.enqueue(tasks.flaky, (str(runs), 1), max_retries=2, rate_limit="1/h")
    wait_for(lambda: leek.stats()[1]["rate_limits"]["waited"] == 1)
    task = Task.objects.get(pk=handle.id)
    assert (task.status, task.attempts) == ("queued", 1)  # the failed attempt, no more
    assert runs.read_text() == "1"
    assert FailedTask.objects.get().final is False


def test_a_task_spooled_without_a_broker_keeps_its_limit(
    broker_factory: BrokerFactory, leek_settings: Any
) -> None:
    port = free_port()
    leek_settings(PORT=port, CONNECT_TIMEOUT=0.5)
    handles = [leek.enqueue(tasks.add, (n, 1), rate_limit="1/h") for n in range(2)]
    assert set(Task.objects.values_list("spooled", "rate_limit")) == {(True, "1/h")}
    broker_factory(port=port)
    wait_for(lambda: Task.objects.filter(status="succeeded").count() == 1)
    wait_for(leek.waiting, equals=(True, 1))
    assert sorted(Task.objects.values_list("status", "attempts")) == [
        ("queued", 0),
        ("succeeded", 1),
    ]
    assert sum(h.ready() for h in handles) == 1


def test_a_restarted_broker_finds_the_bucket_as_it_was_and_the_task_still_waiting(
    broker_factory: BrokerFactory,
) -> None:
    port = free_port()
    first = broker_factory(port=port)
    assert leek.enqueue(tasks.add, (1, 1), rate_limit="1/h").result(timeout=30) == 2
    waits = leek.enqueue(tasks.add, (2, 2), rate_limit="1/h")
    wait_for(lambda: leek.stats()[1]["rate_limits"]["waited"] == 1)
    assert first.kill(signal.SIGTERM) == 0
    broker_factory(port=port)
    wait_for(lambda: leek.stats()[1]["rate_limits"]["waited"] == 1)  # the new life's
    task = Task.objects.get(pk=waits.id)
    assert (task.status, task.attempts) == ("queued", 0)
    assert leek.waiting() == (True, 1)


def test_a_queue_limit_from_the_settings_holds_for_all_its_tasks(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    queues = {"reports": {"workers": 3, "rate_limit": "5/s"}}
    broker_factory(LEEK_QUEUES=json.dumps(queues))
    path = tmp_path / "starts"
    handles = [leek.enqueue(limited_tasks.stamp, (str(path),), queue="reports") for _ in range(6)]
    handles += [leek.enqueue(tasks.add, (1, 2), queue="reports") for _ in range(4)]
    unlimited = [leek.push_task_to_queue(tasks.add, n, 0) for n in range(10)]
    for handle in handles + unlimited:
        handle.result(timeout=60)
    times = starts(path)
    assert times[-1] - times[0] >= least_span(6, 5.0), times
    assert list(RateLimit.objects.values_list("key", flat=True)) == ["queue:reports"]
    assert leek.stats()[1]["rate_limits"]["queues"] == {"reports": "5/s"}
    assert set(Task.objects.values_list("attempts", flat=True)) == {1}


def test_the_dashboard_lists_each_limit_with_its_tokens(admin_client: Client) -> None:
    RateLimit.objects.create(
        key="task:tests.tasks.add", rate=0.5, burst=1, tokens=0, updated_at=time.time() - 1
    )
    page = admin_client.get(reverse("admin:leek_task_dashboard")).content.decode()
    assert "<h2>Rate limits</h2>" in page
    row = re.search(
        r'<td>task:tests\.tasks\.add</td><td>30/m</td><td class="num">1</td>'
        r'<td class="num">([\d.]+)</td>',
        page,
    )
    assert row is not None, page
    assert 0.5 <= float(row.group(1)) <= 1.0  # half a token a second, for a second or more
