"""Process-level settings for fast CPU training: the allocator and subnormal floats."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_tuned = False


def tune_allocator() -> bool:
    """Keep large freed blocks in the heap instead of returning them to the OS.

    glibc hands blocks over 32 MB back to the OS and faults them in again every step
    (150-220 K page faults per MoE step in an earlier measurement whose notes are not kept in
    this repository); raising the mmap and trim thresholds removes them. What that is worth in
    speed: BENCHMARKS.md, "Process settings" (the allocator table). Same effect as
    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=..., but works after start-up. Returns True when
    applied (glibc only).
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


def flush_denormals() -> bool:
    """Treat subnormal floats as zero (FTZ/DAZ) in this thread and in its OpenMP workers.

    Values that small (|x| < 1.2e-38) take a slow microcode path in x86 arithmetic and are zero
    for training purposes (TensorFlow flushes them by default on CPU). Measured gain on the
    default trial's first steps: 2-3 % (BENCHMARKS.md); the training loop does not call it.
    ``torch.set_flush_denormal`` only sets the calling thread; OpenMP workers started earlier
    keep their own FP control register, so the setting is also run inside one parallel region.
    Call it from the thread that trains.
    Returns True when verified in every intra-op thread (False on CPUs without FTZ/DAZ).
    """
    if not torch.set_flush_denormal(True):
        return False
    _run_in_openmp_workers(lambda: torch.set_flush_denormal(True))
    return denormals_flushed()


def denormals_flushed() -> bool:
    """Does a subnormal input come out of a parallel elementwise op as zero in every thread?"""
    n = 2 * 32768 * max(1, torch.get_num_threads())  # several grains: every thread gets a chunk
    subnormal = torch.full((n,), 1e-40, dtype=torch.float32)
    return int((subnormal * 1.0).count_nonzero()) == 0


def _run_in_openmp_workers(fn) -> bool:
    """Run ``fn`` once in every thread of an OpenMP parallel region of torch's OpenMP runtime."""
    library = _loaded_openmp_library()
    if library is None:
        return False
    try:
        parallel = ctypes.CDLL(library).GOMP_parallel  # libgomp; libiomp5 exports it as well
    except (OSError, AttributeError):
        return False
    callback_type = ctypes.CFUNCTYPE(None, ctypes.c_void_p)

    def in_each_thread(_data) -> None:
        fn()

    callback = callback_type(in_each_thread)  # kept alive until the region has ended
    parallel.argtypes = [callback_type, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    parallel.restype = None
    parallel(callback, None, torch.get_num_threads(), 0)
    return True


def _loaded_openmp_library() -> str | None:
    """Path of the OpenMP runtime already mapped into this process (Linux), else None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if line.rstrip().endswith(".so") or ".so." in line}
    except OSError:
        return None
    for name in ("libgomp", "libiomp5", "libomp"):
        for path in sorted(paths):
            if os.path.basename(path).startswith(name):
                return path
    return None
