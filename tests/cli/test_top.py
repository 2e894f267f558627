"""`leek top`: one frame for scripts, the live view in a real pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyte
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

import leek
from leek.cli.probe import Probe
from leek.cli.snapshot import gather
from leek.models import BrokerNode, FailedTask, Status, Task
from tests import tasks
from tests.conftest import (
    REPO,
    BrokerFactory,
    BrokerProcess,
    broker_env,
    free_port,
    leek_cli,
    wait_for,
)

LONG = "a-queue-whose-name-goes-on-and-on-" + "x" * 60


def busy_broker(
    broker_factory: BrokerFactory,
    queue: str = "pdfs",
    message: str = "the disk is full\nsecond line",
) -> BrokerProcess:
    """A broker with one worker: one failure with `message`, a task running
    at 40% that sleeps, three tasks waiting in "default" and two in `queue`."""
    broker = broker_factory(LEEK_WORKERS="1")
    failed = leek.enqueue(tasks.fail, (message,), max_retries=0)
    wait_for(lambda: FailedTask.objects.filter(task_id=failed.id, final=True).exists())
    running = leek.enqueue(tasks.progress_then_sleep, (40, "halfway", 60))
    wait_for(lambda: Task.objects.filter(pk=running.id, progress=40).exists())
    for _ in range(3):
        leek.enqueue(tasks.noop)
    for _ in range(2):
        leek.enqueue(tasks.noop, queue=queue)
    wait_for(lambda: Task.objects.filter(status=Status.QUEUED).count() == 5)
    return broker


def section(output: str, title: str) -> list[str]:
    """The lines of the table titled `title`, its header first."""
    lines = [line.rstrip() for line in output.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    found = []
    for line in lines[start + 1 :]:
        if re.match(r"(brokers|queues|running|last failures)\b", line):
            break
        found.append(line)
    return found


def test_once_shows_the_broker_the_queues_the_running_task_and_the_failure(
    broker_factory: BrokerFactory,
) -> None:
    broker = busy_broker(broker_factory)
    done = leek_cli(broker.port, "top", "--once", COLUMNS="80")
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    assert "\x1b" not in done.stdout
    assert "brokers 1/1 answer" in done.stdout
    node = section(done.stdout, "brokers")[1]
    assert f"127.0.0.1:{broker.port}" in node
    assert node.split()[2:3] == ["ok"]
    queues = {line.split()[0]: line.split()[1:4] for line in section(done.stdout, "queues")[1:]}
    assert queues["default"] == ["3", "0", "1"]
    assert queues["pdfs"] == ["2", "0", "0"]
    (task,) = section(done.stdout, "running (1)")[1:]
    assert "progress_then_sleep" in task
    assert task.endswith("40% halfway")
    (failure,) = section(done.stdout, "last failures")[1:]
    assert "tests.tasks.fail" in failure
    assert failure.endswith("ValueError  the disk is full")


def test_no_line_of_a_frame_is_wider_than_80_columns(broker_factory: BrokerFactory) -> None:
    broker = busy_broker(broker_factory, queue=LONG, message="x" * 300)
    done = leek_cli(broker.port, "top", "--once", COLUMNS="80")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any(line.startswith("a-queue-whose-name") and "…" in line for line in lines)
    assert len(section(done.stdout, "queues")) == 3  # one line each, never wrapped


def queued(name: str, queue: str, age: float) -> Task:
    return Task.objects.create(
        name=name,
        queue=queue,
        payload=b"",
        queued_at=timezone.now() - timedelta(seconds=age),
    )


def node(name: str, host: str, port: int, heartbeat_age: float) -> BrokerNode:
    beat = timezone.now() - timedelta(seconds=heartbeat_age)
    return BrokerNode.objects.create(
        name=name,
        host=host,
        port=port,
        pid=1,
        version=leek.__version__,
        started_at=beat,
        heartbeat_at=beat,
        workers=2,
        workers_alive=2,
    )


def test_with_no_broker_it_shows_the_database_and_says_so_exiting_2(
    transactional_db: None,
) -> None:
    for _ in range(4):
        queued("mail.send", "mail", age=2 * 86400 + 1800)
    port = free_port()
    node("web1:8002", "127.0.0.1", port, heartbeat_age=1)
    node("web2:8002", "10.0.0.2", 8002, heartbeat_age=3600)
    done = leek_cli(port, "top", "--once", COLUMNS="80")
    assert done.returncode == 2
    assert "no broker answers: this is the database's view" in done.stdout
    assert f"broker 127.0.0.1:{port} unreachable: ConnectionRefusedError" in done.stdout
    brokers = [line.split()[:3] for line in section(done.stdout, "brokers")[1:]]
    assert brokers == [
        ["web1:8002", f"127.0.0.1:{port}", "no"],  # "no answer": its heartbeat is recent
        ["web2:8002", "10.0.0.2:8002", "dead"],
    ]
    (mail,) = section(done.stdout, "queues")[1:]
    assert mail.split() == ["mail", "4", "0", "0", "0.00", "2d00h"]
    stats = leek_cli(port, "stats")
    assert stats.returncode == done.returncode


def test_each_broker_has_its_row_and_one_that_died_is_named_unreachable(
    broker_factory: BrokerFactory,
) -> None:
    first, second = broker_factory(), broker_factory()
    wait_for(lambda: BrokerNode.objects.filter(port__in=(first.port, second.port)).count() == 2)
    second.kill()
    done = leek_cli(first.port, "top", "--once", LEEK_BROKERS=f"127.0.0.1:{second.port}")
    assert done.returncode == 0, done.stdout  # as `leek stats`: a broker answered, healthy
    assert "brokers 1/2 answer" in done.stdout
    assert f"broker 127.0.0.1:{second.port} unreachable" in done.stdout
    health = {line.split()[1]: line.split()[2] for line in section(done.stdout, "brokers")[1:]}
    assert health == {f"127.0.0.1:{first.port}": "ok", f"127.0.0.1:{second.port}": "no"}


def test_a_probe_keeps_its_connection_and_reconnects_to_a_broker_that_restarted(
    broker_factory: BrokerFactory,
) -> None:
    broker = broker_factory()
    probe = Probe()
    try:
        (before,) = probe.ask()
        assert before.stats is not None
        kept = probe.connections[("127.0.0.1", broker.port)]
        assert probe.ask()[0].stats is not None
        assert probe.connections[("127.0.0.1", broker.port)] is kept
        assert broker.kill(signal.SIGTERM) == 0
        broker_factory(port=broker.port)
        (after,) = probe.ask()
        assert after.stats is not None and after.reachable
        assert probe.connections[("127.0.0.1", broker.port)] is not kept
    finally:
        probe.close()


def test_a_database_that_cannot_be_reached_is_named_and_the_frame_still_drawn(
    transactional_db: None, tmp_path: Path
) -> None:
    missing = str(tmp_path / "gone" / "db.sqlite3") if connection.vendor == "sqlite" else "gone"
    done = leek_cli(free_port(), "top", "--once", LEEK_BROKER_TEST_DB=missing)
    assert done.returncode == 2
    assert "database unavailable: OperationalError" in done.stdout
    assert section(done.stdout, "queues") == ["queue  waiting  later  running  /s  oldest"]
    assert done.stderr == ""


def test_json_gives_the_snapshot_without_rich(transactional_db: None, tmp_path: Path) -> None:
    queued("mail.send", "mail", age=1)
    port = free_port()
    hidden = no_rich(tmp_path)
    done = leek_cli(port, "--json", "top", PYTHONPATH=f"{hidden}:{REPO}")
    assert done.returncode == 2, done.stderr
    import json

    snap = json.loads(done.stdout)
    assert [q["name"] for q in snap["queues"]] == ["mail"]
    assert snap["queues"][0]["paused"] is False
    assert snap["answers"][0]["reachable"] is False


def no_rich(tmp_path: Path) -> Path:
    """A directory that, first on the path, makes `import rich` fail as if it were absent."""
    hidden = tmp_path / "no-rich"
    (hidden / "rich").mkdir(parents=True)
    (hidden / "rich" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'rich'\", name='rich')\n"
    )
    return hidden


def test_without_rich_it_says_how_to_install_it_in_one_line_and_exits_2(
    transactional_db: None, tmp_path: Path
) -> None:
    hidden = no_rich(tmp_path)
    done = leek_cli(free_port(), "top", "--once", PYTHONPATH=f"{hidden}:{REPO}")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "error: leek top needs rich: pip install 'leek[top]'\n"


@pytest.mark.parametrize("interval", ["0", "-1", "soon", "inf"])
def test_an_interval_that_is_not_a_positive_number_is_refused(
    transactional_db: None, interval: str
) -> None:
    done = leek_cli(free_port(), "top", "--interval", interval)
    assert done.returncode == 2
    assert "is not a number of seconds greater than zero" in done.stderr
    assert "Traceback" not in done.stderr


def test_gathering_a_snapshot_only_reads(transactional_db: None) -> None:
    queued("mail.send", "mail", age=5)
    probe = Probe()
    connection.ensure_connection()  # its set-up statements are not the snapshot's
    with CaptureQueriesContext(connection) as queries:
        snap = gather(probe)
    probe.close()
    assert [q.name for q in snap.queues] == ["mail"]
    statements = [q["sql"].lstrip().split()[0].upper() for q in queries.captured_queries]
    assert statements and set(statements) == {"SELECT"}


def test_piped_it_prints_plain_frames_one_after_another_until_sigterm(
    transactional_db: None,
) -> None:
    queued("mail.send", "mail", age=1)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "leek.cli", "top", "--interval", "0.2"],
        cwd=REPO,
        env={**broker_env(port), "COLUMNS": "80"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    headlines = 0
    while headlines < 2:
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        headlines += line.startswith(b"leek top ")
        assert b"\x1b" not in line
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, err) == (0, b"")


# -- the live view, in a pseudo-terminal -------------------------------------

#: Runs `leek` as a shell runs a job in the foreground: the session leader of
#: the pseudo-terminal on its stdin, so that Ctrl-C typed there reaches it as
#: SIGINT, and with SIGINT's default action, which a process started in the
#: background by a shell without job control (a CI runner's script) inherits
#: as ignored, and Python then leaves ignored.
LAUNCH = (
    "import fcntl, os, signal, sys, termios; os.setsid(); "
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0); signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, '-m', 'leek.cli', *sys.argv[1:]])"
)


class Terminal:
    """`leek top` on a real 80x24 pseudo-terminal, its output fed to pyte."""

    def __init__(self, port: int) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.mode = termios.tcgetattr(self.slave)
        env = {k: v for k, v in broker_env(port).items() if k not in ("COLUMNS", "LINES")}
        env["TERM"] = "xterm-256color"
        env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT prints every thread's stack (`type`)
        self.screen = pyte.Screen(80, 24)
        self.stream = pyte.ByteStream(self.screen)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, "top", "--interval", "0.3"],
            cwd=REPO,
            env=env,
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
        )
        self.frames = 0
        self.raw = bytearray()  # all it wrote, for a failure's message

    def read(self, seconds: float) -> None:
        """Feed pyte what the view writes for `seconds`."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                data = os.read(self.master, 65536)
                self.raw += data
                self.frames += data.count(b"\x1b[H")
                self.stream.feed(data)

    def until(self, predicate: object, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not callable(predicate) or not predicate():
            assert time.monotonic() < deadline, "\n".join(self.screen.display)
            self.read(0.1)

    def type(self, keys: bytes) -> int:
        """Type `keys`; the exit status of `leek top`, once it ends."""
        os.write(self.master, keys)
        drawn = self.frames
        deadline = time.monotonic() + 30
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.read(0.1)
        if self.proc.poll() is None:  # hung: its signal masks, then its own stacks
            masks = _signal_masks(self.proc.pid)
            drawn = self.frames - drawn
            self.proc.send_signal(signal.SIGABRT)
            self.read(2.0)
            tail = self.raw[-6000:].decode(errors="replace")
            raise AssertionError(
                f"leek top did not end after {keys!r} ({masks}; {drawn} frames since):\n{tail}"
            )
        return self.proc.wait(5)

    def lflag(self) -> int:
        return int(termios.tcgetattr(self.slave)[3])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


def _signal_masks(pid: int) -> str:
    """Whether SIGINT is pending, blocked, ignored or caught in process `pid`,
    from Linux's /proc: what a view that a Ctrl-C did not end says about it."""
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.split(":\t", 1) for line in status if ":\t" in line)
    except OSError as exc:
        return f"no status: {exc}"
    bit = 1 << (signal.SIGINT - 1)
    return (
        ", ".join(
            f"SIGINT {word} {bool(int(fields[key], 16) & bit)}"
            for word, key in (
                ("pending", "SigPnd"),
                ("pending to the process", "ShdPnd"),
                ("blocked", "SigBlk"),
                ("ignored", "SigIgn"),
                ("caught", "SigCgt"),
            )
        )
        + f", state {fields['State'].strip()}"
    )


