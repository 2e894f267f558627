"""Mail to ADMINS when a task fails for good: called directly, and from a real broker."""

from __future__ import annotations

import email
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import django
import pytest
from django.core import mail

import leek
from leek.server.notify import notify_admins
from leek.server.rows import Outcome
from tests import tasks
from tests.conftest import BOTH_POOLS, BrokerProcess, wait_for

ADMINS: list[Any] = ["ops@example.com"] if django.VERSION >= (6,) else [("Ops", "ops@example.com")]


def written(outbox: Path) -> list[str]:
    """The mails the file backend has finished writing (each ends with a rule), as
    their subject and decoded body: a long line makes the body quoted-printable."""
    rule = "-" * 79
    files = sorted(outbox.glob("*")) if outbox.exists() else []
    texts = [f.read_text() for f in files]
    return [decoded(t.rstrip().removesuffix(rule)) for t in texts if t.rstrip().endswith(rule)]


def decoded(text: str) -> str:
    message = email.message_from_string(text)
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes)
    subject = " ".join(str(message["Subject"]).split())
    return f"Subject: {subject}\n\n{body.decode(message.get_content_charset() or 'utf-8')}"


def outcome(**fields: Any) -> Outcome:
    values: dict[str, Any] = {
        "task_id": uuid.uuid4(),
        "name": "app.tasks.bill",
        "attempt": 4,
        "started": time.time(),
        "finished": time.time(),
        "succeeded": False,
        "exc_type": "builtins.ValueError",
        "exc_message": "card declined",
        "stderr": "retrying card\n",
        "traceback": 'Traceback (most recent call last):\n  File "app/tasks.py", line 9\n'
        "ValueError: card declined\n",
    }
    values.update(fields)
    return Outcome(**values)


def test_the_mail_says_which_task_failed_and_why(
    settings: Any, leek_settings: Callable[..., None]
) -> None:
    settings.ADMINS = ADMINS
    leek_settings(NOTIFY_ADMINS_ON_FAILURE=True)
    failed = outcome()
    assert notify_admins(failed.task_id, failed.name, failed) is True
    [message] = mail.outbox
    assert message.to == ["ops@example.com"]
    assert "app.tasks.bill failed: builtins.ValueError" in message.subject
    assert str(failed.task_id) in message.body and "attempt 4" in message.body
    assert "ValueError: card declined" in message.body and "retrying card" in message.body
    assert f"/admin/leek/task/{failed.task_id}/change/" in message.body


@pytest.mark.parametrize("enabled, admins", [(False, ADMINS), (True, [])])
def test_no_mail_unless_enabled_and_someone_to_tell(
    settings: Any, enabled: bool, admins: list[tuple[str, str]], leek_settings: Callable[..., None]
) -> None:
    settings.ADMINS = admins
    leek_settings(NOTIFY_ADMINS_ON_FAILURE=enabled)
    failed = outcome()
    assert notify_admins(failed.task_id, failed.name, failed) is False
    assert mail.outbox == []


def test_a_broken_mail_server_is_logged_not_raised(
    settings: Any, caplog: Any, leek_settings: Callable[..., None]
) -> None:
    settings.ADMINS = ADMINS
    smtp = "django.core.mail.backends.smtp.EmailBackend"
    if django.VERSION >= (6, 1):  # mail servers are configured as MAILERS from 6.1 on
        settings.MAILERS = {
            "default": {"BACKEND": smtp, "OPTIONS": {"host": "127.0.0.1", "port": 9, "timeout": 1}}
        }
    else:
        settings.EMAIL_BACKEND = smtp
        settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 1
    leek_settings(NOTIFY_ADMINS_ON_FAILURE=True)
    failed = outcome(exc_type="a\nb")
    assert notify_admins(failed.task_id, failed.name, failed) is False
    assert "failure mail not sent" in caplog.text


@BOTH_POOLS
@pytest.mark.django_db(transaction=True)
def test_a_broker_mails_the_admins_once_a_task_fails_for_good(
    broker_factory: Callable[..., BrokerProcess], tmp_path: Path, pool: str
) -> None:
    outbox = tmp_path / "mail"
    broker_factory(LEEK_POOL=pool, LEEK_NOTIFY_ADMINS_ON_FAILURE="1", EMAIL_FILE_PATH=str(outbox))
    handle = leek.enqueue(tasks.fail, ("out of paper",), max_retries=1)
    wait_for(lambda: handle.status() == "failed")
    sent = wait_for(lambda: written(outbox))
    assert len(sent) == 1  # one mail: the retry before it sent none
    text = sent[0]
    assert "tests.tasks.fail failed: builtins.ValueError" in text
    assert str(handle.id) in text and "out of paper" in text and "attempt 2" in text
    ok = leek.push_task_to_queue(tasks.add, 1, 2)
    assert ok.result(timeout=10) == 3
    assert len(written(outbox)) == 1
