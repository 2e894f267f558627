"""What fits in one frame, so that no push is refused for its size.

A broker refuses a frame whose body is over its ``LEEK["MAX_FRAME"]`` and
closes the connection (docs/protocol.md), so a push too large for one frame
would never be committed. The client settles it before it sends anything:

- a task too large for a frame of its own cannot be pushed: `check` (a
  task alone) and `cut` (a batch, before its first part is sent) raise
  PayloadError naming its size and the limit;
- a batch larger than one frame goes in parts (`cut`), each a frame under the
  limit with the batch's options, committed on its own.

A part's size is counted from its tasks' fields as they will be pickled, with
room left for what the pickle adds around them, so a part is never over the
limit (tests/client/test_sizes.py encodes parts of random, non-ASCII tasks
against it). A batch whose `bound` (a text counted at 4 bytes a character
unless it is ASCII) fits one frame is sent whole without counting each task.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .. import conf
from ..exceptions import PayloadError

#: Room in a frame for all but the tasks' fields: the request's id and verb,
#: a batch's options (a key is at most 255 characters), the pickle's framing.
ROOM = 16 * 1024
#: What the pickle of a batch adds to each task beyond its fields' bytes: the
#: tuple, the opcodes and lengths of its four fields (at most 9 bytes each),
#: and their memo entries.
PER_TASK = 64


def limit() -> int:
    """The most bytes of tasks a frame may carry: this client's MAX_FRAME, less ROOM."""
    return int(conf.get("MAX_FRAME")) - ROOM


#: A task's bytes in a frame besides its payload, name and args_repr: its
#: 16-byte id, and what the pickle adds.
TASK = 16 + PER_TASK


def size(name: str, payload: bytes, args_repr: str) -> int:
    """The bytes a task takes in a frame at most, its 16-byte id included."""
    return TASK + len(payload) + _utf8(name) + _utf8(args_repr)


def bound(text: str) -> int:
    """The most bytes `text` can take in UTF-8, without encoding it: its
    length when it is ASCII, else 4 a character (the most any takes)."""
    return len(text) if text.isascii() else 4 * len(text)


def _utf8(text: str) -> int:
    """The length of `text` in UTF-8, as the pickle writes it (`isascii` is
    a flag the string keeps: the common case encodes nothing)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def check(name: str, payload: bytes, args_repr: str) -> None:
    """Raise PayloadError when one task alone is too large for a frame."""
    room = limit()
    if size(name, payload, args_repr) > room:
        raise _too_large(name, payload, room)


def cut(tasks: list[tuple[bytes, str, bytes, str]], room: int) -> Iterator[list[Any]]:
    """`tasks` of a batch, (id, name, payload, args_repr) each, in parts of at
    most `room` bytes, in order; one part when they all fit. Raises
    PayloadError, when it comes to it, for a task alone over `room`."""
    part: list[Any] = []
    taken = 0
    for task in tasks:
        took = size(task[1], task[2], task[3])
        if took > room:
            raise _too_large(task[1], task[2], room)
        if part and taken + took > room:
            yield part
            part, taken = [], 0
        part.append(task)
        taken += took
    if part:
        yield part


def _too_large(name: str, payload: bytes, room: int) -> PayloadError:
    return PayloadError(
        f"task {name} pickles to {len(payload):,} bytes, more than a frame carries "
        f"({room:,} bytes of tasks under LEEK['MAX_FRAME'] = {conf.get('MAX_FRAME'):,}): "
        "pass a reference to the data (a primary key, a file's path) instead of the data"
    )
