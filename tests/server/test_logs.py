"""The broker's logs: JSON lines with each task's fields, and the text format."""

from __future__ import annotations

import json
import re
import signal
import socket
from datetime import datetime
from typing import Any

import pytest

import leek
from leek.logs import ERROR_FIELDS, FIELDS
from tests import tasks
from tests.conftest import BrokerProcess, wait_for

KEYS = {"time", "level", "logger", "message", *FIELDS}


def lines(broker: BrokerProcess) -> list[dict[str, Any]]:
    """Every line the broker wrote, each parsed as JSON (a line that is not fails the test)."""
    return [json.loads(line) for line in broker.output().splitlines()]


def of_task(broker: BrokerProcess, task_id: Any) -> list[dict[str, Any]]:
    return [line for line in lines(broker) if line["task_id"] == str(task_id)]


def test_a_json_broker_writes_every_record_as_json_with_the_fields_of_its_task(
    broker_factory: Any,
) -> None:
    broker = broker_factory(
        DJANGO_SETTINGS_MODULE="tests.server.observed_settings",  # leek logs at DEBUG
        LEEK_LOG_FORMAT="json",
        LEEK_RETRY_BACKOFF="0.05",
        LEEK_ON_FAILURE="tests.tasks.broken_hook",
    )
    ok = leek.enqueue(tasks.add, (1, 2), queue="sums")
    bad = leek.enqueue(tasks.fail, ("nope",), queue="mail", max_retries=1)
    assert ok.result(timeout=20) == 3
    with pytest.raises(leek.TaskFailed):
        bad.result(timeout=20)
    wait_for(lambda: any(line["action"] == "hook_failed" for line in of_task(broker, bad.id)))
    assert broker.kill(signal.SIGTERM) == 0

    every = lines(broker)
    node = f"{socket.gethostname()}:{broker.port}"
    for line in every:
        assert KEYS <= set(line), line
        assert line["node"] == node
        assert datetime.fromisoformat(line["time"]).utcoffset() is not None
    actions = [line["action"] for line in every]
    assert {"broker_started", "broker_stopping", "broker_stopped"} <= set(actions)

    succeeded = [(x["action"], x["level"], x["attempt"]) for x in of_task(broker, ok.id)]
    assert succeeded == [
        ("task_received", "DEBUG", None),
        ("task_started", "DEBUG", 1),
        ("task_succeeded", "DEBUG", 1),
    ]
    for line in of_task(broker, ok.id):
        assert (line["task"], line["queue"]) == ("tests.tasks.add", "sums")
        assert not set(ERROR_FIELDS) & set(line)
    [done] = [x for x in of_task(broker, ok.id) if x["action"] == "task_succeeded"]
    assert isinstance(done["duration_ms"], float) and done["duration_ms"] >= 0
    assert f"task={ok.id}" in done["message"]  # the text format's message, as it is

    failed = of_task(broker, bad.id)
    assert [(x["action"], x["level"], x["attempt"]) for x in failed] == [
        ("task_received", "DEBUG", None),
        ("task_started", "DEBUG", 1),
        ("task_retried", "WARNING", 1),
        ("task_started", "DEBUG", 2),
        ("task_failed", "ERROR", 2),
        ("hook_failed", "ERROR", 2),
    ]
    for line in failed:
        assert (line["task"], line["queue"] or "mail") == ("tests.tasks.fail", "mail")
    for line in failed[2], failed[4]:  # the failed attempts: the task's own error
        assert isinstance(line["duration_ms"], float)
        assert (line["exc_type"], line["exc_message"]) == ("builtins.ValueError", "nope")
        assert "ValueError: nope" in line["traceback"]
    hook = failed[5]  # logged with its exception: the hook's error, not the task's
    assert (hook["exc_type"], hook["exc_message"]) == (
        "builtins.RuntimeError",
        "the hook itself is broken",
    )
    assert "Traceback" in hook["traceback"] and "broken_hook" in hook["traceback"]


def test_a_text_broker_writes_lines_as_before_and_tells_of_failures(
    broker_factory: Any,
) -> None:
    broker = broker_factory(LEEK_RETRY_BACKOFF="0.05")
    ok = leek.push_task_to_queue(tasks.add, 1, 2)
    bad = leek.enqueue(tasks.fail, ("nope",), max_retries=0)
    assert ok.result(timeout=20) == 3
    with pytest.raises(leek.TaskFailed):
        bad.result(timeout=20)
    wait_for(lambda: f"task={bad.id}" in broker.output())
    output = broker.output()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.search(rf"^{stamp} INFO leek.server.broker broker listening node=", output, re.M)
    assert re.search(
        rf"^{stamp} ERROR leek.server.lifecycle task failed task={bad.id} "
        r"name=tests.tasks.fail queue=default attempt=1 duration_ms=[\d.]+ "
        r"error=builtins.ValueError$",
        output,
        re.M,
    )
    assert str(ok.id) not in output  # a task that goes well is told at DEBUG only
    assert "{" not in output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ((), "(leek.E014) LEEK['LOG_FORMAT'] is 'xml'."),  # the system checks, first
        (("--skip-checks",), "LEEK['LOG_FORMAT'] is 'xml': use one of text, json"),
    ],
)
def test_a_log_format_that_is_neither_text_nor_json_stops_the_start(
    broker_factory: Any, args: tuple[str, ...], says: str
) -> None:
    broker = broker_factory(wait=False, args=args, LEEK_LOG_FORMAT="xml")
    assert broker.proc is not None and broker.proc.wait(30) == 1
    assert says in broker.output()
