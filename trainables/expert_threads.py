"""Per-expert matmuls on CPU, experts spread over the intra-op threads.

Shape legend: S slots sorted by expert, E experts, K inner width, N output width.

Why: ``torch._grouped_mm`` on CPU is a loop of ``mm`` calls, each split by MKL over all intra-op
threads, so every expert costs a fork/join. With a few hundred rows per expert that splitting is
inefficient, and when another process shares the cores every join waits for a descheduled thread
(BENCHMARKS.md: on a 2-core machine shared with other jobs, 2-thread grouped matmuls ran 4x
slower than one dense matmul of the same FLOPs). Here each thread takes a contiguous range of experts, balanced by rows,
and runs them one after another with single-threaded MKL: one fork/join per grouped matmul.
An expert holding more than 1/n of the rows runs alone first, with every thread. Results equal
``torch._grouped_mm`` up to float summation order.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

ENABLED = os.environ.get("MOE_EXPERT_THREADS", "0") == "1"
"""Off by default: on an idle machine MKL's own threading inside each expert was faster (MoE
layer 0.94 vs 0.83 of dense on C1, 0.86 vs 0.64 on C2: OpenMP joins are cheap while the threads
spin); on an oversubscribed one (more busy threads than cores) this was 1.2-4x faster. Set
MOE_EXPERT_THREADS=1 there, or better, give each process no more threads than the cores it has
(BENCHMARKS.md)."""

MIN_FLOPS = 4_000_000
"""Below this much work per grouped matmul the pool's hand-off costs more than it saves."""


def worth_threading(a: torch.Tensor, n_out: int) -> bool:
    """Enabled, CPU, more than one intra-op thread, and enough work."""
    return (
        ENABLED and a.device.type == "cpu" and torch.get_num_threads() > 1
        and 2 * a.numel() * n_out >= MIN_FLOPS
    )


def grouped_mm_rows(a_SK: torch.Tensor, b_EKN: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """out[rows of expert e] = a[rows of e] @ b[e]: [S, N] (b may be a transposed view)."""
    out_SN = a_SK.new_empty(a_SK.shape[0], b_EKN.shape[-1])
    tasks = list(zip(a_SK.split(counts), b_EKN.unbind(0), out_SN.split(counts)))

    def run(chunk):
        for a_e, b_e, out_e in chunk:
            if a_e.shape[0]:
                torch.mm(a_e, b_e, out=out_e)

    _pool().run(run, tasks, counts)
    return out_SN


def grouped_mm_weight_grad(a_SK: torch.Tensor, grad_SN: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """out[e] = a[rows of e]^T @ grad[rows of e]: [E, K, N] (zero for an expert without rows)."""
    out_EKN = a_SK.new_empty(len(counts), a_SK.shape[1], grad_SN.shape[1])
    tasks = list(zip(a_SK.split(counts), grad_SN.split(counts), out_EKN.unbind(0)))

    def run(chunk):
        for a_e, g_e, out_e in chunk:
            if a_e.shape[0]:
                torch.mm(a_e.t(), g_e, out=out_e)
            else:
                out_e.zero_()

    _pool().run(run, tasks, counts)
    return out_EKN


class _ExpertPool:
    """One worker per intra-op thread, each with single-threaded torch (MKL, OpenMP)."""

    def __init__(self, n_threads: int):
        self.n_threads, self.pid = n_threads, os.getpid()
        flush = _flushes_denormals()
        started = threading.Barrier(n_threads + 1)

        def init_worker():
            torch.get_num_threads()  # initialise this thread's torch threading now, at n ...
            torch.set_num_threads(1)  # ... then go single-threaded (MKL and OpenMP, thread-local)
            torch.set_flush_denormal(flush)  # the FP mode of the thread that made the pool
            started.wait()

        self.executor = ThreadPoolExecutor(n_threads, thread_name_prefix="moe-experts", initializer=init_worker)
        for _ in range(n_threads):  # start every worker before undoing their side effect below
            self.executor.submit(lambda: None)
        started.wait()
        # set_num_threads(1) in a worker also sets the default that threads started later pick up
        torch.set_num_threads(n_threads)

    def run(self, fn, tasks: list, counts: list[int]) -> None:
        # an expert with more than 1/n of the rows cannot be balanced: it runs first, on its
        # own, with every thread (MKL splits it); the others are spread over the workers
        total, n = sum(counts), self.n_threads
        big = [t for t, c in zip(tasks, counts) if c * n > total]
        if big:
            _without_autograd(fn, big)
            rest = [(t, c) for t, c in zip(tasks, counts) if c * n <= total]
            tasks, counts = [t for t, _ in rest], [c for _, c in rest]
        chunks = _balanced_ranges(tasks, counts, n)
        for future in [self.executor.submit(_without_autograd, fn, chunk) for chunk in chunks]:
            future.result()


def _without_autograd(fn, chunk) -> None:
    # grad mode is per thread: the caller (an autograd Function) has it off, the workers do not
    with torch.no_grad():
        fn(chunk)


def _balanced_ranges(tasks: list, counts: list[int], n: int) -> list[list]:
    """Split the experts into n contiguous ranges with about equal rows."""
    total, chunks, current, done = sum(counts), [], [], 0
    for task, rows in zip(tasks, counts):
        current.append(task)
        done += rows
        if done * n >= total * (len(chunks) + 1) and len(chunks) < n - 1:
            chunks.append(current)
            current = []
    chunks.append(current)
    return [c for c in chunks if c]


_pool_lock = threading.Lock()
_the_pool: _ExpertPool | None = None


def _pool() -> _ExpertPool:
    """The pool for the current thread count; a new one after fork (a child has no threads)."""
    global _the_pool
    n = torch.get_num_threads()
    with _pool_lock:
        if _the_pool is None or _the_pool.n_threads != n or _the_pool.pid != os.getpid():
            if _the_pool is not None and _the_pool.pid == os.getpid():
                _the_pool.executor.shutdown(wait=False)
            _the_pool = _ExpertPool(n)
        return _the_pool


def _flushes_denormals() -> bool:
    tiny = torch.full((1,), 1e-40)
    return bool((tiny * 1.0).item() == 0.0)
