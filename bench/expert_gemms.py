"""The six matrix products of an expert FFN pass, grouped per expert against the dense FFN's.

Where the MoE layer's limit comes from: ``moe_layer``'s ``experts-only`` case (grouped expert
FFNs on rows already sorted, no dispatch) is the ceiling of the ``routed`` headline, and the
matrix products are ~85 % of its time. This takes them one by one, fp32, on the same routing as
``moe_layer`` (random top-k, T = 8192):

  fwd1  x @ W_gate_up        fwd2  h @ W_down
  dA1   dY1 @ W_gate_up^T    dA2   dY2 @ W_down^T        (input gradients)
  dB1   x^T @ dY1            dB2   h^T @ dY2              (weight gradients)

Cases, interleaved in one run:

  dense        one matmul of the dense FFN (hidden = k x expert width): the same FLOPs
  grouped      torch._grouped_mm over the experts' contiguous row chunks (what the layer runs)
  block+tail   the experts' first min-load rows as one [E, m, K] torch.bmm (one parallel region
               over all experts, no per-expert fork/join), the remaining rows grouped: a layout
               the dispatch could produce for free, kept here because it did not win on an
               idle machine (BENCHMARKS.md, session 4)

    python bench/expert_gemms.py [--configs C3 C2 C1 trial] [--repeats 11] [--threads N]

The last line is the headline: grouped / dense time ratio (>1: slower than dense) per config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, run as a script
from common import add_process_args, format_table, load_average, medians, setup_from_args, time_interleaved  # noqa: E402
from moe_layer import CONFIGS as LAYER_CONFIGS, random_routing  # noqa: E402

LAYER_TOKENS = 8192  # moe_layer's default --tokens
CONFIGS = {  # name: (tokens, d_model, n_experts, top_k, expert_hidden): moe_layer's, and a trial step
    **{name: (LAYER_TOKENS, *LAYER_CONFIGS[name][:4]) for name in ("C1", "C2", "C3")},
    "trial": (3072, 128, 24, 4, 128),  # one default training step as one forward pass
}
OPS = ["fwd1", "fwd2", "dA1", "dB1", "dA2", "dB2"]


class BlockThenGrouped:
    """Rows laid out as [E, m] (each expert's first m rows) then each expert's remaining rows."""

    def __init__(self, counts_E: torch.Tensor):
        self.E, self.m = counts_E.numel(), int(counts_E.min())
        self.block = self.E * self.m
        self.tail_offsets = torch.cumsum(counts_E - self.m, 0, dtype=torch.int32)

    def rows(self, a_SK: torch.Tensor, b_EKN: torch.Tensor) -> torch.Tensor:
        out = a_SK.new_empty(a_SK.shape[0], b_EKN.shape[-1])
        B, E, m = self.block, self.E, self.m
        torch.bmm(a_SK[:B].view(E, m, -1), b_EKN, out=out[:B].view(E, m, -1))
        out[B:] = torch._grouped_mm(a_SK[B:], b_EKN, offs=self.tail_offsets)
        return out

    def weight_grad(self, a_SK: torch.Tensor, g_SN: torch.Tensor) -> torch.Tensor:
        B, E, m = self.block, self.E, self.m
        tail = torch._grouped_mm(a_SK[B:].t(), g_SN[B:], offs=self.tail_offsets)
        return torch.baddbmm(tail, a_SK[:B].view(E, m, -1).transpose(1, 2), g_SN[:B].view(E, m, -1))

    def grouped_row_of(self, counts_E: torch.Tensor) -> torch.Tensor:
        """For every row of this layout, its row in the grouped (expert-contiguous) layout."""
        start_E = torch.cumsum(counts_E, 0) - counts_E
        tail_start_E = self.tail_offsets.long() - (counts_E - self.m)
        out = torch.empty(int(counts_E.sum()), dtype=torch.long)
        for e in range(self.E):
            out[e * self.m:(e + 1) * self.m] = start_E[e] + torch.arange(self.m)
            rest = int(counts_E[e]) - self.m
            at = self.block + int(tail_start_E[e])
            out[at:at + rest] = start_E[e] + self.m + torch.arange(rest)
        return out


def cases_for(T: int, D: int, E: int, K: int, H: int, gen: torch.Generator) -> tuple[dict, str]:
    S = T * K
    ids_TK, _ = random_routing(T, E, K, None, gen)
    counts_E = torch.bincount(ids_TK.reshape(-1), minlength=E)
    offsets = torch.cumsum(counts_E, 0, dtype=torch.int32)
    layout = BlockThenGrouped(counts_E)
    rnd = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    w1, w2 = rnd(E, D, 2 * H), rnd(E, H, D)
    x_S, h_S, g1_S, g2_S = rnd(S, D), rnd(S, H), rnd(S, 2 * H), rnd(S, D)
    W1, W2 = rnd(D, 2 * H * K), rnd(H * K, D)
    x, h, g1, g2 = rnd(T, D), rnd(T, H * K), rnd(T, 2 * H * K), rnd(T, D)
    grouped = lambda a, b: torch._grouped_mm(a, b, offs=offsets)  # noqa: E731
    grouped_wg = lambda a, g: torch._grouped_mm(a.t(), g, offs=offsets)  # noqa: E731
    ops = {
        "fwd1": (lambda: x @ W1, lambda: grouped(x_S, w1), lambda: layout.rows(x_S, w1)),
        "fwd2": (lambda: h @ W2, lambda: grouped(h_S, w2), lambda: layout.rows(h_S, w2)),
        "dA1": (lambda: g1 @ W1.t(), lambda: grouped(g1_S, w1.transpose(1, 2)),
                lambda: layout.rows(g1_S, w1.transpose(1, 2))),
        "dB1": (lambda: x.t() @ g1, lambda: grouped_wg(x_S, g1_S), lambda: layout.weight_grad(x_S, g1_S)),
        "dA2": (lambda: g2 @ W2.t(), lambda: grouped(g2_S, w2.transpose(1, 2)),
                lambda: layout.rows(g2_S, w2.transpose(1, 2))),
        "dB2": (lambda: h.t() @ g2, lambda: grouped_wg(h_S, g2_S), lambda: layout.weight_grad(h_S, g2_S)),
    }
    _check_layouts_agree(layout, counts_E, offsets, x_S, g1_S, w1)
    cases = {f"{op} {name}": fn for op, fns in ops.items() for name, fn in zip(("dense", "grouped", "block"), fns)}
    note = (f"S={S} slots, rows per expert {int(counts_E.min())}-{int(counts_E.max())}, "
            f"block share {layout.block / S:.2f}")
    return cases, note


def _check_layouts_agree(layout, counts_E, offsets, a_SK, g_SN, b_EKN) -> None:
    """The two layouts compute the same products (else the timing compares different work)."""
    row = layout.grouped_row_of(counts_E)
    torch.testing.assert_close(layout.rows(a_SK[row], b_EKN),
                               torch._grouped_mm(a_SK, b_EKN, offs=offsets)[row], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(layout.weight_grad(a_SK[row], g_SN[row]),
                               torch._grouped_mm(a_SK.t(), g_SN, offs=offsets), rtol=1e-4, atol=1e-2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["C3", "C2"], choices=list(CONFIGS))
    p.add_argument("--repeats", type=int, default=11)
    add_process_args(p)
    args = p.parse_args()
    print(setup_from_args(args))
    print(f"fp32, medians of {args.repeats} interleaved repeats of {args.clock} time; "
          f"load average before: {load_average()}")
    headline = []
    for name in args.configs:
        T, D, E, K, H = CONFIGS[name]
        cases, note = cases_for(T, D, E, K, H, torch.Generator().manual_seed(0))
        med = medians(time_interleaved(cases, args.repeats, clock=args.clock))
        rows, total = [], {"dense": 0.0, "grouped": 0.0, "block": 0.0}
        for op in OPS:
            t = {kind: med[f"{op} {kind}"] for kind in total}
            for kind in total:
                total[kind] += t[kind]
            rows.append([op, *(f"{t[k] * 1e3:.2f}" for k in total),
                         f"{t['dense'] / t['grouped']:.2f}", f"{t['dense'] / t['block']:.2f}"])
        rows.append(["all six", *(f"{total[k] * 1e3:.2f}" for k in total),
                     f"{total['dense'] / total['grouped']:.2f}", f"{total['dense'] / total['block']:.2f}"])
        print(f"\n{name}: T={T} d={D} E={E} k={K} h={H}; {note}")
        print(format_table(["product", "dense ms", "grouped ms", "block+tail ms", "grouped x dense",
                            "block+tail x dense"], rows))
        headline.append(f"{name} {total['dense'] / total['grouped']:.2f}")
    print(f"\nload average after: {load_average()}")
    print("headline, grouped expert products vs the dense FFN's (tokens/s ratio): " + ", ".join(headline))


if __name__ == "__main__":
    main()
