"""Fixtures: real broker processes on real sockets and a real database."""

from __future__ import annotations

import atexit
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

REPO = Path(__file__).resolve().parent.parent

#: The variables that set up the test run itself, kept: the rest of LEEK_* would
#: change every broker the tests start. LEEK_TEST_SHOW_LOGS=1 writes the log of
#: each test's brokers to its stderr at its end (shown with -s or -rA).
TEST_RUN_VARIABLES = ("LEEK_TEST_POSTGRES_URL", "LEEK_TEST_SHOW_LOGS")
for _name in list(os.environ):
    if _name.startswith("LEEK_") and _name not in TEST_RUN_VARIABLES:
        del os.environ[_name]

# Bytecode caches on, here and in every broker, worker process and command the
# tests start: where the environment turns them off (PYTHONDONTWRITEBYTECODE,
# which some hosts and container images set), each of those hundreds of
# processes compiles leek's modules again, about 0.1 s of CPU a start.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

# The temporary files of the brokers the tests start, removed when the tests
# end: a broker killed with SIGKILL (as every one is at teardown) leaves its
# forkserver's socket in a directory of its own there.
BROKER_TMP = tempfile.mkdtemp(prefix="leek-brokers-")
atexit.register(shutil.rmtree, BROKER_TMP, True)


#: The lowest port the tests' brokers listen on (`free_port`).
LISTEN_LOW = 20000
_ports = random.SystemRandom()  # apart from `random`, which a test may seed


def free_port(besides: int = 0) -> int:
    """A port nothing listens on, below the kernel's range of ephemeral ports
    where there is room: an outgoing connection of any process may take a
    port of that range the moment its broker dies, and a test that restarts
    a broker on its port (after a SIGKILL, say) would find it taken. Never
    `besides`, a port chosen for another use."""
    low = ephemeral_low()
    while True:
        with socket.socket() as sock:
            if low - LISTEN_LOW < 1000:  # no room below it: the kernel's pick
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            else:
                port = _ports.randrange(LISTEN_LOW, low)
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:  # another test's broker holds it
                    continue
        if port != besides:
            return port


def ephemeral_low() -> int:
    """The first port of the kernel's range of ephemeral ports (Linux's
    default where it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class BrokerProcess:
    """A `leek start` subprocess on its own port, logging to a file."""

    def __init__(
        self, port: int, env: dict[str, str], log: Path, args: tuple[str, ...] = ()
    ) -> None:
        self.port = port
        self.env = env
        self.log = log
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def metrics_port(self) -> int:
        """The port of its metrics page (LEEK_METRICS)."""
        return int(self.env["LEEK_METRICS"].rsplit(":", 1)[1])

    def start(self, wait: bool = True) -> BrokerProcess:
        handle = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "leek.cli", "start", *self.args],
            cwd=REPO,
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        handle.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until this broker answers a ping over the protocol (no fixed sleep).

        Another test's broker may have taken the port between free_port() and
        this one's start: it answers pings too, while this one fails to listen
        and exits (PortTaken, which the factory meets with another port)."""
        from leek.client import connection as client

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                output = self.output()
                taken = "Address already in use" in output
                error = PortTaken if taken else RuntimeError
                raise error(f"broker exited with {self.proc.returncode}:\n{output}")
            try:
                client.call("ping", {})
            except Exception:
                time.sleep(0.05)
                continue
            if self._answers():
                return
            time.sleep(0.05)
        raise RuntimeError(f"broker did not answer within {timeout} s:\n{self.output()}")

    def _answers(self) -> bool:
        """Whether the broker on the port is this process or one it started
        (`leek start --reload` runs the broker in a child); True when its
        `stats` cannot say (read from a database that is away)."""
        from leek.client import connection as client

        assert self.proc is not None
        try:
            pid = int(client.call("stats", {})["pid"])
        except Exception:
            return True
        return self.proc.pid in _lineage(pid)

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired as exc:
            self.proc.kill()
            self.proc.wait()
            up = f"the broker was still up 30 s after {sig!r}:\n{self.output()}"
            raise AssertionError(up) from exc

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class PortTaken(RuntimeError):
    """A broker could not listen: another process holds its port."""


def gone(pid: int) -> bool:
    """Whether process `pid` has ended and been reaped (a zombie is not gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def proc_stat(pid: int) -> list[str]:
    """The fields of Linux's /proc/<pid>/stat after the command's name: its
    state, its parent's pid, ... (OSError when the process is gone)."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def _lineage(pid: int) -> list[int]:
    """`pid` and its ancestors."""
    found: list[int] = []
    while pid > 1 and len(found) < 8:
        found.append(pid)
        try:
            pid = int(proc_stat(pid)[1])
        except OSError:
            break
    return found


