"""The wire protocol: the only code that touches raw bytes, and the only code that unpickles.

:mod:`~leek.protocol.frame` draws the frame and signs, writes and reads it;
:mod:`~leek.protocol.sockets` carries frames over a connected socket;
:mod:`~leek.protocol.payload` pickles a task's call and its return value.
Importers name the module they need; every name is also importable from here.
"""

from __future__ import annotations

from ..ids import new_task_id, new_task_ids
from .frame import (
    HEADER,
    MAGIC,
    NO_NONCE,
    NONCE_SIZE,
    OVERHEAD,
    PICKLE_PROTOCOL,
    PREFIX,
    TAG_SIZE,
    Frame,
    Keys,
    body_length,
    derive_key,
    encode,
    open_frame,
    read_exact,
    read_frame,
    sign,
)
from .payload import _Unpicklable, dump_task, dump_value, load_task, load_value, task_name
from .sockets import RECV_SIZE, FrameSocket

__all__ = [
    "HEADER",
    "MAGIC",
    "NONCE_SIZE",
    "NO_NONCE",
    "OVERHEAD",
    "PICKLE_PROTOCOL",
    "PREFIX",
    "RECV_SIZE",
    "TAG_SIZE",
    "Frame",
    "FrameSocket",
    "Keys",
    "body_length",
    "derive_key",
    "dump_task",
    "dump_value",
    "encode",
    "load_task",
    "load_value",
    "new_task_ids",
    "open_frame",
    "read_exact",
    "read_frame",
    "sign",
    "task_name",
    # Migration 0003 and stored rows name leek.protocol.new_task_id, and stored
    # result blobs name leek.protocol._Unpicklable: both stay importable here for ever.
    "new_task_id",
    "_Unpicklable",
]