def live(broker: BrokerProcess) -> Terminal:
    """The view on a terminal, read until it drew the queues twice."""
    leek.enqueue(tasks.noop, queue="mail", delay=3600)
    term = Terminal(broker.port)
    term.until(lambda: term.frames >= 2 and "queues" in "\n".join(term.screen.display))
    return term


def test_live_view_draws_the_queue_table_and_q_quits_restoring_the_terminal(
    broker: BrokerProcess,
) -> None:
    term = live(broker)
    try:
        rows = [line.rstrip() for line in term.screen.display]
        assert rows[0].startswith("leek top") and rows[0].endswith("q quits")
        header = rows.index(next(r for r in rows if r.startswith("queue ")))
        assert rows[header - 1].startswith("queues")
        assert rows[header + 1].split()[:3] == ["mail", "0", "1"]
        assert term.lflag() & termios.ICANON == 0  # cbreak while it runs
        assert term.type(b"q") == 0
        assert term.lflag() == term.mode[3]
    finally:
        term.close()


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_ends_the_live_view_with_status_0_and_restores_the_terminal(
    broker: BrokerProcess, how: str
) -> None:
    term = live(broker)
    try:
        if how == "sigterm":
            term.proc.send_signal(signal.SIGTERM)
        assert term.type(b"\x03" if how == "ctrl-c" else b"") == 0
        assert term.lflag() == term.mode[3]
        assert "Traceback" not in "\n".join(term.screen.display)
    finally:
        term.close()


