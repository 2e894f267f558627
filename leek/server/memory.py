"""Handing freed memory back to the system, where the C library allows it.

glibc keeps memory that Python freed in its arenas, so a broker that once
held many payloads (a burst of pushes, a page of loaded jobs) keeps that
much resident. `trim` asks glibc to return what is free (malloc_trim); on a
C library without it (musl, macOS) it does nothing. It is a broker duty.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: Seconds between two trims.
TRIM_INTERVAL = 60.0


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    found: Callable[[int], int] | None = getattr(libc, "malloc_trim", None)
    return found


_TRIM = _malloc_trim()


def trim() -> None:
    """Return the C library's free memory to the system; nothing without glibc."""
    if _TRIM is not None:
        _TRIM(0)
