"""The admin in a real browser: headless Chromium (Debian's package) driven by
Playwright, against the live test server and a real broker.

Screenshots go to test-artifacts/. Skipped, saying why, when Playwright or
Chromium is missing: `.ci/browser.sh` installs Chromium, and never Playwright's
own browser download.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connections

import leek
from tests import tasks
from tests.admin import tasks as admin_tasks
from tests.conftest import REPO, BrokerProcess, wait_for

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="Playwright is not installed (pip install playwright; the browser is Debian's "
    "chromium, installed by .ci/browser.sh)",
)

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = REPO / "test-artifacts"

pytestmark = [
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"no Chromium at {CHROMIUM}: run .ci/browser.sh "
        "(apt-get install chromium) or set CHROMIUM_PATH",
    ),
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def page(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh browser page at 1600x1000; the browser closes after the test.

    Playwright's synchronous API keeps an event loop running on this thread, so
    Django takes the test's (synchronous) ORM calls for async code: it allows
    them here, and gives them connections of their own, closed before the loop
    stops.
    """
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(15_000)
            yield page
            context.close()
        finally:
            browser.close()
            connections.close_all()


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def reload_until(page: Any, text: str, timeout: float = 20.0) -> None:
    """Reload the page until `text` shows in it (the task ran meanwhile)."""

    def shows() -> bool:
        page.reload()
        return text in page.content()

    wait_for(shows, timeout=timeout, interval=0.2)


def test_the_admin_in_a_browser(
    live_server: Any,
    admin_user: Any,
    broker_factory: Callable[..., BrokerProcess],
    tmp_path: Path,
    page: Any,
) -> None:
    broker = broker_factory(LEEK_WORKERS="2")
    base = live_server.url + "/admin/"

    page.goto(base)
    page.fill("#id_username", "admin")
    page.fill("#id_password", "password")
    page.click("input[type=submit]")
    page.wait_for_selector("#leek-links")

    # The dashboard sees the live broker.
    page.click("text=Task dashboard")
    page.wait_for_selector(f"tr.leek-node-alive >> text={socket.gethostname()}:{broker.port}")
    assert page.locator("#leek-problems").count() == 0
    shot(page, "dashboard")

    # Create a task from the admin, see it succeed and read its stdout.
    assert admin_tasks.shout.fn.__name__ == "shout"  # imported, so registered
    page.goto(base + "leek/task/create/")
    page.select_option("#id_target", "task:tests.admin.tasks.shout")
    page.fill("#id_args", '["from the browser"]')
    page.click("input[name=_push]")
    page.wait_for_selector("text=Pushed tests.admin.tasks.shout")
    reload_until(page, ">succeeded<")
    assert page.locator("text=FROM THE BROWSER").count() >= 2  # return value and stdout
    shot(page, "created-task")

    # Cancel a task that waits to run.
    later = leek.enqueue(tasks.noop, delay=600)
    page.goto(base + f"leek/task/{later.id}/change/")
    page.click("text=Cancel this task")
    page.wait_for_selector("text=Cancel 1 task waiting to run?")
    shot(page, "cancel-confirmation")
    page.click("input[value='Yes, cancel pending tasks']")
    page.wait_for_selector("text=Cancelled 1 task.")
    assert later.status() == "cancelled"

    # Retry a failed task from the list: it succeeds the second time.
    flaky = leek.enqueue(tasks.flaky, (str(tmp_path / "runs"), 1), max_retries=0)
    wait_for(lambda: flaky.status() == "failed")
    page.goto(base + "leek/task/?status__exact=failed")
    shot(page, "failed-tasks")
    page.check(f"input[name=_selected_action][value='{flaky.id}']")
    page.select_option("select[name=action]", "retry_tasks")
    page.click("button[name=index]")
    page.click("input[value='Yes, retry failed tasks']")
    page.wait_for_selector("text=Requeued 1 task.")
    assert flaky.result(timeout=10) == 2
    page.goto(base + f"leek/task/{flaky.id}/change/")
    assert page.locator("text=RuntimeError: flaky run 1").count() >= 1
    assert re.search(r">succeeded<", page.content())

    # Read a task's captured stdout and stderr.
    chatty = leek.push_task_to_queue(tasks.chatty, "hello from the worker")
    chatty.result(timeout=10)
    page.goto(base + f"leek/task/{chatty.id}/change/")
    stdout = page.locator(".field-stdout pre").first.inner_text()
    assert stdout.strip() == "hello from the worker"
    assert page.locator(".field-stderr pre").first.inner_text().strip() == "to stderr"
    shot(page, "task-output")
