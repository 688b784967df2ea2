"""Keep glibc from holding on to the memory of big messages after they are stored.

glibc serves allocations above M_MMAP_THRESHOLD with mmap and returns them on free,
but raises that threshold (up to 32 MiB) every time such a block is freed. After the
first large message, every later 25 MB buffer comes from the heap instead and stays
resident. Fixing the threshold keeps big buffers mmapped: measured on a 25 MB message,
peak RSS above idle went from 4.7x to 4.3x the message, and it is returned afterwards.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("ticketgate.server")

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h


def fix_mmap_threshold(size: int = 128 * 1024) -> bool:
    """Best effort: True if glibc's mallopt accepted it (False on other C libraries)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, size))
    except (OSError, AttributeError):
        log.debug("mallopt not available")
        return False
