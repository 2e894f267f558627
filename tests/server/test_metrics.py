"""The broker's Prometheus page: exact counts over HTTP, gauges, and the setting's checks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import leek
from leek.checks import check_metrics
from leek.client import connection as client
from leek.exceptions import BrokerError
from tests import tasks
from tests.conftest import BOTH_POOLS, REPO, free_port, task_message, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample of the page, parsed as Prometheus parses it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:  # noqa: S310
        text = page.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on, from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@BOTH_POOLS
def test_the_page_counts_a_known_mix_of_outcomes_exactly(
    broker_factory: Any, tmp_path: Path, pool: str
) -> None:
    port = broker_factory(LEEK_POOL=pool, metrics=True, LEEK_RETRY_BACKOFF="0.05").metrics_port
    succeed = [leek.push_task_to_queue(tasks.add, i, 1) for i in range(5)]
    fail = [leek.enqueue(tasks.fail, ("no",), max_retries=0) for _ in range(3)]
    retried = [
        leek.enqueue(tasks.flaky, (str(tmp_path / f"runs-{i}"), 1), max_retries=2) for i in range(2)
    ]
    late = leek.enqueue(tasks.spin, (30,), timeout=0.5, max_retries=0, queue="slow")
    cancelled = leek.enqueue(tasks.add, (1, 2), delay=3600)
    assert cancelled.cancel()
    for handle in succeed + retried:
        handle.result(timeout=30)
    for handle in [*fail, late]:
        with pytest.raises(leek.TaskFailed):
            handle.result(timeout=30)
    with pytest.raises(BrokerError):
        client.call("enqueue", {**task_message(tasks.add, 1, 2), "priority": "high"}, push=True)
    with socket.create_connection(("127.0.0.1", broker_factory.processes[-1].port)) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not a frame: rejected, connection closed
        sock.recv(4096)

    expected = {
        ("leek_task_attempts_total", "default", "succeeded"): 7,
        ("leek_task_attempts_total", "default", "retried"): 2,
        ("leek_task_attempts_total", "default", "failed"): 3,
        ("leek_task_attempts_total", "slow", "failed"): 1,
    }

    def settled() -> Samples | None:
        samples = scrape(port)
        found = {key: value(samples, key[0], queue=key[1], outcome=key[2]) for key in expected}
        return samples if found == expected else None

    samples = wait_for(settled)
    assert value(samples, "leek_pushes_accepted_total") == 12
    assert value(samples, "leek_tasks_accepted_total", queue="default") == 11
    assert value(samples, "leek_tasks_accepted_total", queue="slow") == 1
    assert value(samples, "leek_pushes_refused_total", reason="invalid") == 1
    assert value(samples, "leek_pushes_refused_total", reason="database") == 0
    assert value(samples, "leek_tasks_timed_out_total", queue="slow") == 1
    assert value(samples, "leek_tasks_timed_out_total", queue="default") is None
    assert value(samples, "leek_tasks_cancelled_total", queue="default") == 1
    assert value(samples, "leek_frames_rejected_total", reason="malformed") == 1
    assert value(samples, "leek_frames_rejected_total", reason="signature") == 0
    assert value(samples, "leek_task_run_seconds_count", queue="default") == 12
    assert value(samples, "leek_task_run_seconds_count", queue="slow") == 1
    assert value(samples, "leek_task_wait_seconds_count", queue="default") == 10  # first attempts
    run = value(samples, "leek_task_run_seconds_bucket", queue="slow", le="0.25")
    assert run == 0  # the timed-out attempt ran past its half-second limit
    commits = value(samples, "leek_commits_total", writer="leek-writer")
    assert commits is not None and commits >= 1
    batches = value(samples, "leek_commit_batch_size_count", writer="leek-writer")
    assert batches is not None and batches >= 1
    assert value(samples, "leek_workers_configured", lane="*", pool=pool) == 2
    assert value(samples, "leek_broker_healthy") == 1


def test_an_attempt_whose_worker_process_dies_counts_as_lost(broker_factory: Any) -> None:
    port = broker_factory(LEEK_POOL="processes", metrics=True).metrics_port
    with pytest.raises(leek.TaskFailed, match="WorkerLost"):
        leek.enqueue(tasks.exit_now, (3,), max_retries=0).result(timeout=30)
    samples = wait_for(
        lambda: (
            (s := scrape(port))
            and value(s, "leek_task_attempts_total", queue="default", outcome="failed") == 1
            and s
        )
    )
    assert value(samples, "leek_tasks_lost_total", queue="default", reason="worker_died") == 1
    assert value(samples, "leek_tasks_timed_out_total", queue="default") is None


def test_the_gauges_show_waiting_tasks_workers_connections_and_heartbeats(
    broker_factory: Any,
) -> None:
    broker = broker_factory(LEEK_WORKERS="0", metrics=True)
    port = broker.metrics_port
    for _ in range(3):
        leek.enqueue(tasks.add, (1, 2), queue="reports")
    leek.enqueue(tasks.add, (1, 2), queue="mail", delay=3600)

    samples = wait_for(
        lambda: (
            (s := scrape(port))
            and value(
                s,
                "leek_broker_heartbeat_age_seconds",
                node=f"{socket.gethostname()}:{broker.port}",
                stopped="false",
            )
            is not None
            and s
        )
    )
    assert value(samples, "leek_tasks_waiting", queue="reports") == 3
    assert value(samples, "leek_tasks_delayed", queue="mail") == 1
    oldest = value(samples, "leek_oldest_waiting_seconds", queue="reports")
    assert oldest is not None and oldest >= 0
    assert value(samples, "leek_oldest_waiting_seconds", queue="mail") is None
    assert value(samples, "leek_tasks_running") == 0
    assert value(samples, "leek_workers_alive", lane="*", pool="threads") == 0
    assert value(samples, "leek_connections_open", state="authenticated") == 1  # this test's
    assert value(samples, "leek_payloads_in_memory") == 3


def test_a_broker_without_metrics_listens_on_its_port_only(broker_factory: Any) -> None:
    broker = broker_factory()
    assert broker.proc is not None
    assert listening_ports(broker.proc.pid) == {broker.port}


def test_a_broker_with_metrics_listens_on_both_ports(broker_factory: Any) -> None:
    broker = broker_factory(metrics=True)
    assert broker.proc is not None
    assert listening_ports(broker.proc.pid) == {broker.port, broker.metrics_port}


def test_a_metrics_address_in_use_stops_the_start_with_a_clear_error(
    broker_factory: Any,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = broker_factory(wait=False, LEEK_METRICS=f"127.0.0.1:{port}")
        assert broker.proc is not None and broker.proc.wait(30) == 1
    assert f"cannot listen on 127.0.0.1:{port} (LEEK['METRICS'])" in broker.output()
    assert "Traceback" not in broker.output()


#: Runs `code` in a fresh interpreter that cannot import prometheus_client.
WITHOUT_LIBRARY = "import sys; sys.modules['prometheus_client'] = None\n"


def run_without_library(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LEEK_")}
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_LIBRARY + code],
        cwd=REPO,
        env={**base, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_check_reports_metrics_set_without_prometheus_client() -> None:
    done = run_without_library(
        "import django; django.setup()\n"
        "from django.core.checks import run_checks\n"
        "print(' '.join(sorted(m.id for m in run_checks())))\n",
        LEEK_METRICS="127.0.0.1:9808",
    )
    assert done.returncode == 0, done.stderr
    assert "leek.E013" in done.stdout.split()


def test_the_check_is_silent_without_prometheus_client_when_metrics_is_off() -> None:
    done = run_without_library(
        "import django; django.setup()\n"
        "from django.core.checks import run_checks\n"
        "print(' '.join(sorted(m.id for m in run_checks())))\n",
    )
    assert done.returncode == 0, done.stderr
    assert "leek.E013" not in done.stdout.split()


@pytest.mark.parametrize("skip_checks", [False, True])
def test_leek_start_refuses_metrics_without_prometheus_client(skip_checks: bool) -> None:
    args = ["start", "--skip-checks"] if skip_checks else ["start"]
    done = run_without_library(
        f"from leek.cli import main; sys.exit(main({args!r}))\n",
        LEEK_METRICS="127.0.0.1:9808",
        LEEK_PORT=str(free_port()),
    )
    assert done.returncode == 1
    if skip_checks:  # the start's own refusal, in one line
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "prometheus_client" in lines[0] and "leek[metrics]" in lines[0]
    else:  # the system checks, first
        assert "(leek.E013) LEEK['METRICS']" in done.stderr
        assert "prometheus_client package is not installed" in done.stderr


@pytest.mark.parametrize(
    ("address", "ids"),
    [
        ("", []),
        ("127.0.0.1:9808", []),
        ("[::1]:9808", []),
        ("localhost:9808", []),
        ("0.0.0.0:9808", ["leek.W013"]),
        ("10.0.0.5:9808", ["leek.W013"]),
        ("9808", ["leek.E013"]),
        ("127.0.0.1:99999", ["leek.E013"]),
        ("127.0.0.1:", ["leek.E013"]),
    ],
)
def test_the_check_warns_of_a_page_beyond_loopback_and_refuses_a_bad_address(
    leek_settings: Any, address: str, ids: list[str]
) -> None:
    leek_settings(METRICS=address)
    assert [m.id for m in check_metrics()] == ids


def test_two_brokers_in_one_process_keep_their_metrics_apart(
    transactional_db: None, leek_settings: Any
) -> None:
    from leek.server.broker import Broker

    first_port = free_port()
    second_port = free_port(besides=first_port)
    leek_settings(METRICS=f"127.0.0.1:{first_port}")
    first = Broker(port=0, workers=0)
    leek_settings(METRICS=f"127.0.0.1:{second_port}")
    second = Broker(port=0, workers=0)
    try:
        first.metrics.cancelled("default")
        first.metrics.cancelled("default")
        second.metrics.cancelled("default")
        one, two = scrape(first_port), scrape(second_port)
    finally:
        for broker in (first, second):
            broker.metrics.stop()
            broker.server.server_close()
    assert value(one, "leek_tasks_cancelled_total", queue="default") == 2
    assert value(two, "leek_tasks_cancelled_total", queue="default") == 1
    assert (
        value(one, "leek_broker_info", node=first.node, version=leek.__version__, code_version="")
        == 1
    )
    assert (
        value(two, "leek_broker_info", node=second.node, version=leek.__version__, code_version="")
        == 1
    )
