"""Graceful reload: the broker drains, then executes itself again on the same socket.

A reload is asked for by SIGHUP, by the ``reload`` verb (`leek reload`), or,
with RELOAD_ON_NEW_CODE, by a push from a client of a code version this
broker has not reloaded for. The broker then (broker.py, `Broker._stop`):

    1. starts no more tasks, and gives the running ones SHUTDOWN_GRACE
       seconds to finish, while it still accepts and commits pushes: they
       wait in the database, owned by its node;
    2. stops accepting, closes the client connections (a client reconnects
       and sends again: a push is idempotent), and commits what waits,
       outcomes included, with a last heartbeat that does not mark it stopped,
       so no other broker adopts its tasks meanwhile;
    3. executes the same command line (`os.execv`), in the same process: the
       same pid, node name and port, the new code.

The listening socket stays open throughout: its descriptor is handed to the
new program in LISTEN_FD_ENV, so connections made meanwhile wait in the
kernel's backlog instead of being refused, and are served once the new
program listens. Their first frame is stamped before the new life started, so
the broker refuses it as stale and the client stamps it anew and sends it once
more (docs/protocol.md): a frame captured before the reload can still never be
replayed to the new life. The new life recovers the tasks owned by its node,
as any start does.

STATE_ENV carries, as JSON, what the next life must know: how many reloads
came before, and the code versions not to reload for again, those this broker
ran before and those it reloaded for. A reload for a version the new code does
not report (CODE_VERSION still the old one, say, because it comes from an
environment that the exec keeps) is logged once, and is not asked again for
that version: there is no reload loop.

SIGHUP is ignored from the exec until the new life installs its handler, so a
second SIGHUP in between does not kill it. SIGTERM during the drain turns the
reload into a plain stop.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import threading
from typing import Any

from .process import end_forkserver

logger = logging.getLogger(__name__)

#: The environment variable naming the listening socket's descriptor across the exec.
LISTEN_FD_ENV = "LEEK_LISTEN_FD"
#: The environment variable carrying the reload's state across the exec (JSON).
STATE_ENV = "LEEK_RELOAD_STATE"


class Reloads:
    """Whether a reload is asked for and why; the versions not to reload for."""

    def __init__(self, code_version: str, on_new_code: bool) -> None:
        state = _state()
        self.code_version = code_version
        self.on_new_code = on_new_code
        self.count = int(state.get("reloads", 0))  # reloads before this life
        self.versions: set[str] = {str(v) for v in state.get("versions", [])}
        self.target = str(state.get("target", ""))  # the version the last reload was for
        if code_version:
            self.versions.add(code_version)
        self.reason = ""  # why a reload is under way ("": none)
        self._lock = threading.Lock()

    def told(self) -> None:
        """Log how the last reload went, once this life serves."""
        if not self.count:
            return
        if self.target and self.target != self.code_version:
            logger.warning(
                "reloaded for code version %s, but the new code reports %s: no reload for %s again",
                self.target,
                self.code_version or "none",
                self.target,
                extra={"action": "reload_version_unchanged"},
            )
        else:
            logger.info(
                "broker reloaded reloads=%s code_version=%s",
                self.count,
                self.code_version or "-",
                extra={"action": "broker_reloaded"},
            )

    def request(self, reason: str, version: str = "") -> bool:
        """Ask for a reload; False when one is already under way."""
        with self._lock:
            if self.reason:
                return False
            self.reason = reason
            if version:
                self.target = version
                self.versions.add(version)
        logger.info(
            "reloading reason=%s: running tasks get their grace, then the broker "
            "executes itself again",
            reason,
            extra={"action": "broker_reloading"},
        )
        return True

    def cancel(self) -> None:
        """Stop instead of reloading (SIGTERM during the drain)."""
        self.reason = ""

    def wants(self, version: str) -> bool:
        """Whether a push from a client of `version` asks for a reload: with
        RELOAD_ON_NEW_CODE, a version this broker has neither run nor reloaded for."""
        return self.on_new_code and bool(self.code_version) and version not in self.versions

    def execute(self, listener: socket.socket) -> None:
        """Execute this broker's command line again, handing it `listener`
        and the reload's state; returns only if the exec failed (logged)."""
        if not self.reason:
            return
        state = {
            "reloads": self.count + 1,
            "versions": sorted(self.versions),
            "target": self.target if self.reason.startswith("code version") else "",
        }
        listener.set_inheritable(True)
        os.environ[LISTEN_FD_ENV] = str(listener.fileno())
        os.environ[STATE_ENV] = json.dumps(state)
        argv = [sys.executable, *sys.orig_argv[1:]]
        logger.info("executing again argv=%s", " ".join(argv), extra={"action": "broker_exec"})
        logging.shutdown()  # flush every handler: the exec drops their buffers
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the new life's handler
        end_forkserver(for_exec=True)
        try:
            os.execv(sys.executable, argv)  # noqa: S606 (this broker's own command line)
        except OSError:
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            logger.exception(
                "reload failed: cannot execute the broker again",
                extra={"action": "reload_failed"},
            )


def inherited(host: str, port: int) -> socket.socket | None:
    """The listening socket handed over by the last life, if it listens on
    `host`:`port` (a host name is taken on trust); None when there is none.
    A socket that does not fit is closed. The variables are removed, and the
    socket is not inherited any further (worker processes never get it)."""
    fd = os.environ.pop(LISTEN_FD_ENV, "")
    if not fd.isdigit():
        return None
    try:
        sock = socket.socket(fileno=int(fd))
    except OSError:
        return None
    sock.set_inheritable(False)
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        bound_host, bound_port = sock.getsockname()[:2]
    except OSError:
        listening, bound_host, bound_port = 0, "", 0
    if not listening or (port and port != bound_port) or not _same_host(host, bound_host):
        logger.warning(
            "the listening socket of the last life does not fit address=%s:%s; binding anew",
            host,
            port,
            extra={"action": "listener_mismatch"},
        )
        sock.close()
        return None
    return sock


def _same_host(host: str, bound: str) -> bool:
    """Whether a socket bound to `bound` serves the configured `host`."""
    wanted = host.strip().strip("[]")
    if wanted in ("", "0.0.0.0", "::"):  # noqa: S104
        return bound in ("0.0.0.0", "::")  # noqa: S104
    try:
        return ipaddress.ip_address(wanted) == ipaddress.ip_address(bound)
    except ValueError:  # a host name
        return True


def _state() -> dict[str, Any]:
    """The state the last life handed over (read once: the variable is removed)."""
    text = os.environ.pop(STATE_ENV, "")
    try:
        state = json.loads(text) if text else {}
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}
