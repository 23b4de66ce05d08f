"""Process-level settings for fast CPU training."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_tuned = False


def tune_allocator() -> bool:
    """Keep large freed blocks in the heap instead of returning them to the OS.

    glibc hands blocks over 32 MB back to the OS and faults them in again every step
    (150-220 K page faults per MoE step measured in PERF_NOTES); raising the mmap and trim
    thresholds removes them. Same effect as GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...,
    but works after start-up. Returns True when applied (glibc only).
    """
    global _tuned
    if _tuned:
        return True
    if os.name != "posix":
        return False
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    try:
        libc = ctypes.CDLL(libc_name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    big = 1 << 30  # mallopt takes an int: 1 GiB is the largest threshold it accepts safely
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, big)) and bool(mallopt(_M_TRIM_THRESHOLD, big))
    return _tuned
