"""Causal attention on CPU: SDPA (its flash kernel, or its math backend) against the blocked path.

Forward + backward of ``trainables.attention.causal_attention`` with q, k, v laid out as the
model has them (q and k contiguous after rotary, v a permuted view of the qkv projection, the
output merged back into [B, L, D]), 3072 tokens per case (B = 3072 / L), fp32. Cases
interleaved, medians:

  sdpa        F.scaled_dot_product_attention(is_causal=True): the CPU flash kernel
  sdpa-math   the same under SDPBackend.MATH (full L x L scores, autograd's softmax)
  blocked     trainables.attention's blocked math path (what the model runs at one thread)
  ... fwd     the same, forward only without gradients (evaluation)

    python bench/attention.py --threads 1 --clock cpu [--lengths 64 128 256 512] [--head-dims 32]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, run as a script
from common import add_process_args, format_table, load_average, medians, setup_from_args, spread, time_interleaved  # noqa: E402

from trainables import attention  # noqa: E402


def case(L: int, Dh: int, heads: int, impl: str, backward: bool, tokens: int = 3072):
    B, D = max(1, tokens // L), heads * Dh
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, L, 3 * D, generator=g, requires_grad=backward)
    upstream = torch.randn(B, L, D, generator=g)

    def run() -> None:
        q, k, v = qkv.view(B, L, 3, heads, Dh).permute(2, 0, 3, 1, 4)
        q, k = q.contiguous(), k.contiguous()  # as rotary leaves them
        saved = attention.IMPLEMENTATION
        attention.IMPLEMENTATION = "auto" if impl == "blocked" else "sdpa"
        try:
            with sdpa_kernel(SDPBackend.MATH) if impl == "sdpa-math" else contextlib.nullcontext():
                with contextlib.nullcontext() if backward else torch.no_grad():
                    y = attention.causal_attention(q, k, v).transpose(1, 2).reshape(B, L, D)
                    if backward:
                        y.backward(upstream)
                        qkv.grad = None
        finally:
            attention.IMPLEMENTATION = saved

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512])
    p.add_argument("--head-dims", type=int, nargs="+", default=[32])
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--repeats", type=int, default=15)
    add_process_args(p)
    args = p.parse_args()
    print(setup_from_args(args))
    cases = {}
    for L in args.lengths:
        for Dh in args.head_dims:
            for impl in ("sdpa", "sdpa-math", "blocked"):
                cases[(L, Dh, impl)] = case(L, Dh, args.heads, impl, backward=True)
            for impl in ("sdpa", "blocked"):
                cases[(L, Dh, impl + " fwd")] = case(L, Dh, args.heads, impl, backward=False)
    if torch.get_num_threads() != 1:
        print("note: with more than one thread causal_attention takes SDPA: 'blocked' = 'sdpa' here")
    print(f"load average before: {load_average()}")
    times = time_interleaved({str(k): fn for k, fn in cases.items()}, args.repeats, warmup=2, clock=args.clock)
    med = medians(times)
    rows = []
    for L in args.lengths:
        for Dh in args.head_dims:
            key = lambda impl: str((L, Dh, impl))  # noqa: E731
            rows.append([str(L), str(Dh)]
                        + [f"{med[key(i)] * 1e3:.2f}" for i in ("sdpa", "sdpa-math", "blocked", "sdpa fwd", "blocked fwd")]
                        + [f"{med[key('sdpa')] / med[key('blocked')]:.2f}",
                           f"{max(spread(times[key(i)]) for i in ('sdpa', 'blocked')):.2f}"])
    print(format_table(["L", "Dh", "sdpa ms", "sdpa-math ms", "blocked ms", "sdpa fwd ms", "blocked fwd ms",
                        "sdpa / blocked", "IQR/med"], rows))
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
