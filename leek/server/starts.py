"""The task each worker is running, in a file that outlives the broker's process.

A task's running mark rides in the next batch of writes (Store.mark_running),
so a task that kills the broker's process as soon as it starts (a crashing C
extension, ``os._exit``, the OOM killer) can leave no trace in the database,
and would run again, uncounted, at every restart. So each worker also writes
the task it starts, with the attempt's number, into a slot of its own in this
file: one ``pwrite`` and no fsync, since the kernel keeps what a killed
process wrote. At its next start the broker reads the file (`Starts.previous`),
counts those attempts in the database (Store.interrupt_running), then begins
the file anew (`Starts.begin`). A worker empties its slot when its attempt
ends, and a graceful stop that wrote every running mark removes the file.

The file is ``<STATE_DIR>/<node name>.running``, a slot of SLOT bytes per
worker thread, in the order the threads first started a task::

    offset  0  16 bytes  the task's id (all zeros: no task)
           16   4 bytes  the attempt's number, unsigned, little-endian
           20   8 bytes  when it started, seconds since the epoch, a double
           28   4 bytes  zeros

Only a broker restarting under the same node name with the same STATE_DIR
reads it: a broker that never comes back leaves its last starts to whichever
broker adopts its tasks, as uncounted as their running marks left them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import struct
import tempfile
import threading
import uuid
from pathlib import Path

from .. import conf

logger = logging.getLogger(__name__)

#: One slot: the task's id, the attempt's number, its start, padding.
RECORD = struct.Struct("<16sId4x")
SLOT = RECORD.size
EMPTY = bytes(SLOT)


def path_for(node: str, directory: str = "") -> Path:
    """The file of the broker named `node`, in `directory` (empty: STATE_DIR,
    or else leek-<uid> in the system's temporary directory)."""
    directory = directory or str(conf.get("STATE_DIR"))
    if not directory:
        directory = os.path.join(tempfile.gettempdir(), f"leek-{os.getuid()}")
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", node)
    return Path(directory) / f"{name}.running"


class Starts:
    """The broker's file of what each worker runs; every call is safe from any thread.

    Until `begin` it writes nothing, so that a Store used outside a broker
    leaves no file behind. A file that cannot be read or written is logged
    once, and the broker runs on without it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._slots: dict[int, int] = {}  # thread ident -> offset of its slot
        self._lock = threading.Lock()

    def previous(self) -> list[tuple[uuid.UUID, int, float]]:
        """What the workers of this node's last life were running when it ended:
        (task id, attempt number, start) for each slot in use."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            self._unusable("read", exc)
            return []
        found = []
        for offset in range(0, len(data) - SLOT + 1, SLOT):
            key, number, started = RECORD.unpack_from(data, offset)
            if key != EMPTY[:16] and number > 0:
                found.append((uuid.UUID(bytes=key), int(number), float(started)))
        return found

    def begin(self) -> None:
        """Empty the file and write the workers' starts into it from now on."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = self.path.parent.stat()
            if info.st_uid != os.getuid() and info.st_mode & stat.S_IWOTH:
                raise PermissionError(
                    f"{self.path.parent} is another user's, and anyone may write it"
                )
            fd = os.open(
                self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            self._unusable("create", exc)
            return
        with self._lock:
            old, self._fd = self._fd, fd
            self._slots.clear()
        if old is not None:
            os.close(old)

    def started(self, task_id: uuid.UUID, attempt: int, at: float) -> None:
        """The calling worker has started attempt `attempt` of the task."""
        self._write(RECORD.pack(task_id.bytes, attempt, at))

    def ended(self) -> None:
        """The calling worker's attempt has ended: its slot is emptied."""
        if threading.get_ident() in self._slots:
            self._write(EMPTY)

    def close(self, remove: bool = False) -> None:
        """Stop writing; with `remove`, delete the file too (a stop that wrote
        every running mark leaves nothing the next start needs)."""
        with self._lock:  # no write is under way once it is taken
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
            if remove:
                with contextlib.suppress(OSError):
                    self.path.unlink()

    def _write(self, record: bytes) -> None:
        if self._fd is None:
            return
        me = threading.get_ident()
        # Under the lock: a descriptor closed meanwhile, and its number reused
        # for another file, must never be written to.
        with self._lock:
            fd = self._fd
            if fd is None:
                return
            offset = self._slots.setdefault(me, len(self._slots) * SLOT)
            try:
                os.pwrite(fd, record, offset)
                return
            except OSError as exc:
                self._fd = None
                error = exc
        os.close(fd)
        self._unusable("write", error)

    def _unusable(self, what: str, exc: OSError) -> None:
        logger.warning(
            "cannot %s the file of running tasks path=%s error=%s: an attempt that kills "
            "the broker at once may run again uncounted; set LEEK_STATE_DIR",
            what,
            self.path,
            exc,
            extra={"action": "starts_file_unusable"},
        )
