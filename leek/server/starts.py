"""The task each worker is running, in a file that outlives the broker's process.

A task's running mark reaches the database only once the task has run a
moment (Store.mark_running, store/marks.py), so a task that kills the
broker's process as soon as it starts (a crashing C extension, ``os._exit``,
the OOM killer) can leave no trace in the database, and would run again,
uncounted, at every restart. So each worker also writes
the task it starts, with the attempt's number, into a slot of its own in this
file. The file is mapped into the broker's memory (shared), so a write is a
copy into memory: no system call, and so no hand-off of the interpreter lock
to another thread, twice a task. The kernel keeps what a killed process wrote
into a shared mapping, as it keeps what it wrote with ``write``; neither is
synced to disk. At its next start the broker reads the file
(`Starts.previous`), counts those attempts in the database
(Store.nodes.interrupt_running), then begins a new file (`Starts.begin`). A worker
empties its slot when its attempt ends, and a graceful stop that wrote every
running mark removes the file.

The file is ``<STATE_DIR>/<node name>.running``, a slot of SLOT bytes per
worker thread, in the order the threads first started a task, then zeros::

    offset  0  16 bytes  the task's id (all zeros: no task)
           16   4 bytes  the attempt's number, unsigned, little-endian
           20   8 bytes  when it started, seconds since the epoch, a double
           28   4 bytes  CRC-32 of the 28 bytes before it, little-endian

A process killed in the middle of copying a slot leaves it torn: its CRC does
not match, and it is read as empty, as if the attempt had not been written. A
slot whose CRC is zero is read as it is: the earlier format wrote zeros there,
and a broker upgraded after a crash still counts its last life's starts. (A
slot torn before its CRC was copied over zeros names an id no task has, or
the attempt that did start.)
Each life writes a new file, put in place by a rename: a broker still writing
the file it mapped (a second broker started under the same name) writes on
into a file no one reads, and is never cut short by the other's truncating it.

Only a broker restarting under the same node name with the same STATE_DIR
reads it: a broker that never comes back leaves its last starts to whichever
broker adopts its tasks, as uncounted as their running marks left them.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
import stat
import struct
import tempfile
import threading
import uuid
import zlib
from pathlib import Path

from .. import conf

logger = logging.getLogger(__name__)

#: One slot: the task's id, the attempt's number, its start, the CRC of those.
RECORD = struct.Struct("<16sIdI")
SLOT = RECORD.size
SIGNED = SLOT - 4  # the bytes the CRC covers
EMPTY = bytes(SLOT)
#: Slots of a new file; it doubles when a worker thread needs one more.
FIRST_SLOTS = 64
_NUMBERS = struct.Struct("<Id")
_CRC = struct.Struct("<I")


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
        self._map: mmap.mmap | None = None
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
            key, number, started, crc = RECORD.unpack_from(data, offset)
            if key == EMPTY[:16] or number <= 0:
                continue
            if crc and crc != zlib.crc32(data[offset : offset + SIGNED]):
                logger.warning(
                    "a torn slot in the file of running tasks was skipped path=%s",
                    self.path,
                    extra={"action": "starts_slot_torn"},
                )
                continue
            found.append((uuid.UUID(bytes=key), int(number), float(started)))
        return found

    def begin(self) -> None:
        """Start a new, empty file and write the workers' starts into it from now on."""
        fresh = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = self.path.parent.stat()
            if info.st_uid != os.getuid() and info.st_mode & stat.S_IWOTH:
                raise PermissionError(
                    f"{self.path.parent} is another user's, and anyone may write it"
                )
            fd = os.open(
                fresh, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            try:
                os.ftruncate(fd, FIRST_SLOTS * SLOT)
                mapped = mmap.mmap(fd, FIRST_SLOTS * SLOT)  # shared, read and write
            finally:
                os.close(fd)  # the mapping keeps the file
            os.replace(fresh, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                fresh.unlink()
            self._unusable("create", exc)
            return
        with self._lock:
            old, self._map = self._map, mapped
            self._slots.clear()
        if old is not None:
            old.close()

    def started(self, task_id: uuid.UUID, attempt: int, at: float) -> None:
        """The calling worker has started attempt `attempt` of the task."""
        signed = task_id.bytes + _NUMBERS.pack(attempt, at)
        self._write(signed + _CRC.pack(zlib.crc32(signed)))

    def ended(self) -> None:
        """The calling worker's attempt has ended: its slot is emptied."""
        if threading.get_ident() in self._slots:
            self._write(EMPTY)

    def close(self, remove: bool = False) -> None:
        """Stop writing; with `remove`, delete the file too (a stop that wrote
        every running mark leaves nothing the next start needs)."""
        with self._lock:  # no write is under way once it is taken
            mapped, self._map = self._map, None
        if mapped is not None:
            mapped.close()
            if remove:
                with contextlib.suppress(OSError):
                    self.path.unlink()

    def _write(self, record: bytes) -> None:
        if self._map is None:
            return
        me = threading.get_ident()
        with self._lock:  # a mapping closed meanwhile is never written to
            mapped = self._map
            if mapped is None:
                return
            offset = self._slots.setdefault(me, len(self._slots) * SLOT)
            try:
                if offset + SLOT > len(mapped):
                    mapped.resize(2 * len(mapped))  # the file grows with it
                mapped[offset : offset + SLOT] = record
                return
            except OSError as exc:
                self._map = None
                error = exc
        mapped.close()
        self._unusable("grow", error)

    def _unusable(self, what: str, exc: OSError) -> None:
        logger.warning(
            "cannot %s the file of running tasks path=%s error=%s: an attempt that kills "
            "the broker at once may run again uncounted; set LEEK_STATE_DIR",
            what,
            self.path,
            exc,
            extra={"action": "starts_file_unusable"},
        )
