"""leek.logs: the extra of a task's records, the JSON formatter, and LOG_FORMAT's check."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest
from django.core import checks

from leek.logs import FIELDS, JsonFormatter, NodeFilter, task_extra


def record(msg: str, *args: Any, exc_info: Any = None, **extra: Any) -> logging.LogRecord:
    logger = logging.getLogger("leek.test")
    return logger.makeRecord(
        logger.name, logging.ERROR, __file__, 1, msg, args, exc_info, extra=extra
    )


def test_task_extra_leaves_out_what_it_is_not_given() -> None:
    task_id = uuid.uuid4()
    assert task_extra("task_lost", task_id, "app.bill", attempt=2) == {
        "action": "task_lost",
        "task_id": str(task_id),
        "task": "app.bill",
        "attempt": 2,
    }
    extra = task_extra("task_failed", task_id, exc_type="builtins.ValueError")
    assert (extra["exc_type"], extra["exc_message"], extra["traceback"]) == (
        "builtins.ValueError",
        "",
        "",
    )


def test_a_json_line_has_every_key_null_when_the_record_lacks_it_and_no_error_keys() -> None:
    line = json.loads(JsonFormatter().format(record("hello %s", "there")))
    assert line["message"] == "hello there" and line["level"] == "ERROR"
    assert line["logger"] == "leek.test"
    assert all(line[key] is None for key in FIELDS)
    assert not {"exc_type", "exc_message", "traceback"} & set(line)


def test_the_exception_a_record_is_logged_with_comes_before_the_task_error_in_its_extra() -> None:
    try:
        raise KeyError("hook")
    except KeyError as exc:
        caught = (type(exc), exc, exc.__traceback__)
    extra = task_extra("hook_failed", uuid.uuid4(), exc_type="builtins.ValueError")
    line = json.loads(JsonFormatter().format(record("hook raised", exc_info=caught, **extra)))
    assert (line["exc_type"], line["exc_message"]) == ("builtins.KeyError", "'hook'")
    assert line["traceback"].startswith("Traceback") and "KeyError: 'hook'" in line["traceback"]


def test_the_node_filter_names_the_broker_unless_the_record_does() -> None:
    named = record("x", node="elsewhere:1")
    plain = record("x")
    node = NodeFilter("web1:8002")
    assert node.filter(named) and node.filter(plain)
    assert (named.node, plain.node) == ("elsewhere:1", "web1:8002")  # type: ignore[attr-defined]


@pytest.mark.django_db  # the model checks read the database on Django 6
@pytest.mark.parametrize("value", ["JSON", "xml", ""])
def test_a_log_format_other_than_text_or_json_is_an_error(settings: Any, value: str) -> None:
    settings.LEEK = {"LOG_FORMAT": value}
    assert [m.msg for m in checks.run_checks() if m.id == "leek.E014"] == [
        f"LEEK['LOG_FORMAT'] is {value!r}."
    ]


@pytest.mark.django_db  # the model checks read the database on Django 6
@pytest.mark.parametrize("value", ["text", "json"])
def test_text_and_json_pass(settings: Any, value: str) -> None:
    settings.LEEK = {"LOG_FORMAT": value}
    assert [m for m in checks.run_checks() if m.id == "leek.E014"] == []
