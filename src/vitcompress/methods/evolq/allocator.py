"""glibc allocator settings for long searches over many large temporary tensors.

With glibc's default (dynamic) thresholds, every forward pass of the search frees and re-maps the
same few-megabyte activation buffers, and the kernel zeroes fresh pages each time: on ``vit-fmnist``
one default Evol-Q pass took 78.6 s (25.5 s system time, 15 M minor page faults) against 23.6 s
(0.6 s, 0.17 M) with the thresholds raised, on 1 thread (docs/evolq.md). Only processes that own
their allocator call this (the CLI, the benchmark); the library never does. Same effect as
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h


def keep_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where glibc is not the allocator."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        ok = (
            libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
            and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1
        )
    except (OSError, AttributeError):
        ok = False
    if not ok:
        log.debug("mallopt not available; keeping the allocator's defaults")
    return ok
