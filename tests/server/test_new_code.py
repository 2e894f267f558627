"""A deploy: clients on a newer CODE_VERSION reach a broker of the old one.

The broker's settings read CODE_VERSION from a file the test changes, as a
project reads a REVISION file its deploy writes: a reload reads it anew."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import leek
from tests import tasks
from tests.conftest import REPO, BrokerProcess, leek_cli, wait_for
from tests.server.test_reexec import Pusher, ran_once

#: A settings module that reads the code version from the file named by CODE_VERSION_FILE.
SETTINGS = """
import os
from pathlib import Path

from tests.settings import *  # noqa: F403
from tests.settings import LEEK

LEEK = {**LEEK, "CODE_VERSION": Path(os.environ["CODE_VERSION_FILE"]).read_text().strip()}
"""


def deployed(broker_factory: Any, tmp_path: Path, version: str, **env: str) -> BrokerProcess:
    """A broker whose code version is read from tmp_path/REVISION at its start."""
    code = tmp_path / "code"
    code.mkdir()
    name = f"deploy_settings_{uuid.uuid4().hex[:8]}"
    (code / f"{name}.py").write_text(SETTINGS)
    (tmp_path / "REVISION").write_text(version)
    broker: BrokerProcess = broker_factory(
        DJANGO_SETTINGS_MODULE=name,
        PYTHONPATH=os.pathsep.join([str(REPO), str(code)]),
        CODE_VERSION_FILE=str(tmp_path / "REVISION"),
        **env,
    )
    return broker


def stats() -> dict[str, Any]:
    ok, value = leek.stats()
    assert ok, value
    return dict(value)


def test_a_broker_reloads_onto_the_new_code_and_loses_no_task(
    broker_factory: Any, leek_settings: Any, tmp_path: Path
) -> None:
    broker = deployed(broker_factory, tmp_path, "A", LEEK_RELOAD_ON_NEW_CODE="true")
    leek_settings(CODE_VERSION="A")
    marks = tmp_path / "marks.txt"
    pusher = Pusher(marks).start()
    wait_for(lambda: pusher.pushed() >= 20)
    assert stats()["reloads"]["count"] == 0
    (tmp_path / "REVISION").write_text("B")  # the deploy
    leek_settings(CODE_VERSION="B")  # the web processes run the new code
    wait_for(lambda: stats()["code_version"] == "B", timeout=60, interval=0.1)
    count = pusher.pushed()
    wait_for(lambda: pusher.pushed() >= count + 20)
    pusher.stop()
    assert not pusher.errors, pusher.errors
    for handle in pusher.handles:
        handle.result(timeout=60)
    ran_once(marks, pusher.marks)
    after = stats()
    assert after["reloads"]["count"] == 1 and after["code_drift"] == {}
    assert broker.alive and after["pid"] == broker.proc.pid  # type: ignore[union-attr]
    assert "reloading reason=code version B seen from a client" in broker.output()


def test_new_code_that_still_reports_the_old_version_is_reloaded_for_once(
    broker_factory: Any, leek_settings: Any, tmp_path: Path
) -> None:
    broker = deployed(broker_factory, tmp_path, "A", LEEK_RELOAD_ON_NEW_CODE="true")
    leek_settings(CODE_VERSION="B")  # the REVISION file stays "A"
    leek.push_task_to_queue(tasks.add, 1, 1).result(timeout=30)
    wait_for(lambda: stats()["reloads"]["count"] == 1, timeout=60, interval=0.1)
    handles = [leek.push_task_to_queue(tasks.add, i, 1) for i in range(20)]
    assert [h.result(timeout=30) for h in handles] == [i + 1 for i in range(20)]
    time.sleep(1.0)  # time enough to begin a second reload, were one asked for
    after = stats()
    assert after["reloads"]["count"] == 1 and after["code_version"] == "A"
    # The 20 pushes; not the first one, which the last life answered before
    # it went (a stop answers the pushes it has read), so it was not sent again.
    assert after["code_drift"] == {"B": 20}
    assert "but the new code reports A: no reload for B again" in broker.output()


def test_without_reload_on_new_code_the_difference_shows_in_leek_stats(
    broker_factory: Any, leek_settings: Any, tmp_path: Path
) -> None:
    broker = deployed(broker_factory, tmp_path, "A")
    leek_settings(CODE_VERSION="B")
    handles = [leek.push_task_to_queue(tasks.add, i, i) for i in range(3)]
    assert [h.result(timeout=30) for h in handles] == [0, 2, 4]
    done = leek_cli(broker.port, "--json", "stats")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["code_version"] == "A" and shown["code_drift"] == {"B": 3}
    assert shown["reloads"] == {"count": 0, "under_way": "", "on_new_code": False}
    text = leek_cli(broker.port, "stats").stdout
    assert "code_drift: {'B': 3}" in text