def broker_env(port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEEK_")}
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        PYTHONPATH=str(REPO),
        LEEK_BROKER_TEST_DB=str(connection.settings_dict["NAME"]),
        LEEK_PORT=str(port),
        TMPDIR=BROKER_TMP,
        LEEK_WORKERS="2",
        LEEK_SWEEP_INTERVAL="0.2",
        LEEK_HEARTBEAT_INTERVAL="0.5",
        LEEK_RETRY_BACKOFF="0.1",
        LEEK_SHUTDOWN_GRACE="5",
        LEEK_SHUTDOWN_TIMEOUT="20",  # a stop that hangs logs its threads' stacks in time
    )
    env.update(extra or {})
    return env


def leek_cli(port: int, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the `leek` command against the broker on `port`, as a shell user would."""
    return subprocess.run(
        [sys.executable, "-m", "leek.cli", *args],
        cwd=REPO,
        env={**broker_env(port), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def task_message(fn: Callable[..., Any], *args: Any, max_retries: int | None = None) -> Any:
    """The enqueue message a client would send for fn(*args)."""
    from leek.client.api import message

    return message(fn, args, max_retries=max_retries)


def task_batch(*calls: tuple[Callable[..., Any], tuple[Any, ...]], **options: Any) -> Any:
    """The ids and the enqueue_batch data a client would send for `calls`."""
    from leek.client.api import batch

    ids, data, _ = batch(calls, **options)
    return ids, data


@pytest.fixture
def leek_settings(settings: Any) -> Callable[..., None]:
    """Set LEEK keys for the test process (the client side)."""

    def apply(**values: Any) -> None:
        settings.LEEK = {**getattr(settings, "LEEK", {}), **values}

    return apply


#: Ports a broker_factory broker is started on before its start fails.
PORT_TRIES = 3


class BrokerFactory:
    """Starts real brokers; the test's client talks to the last one started."""

    def __init__(self, tmp_path: Path, leek_settings: Callable[..., None]) -> None:
        self.tmp_path = tmp_path
        self.leek_settings = leek_settings
        self.processes: list[BrokerProcess] = []

    def __call__(
        self,
        wait: bool = True,
        port: int | None = None,
        args: tuple[str, ...] = (),
        metrics: bool = False,
        **env: str,
    ) -> BrokerProcess:
        """A broker on `port`; `args` follow `leek start` on its command line.
        Without a `port`, a free one, and another if a process takes it first.
        With `metrics`, its metrics page on a free port of its own, chosen
        again with the broker's (BrokerProcess.metrics_port)."""
        from leek.client import connection as client

        env = {"LEEK_STATE_DIR": str(self.tmp_path / "state"), **env}
        tries = 0
        while True:
            chosen = port or free_port()
            if metrics:
                env["LEEK_METRICS"] = f"127.0.0.1:{free_port(besides=chosen)}"
            self.leek_settings(PORT=chosen)
            log = self.tmp_path / f"broker-{chosen}.log"
            process = BrokerProcess(chosen, broker_env(chosen, env), log, args)
            self.processes.append(process)
            try:
                return process.start(wait=wait)
            except PortTaken:
                tries += 1
                if port or tries == PORT_TRIES:
                    raise
                client.close()  # it may be connected to the process that took the port

    def running(self) -> list[BrokerProcess]:
        return [p for p in self.processes if p.alive]


@pytest.fixture
def broker_factory(
    transactional_db: None, tmp_path: Path, leek_settings: Callable[..., None]
) -> Iterator[BrokerFactory]:
    """Start real brokers; every one is killed at teardown."""
    factory = BrokerFactory(tmp_path, leek_settings)
    yield factory
    from leek.client import connection as client

    client.close()
    for process in factory.processes:
        process.kill()
    if os.environ.get("LEEK_TEST_SHOW_LOGS"):
        for process in factory.processes:
            sys.stderr.write(process.output())


#: Runs a test once with each worker pool: for behaviour both pools share.
BOTH_POOLS = pytest.mark.parametrize("pool", ["threads", "processes"])


@pytest.fixture
def pool() -> str:
    """The worker pool of `broker`: threads, unless the test is marked BOTH_POOLS."""
    return "threads"


@pytest.fixture
def broker(broker_factory: BrokerFactory, pool: str) -> BrokerProcess:
    """One running broker, of the test's worker pool."""
    return broker_factory(LEEK_POOL=pool)


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 20.0,
    interval: float = 0.02,
    *,
    equals: Any = None,
) -> Any:
    """Poll until `predicate()` is truthy, or with `equals`, until it gives
    that value; its value, or AssertionError with the value it last gave."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if (value == equals) if equals is not None else value:
            return value
        if time.monotonic() > deadline:
            wanted = f"{equals!r}" if equals is not None else "true"
            raise AssertionError(
                f"not {wanted} within {timeout} s: {predicate}; it last gave {value!r:.300}"
            )
        time.sleep(interval)
