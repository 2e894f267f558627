"""Handing freed memory back to the system, where the C library allows it.

glibc keeps memory that Python freed in its arenas, so a broker that once
held much (the buffers of large frames and of their inserts, a page of loaded
payloads) keeps that much resident. At start, `settle` gives every block of
MMAP_THRESHOLD bytes or more a mapping of its own, which goes back to the
system when it is freed; glibc's own threshold rises with the largest block
freed, which leaves such buffers in the heap. `trim`, a broker duty, asks
glibc to return the free memory of its heaps (malloc_trim). On a C library
without them (musl, macOS) both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

#: Seconds between two trims.
TRIM_INTERVAL = 60.0
#: Bytes from which a block gets a mapping of its own.
MMAP_THRESHOLD = 1024 * 1024
#: mallopt's parameter for that threshold (malloc.h).
M_MMAP_THRESHOLD = -3


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not (hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt")):
        return None
    return libc


_LIBC = _glibc()


def settle() -> None:
    """Give large blocks mappings of their own, returned when freed."""
    if _LIBC is not None and not _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        logger.warning(
            "malloc kept its threshold for mappings threshold=%s",
            MMAP_THRESHOLD,
            extra={"action": "mallopt_refused"},
        )


def trim() -> None:
    """Return the free memory of the C library's heaps to the system."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