def test_a_paused_queue_is_shown_paused_even_with_nothing_waiting(transactional_db: None) -> None:
    from leek import queues

    queued("mail.send", "mail", age=5)
    queues.pause("mail", by="ops")
    queues.pause("reports", by="ops")
    done = leek_cli(free_port(), "top", "--once", COLUMNS="80")
    rows = [line.split()[:2] for line in section(done.stdout, "queues")[1:]]
    assert rows == [["mail", "(paused)"], ["reports", "(paused)"]]


def test_a_broker_that_does_not_answer_shows_the_busy_workers_its_row_counts_once(
    transactional_db: None, leek_settings: Any
) -> None:
    # A broker serving two queues on its default lane lists that lane under each.
    port = free_port()
    leek_settings(PORT=port)
    lane = {"pool": "threads", "workers": 2, "alive": 2, "busy": 1, "stuck": 0}
    row = node("web1:8002", "127.0.0.1", port, heartbeat_age=1)
    BrokerNode.objects.filter(pk=row.pk).update(queues={"mail": lane, "pdfs": lane}, workers_busy=1)
    probe = Probe()
    try:
        (broker,) = gather(probe).brokers
    finally:
        probe.close()
    assert (broker.health, broker.busy, broker.workers) == ("no answer", 1, 2)
