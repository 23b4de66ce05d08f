"""Timing helpers shared by the speed benchmarks: interleaved repeats, medians, plain tables.

Interleaving (A B C A B C ... rather than A A A B B B) makes every case see the same machine
state on average, so ratios from one run stay meaningful on a shared or throttling machine even
when absolute times drift.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable

import torch

from trainables import expert_threads
from trainables.runtime import denormals_flushed, flush_denormals, tune_allocator


def setup_process(tune: bool, threads: int, flush: bool = False) -> str:
    """Apply the project's start-up settings (or not) and describe them in one line."""
    if threads:
        torch.set_num_threads(threads)
    tuned = tune_allocator() if tune else False
    flushed = flush_denormals() if flush else denormals_flushed()
    allocator = "mallopt thresholds raised" if tuned else "glibc defaults"
    if os.environ.get("GLIBC_TUNABLES"):
        allocator += f", GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']}"
    return (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
        f"allocator: {allocator}; subnormal floats {'flushed' if flushed else 'kept'}; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
        f"expert threads {'on' if expert_threads.ENABLED else 'off'}"
    )


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def add_device_arg(p) -> None:
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CUDA when present, under bf16 autocast as training runs it")


def device_from_args(args) -> torch.device:
    """The ``--device`` of ``add_device_arg``; SystemExit when CUDA is asked for and absent."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_cuda else "cpu")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work: a CUDA call returns before the GPU has done it, so a
    timed case ends here (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def add_process_args(p) -> None:
    """The process settings every benchmark takes: threads, clock, allocator, subnormals."""
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: process CPU time, for a busy machine (use with --threads 1)")
    p.add_argument("--no-tune-allocator", action="store_true", help="skip trainables.runtime.tune_allocator()")
    p.add_argument("--flush-denormals", action="store_true",
                   help="call trainables.runtime.flush_denormals() (training does not, yet)")


def setup_from_args(args) -> str:
    """``setup_process`` with the options of ``add_process_args``."""
    return setup_process(not args.no_tune_allocator, args.threads, args.flush_denormals)


def time_interleaved(
    cases: dict[str, Callable[[], None]],
    repeats: int,
    warmup: int = 1,
    before_each: Callable[[], None] | None = None,
    clock: str = "wall",
) -> dict[str, list[float]]:
    """Seconds per call of every case; rounds run every case once, in turn, ``repeats`` times.

    ``before_each`` runs untimed before every call (e.g. dropping gradients). ``clock="cpu"``
    counts this process's CPU time instead of wall time: with one thread it is the work done,
    whatever else the machine runs (with more threads it also counts OpenMP spin-waiting).
    """
    now = CLOCKS[clock]
    times: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(warmup + repeats):
        for name, fn in cases.items():
            if before_each is not None:
                before_each()
            t0 = now()
            fn()
            elapsed = now() - t0
            if round_ >= warmup:
                times[name].append(elapsed)
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(ts) for name, ts in times.items()}


def spread(ts: list[float]) -> float:
    """Relative interquartile range: how noisy a case was (0.05 = 5 %)."""
    q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [ts[0]] * 3
    return (q[2] - q[0]) / statistics.median(ts)


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (pastes straight into BENCHMARKS.md)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"
