"""MoE feed-forward speed against a dense SwiGLU of the same active FLOPs, forward + backward.

T tokens (default 8192), fp32 on CPU. The dense FFN has hidden = k x expert width, so both do the
same multiply-adds per token. Every case runs forward and backward, with gradients to the input
(and to the gates, where there are gates), as in training. Cases, all in one interleaved run:

  dense             the project's dense SwiGLU (trainables.moe.SwiGLU: fused gate/up Linear)
  routed            the project's MoELayer.routed_experts on a fixed routing: sort, dispatch,
                    grouped expert FFNs, gated combine (THE HEADLINE: dispatch included)
  routed-ethreads   routed with trainables.expert_threads on (MOE_EXPERT_THREADS=1: experts
                    spread over the threads instead of MKL splitting each expert); with one
                    thread it runs the same code as routed, so the two show the noise
  layer             the whole MoELayer: lbl router (micro-batch scope, aux loss) + routed
  previous          this project before the optimisations: argsort, x[token], grouped experts
                    with autograd silu, gate multiply, index_add_
  gathers+vecdot    ablation: the current dispatch/combine with the first combine backward
                    (index_select, vecdot for the gate gradient, in-place scale)
  loop-mask         the textbook block: per expert a boolean mask, W[e] indexing, index_add_
  padded-bmm        capacity = max load, [E, C, D] buffers, torch.bmm
  experts-only      the grouped expert FFNs on tokens already sorted (no dispatch): the limit

Skewed routing (config C1-skew) draws each token's k experts without replacement from a Zipf
distribution tuned to max/mean load ~3; the router-driven 'layer' case is left out there.

    python bench/moe_layer.py [--configs C1 C2 C3 C1-skew trial] [--repeats 9] [--no-tune-allocator]

'trial' (not run by default) is one micro-batch of the default trial config: T=512, d=128, E=24,
k=4, h=128, where the expert chunks are small (~85 rows) and per-call overheads show.

The last line is the headline: routed / dense tokens-per-second ratio per config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, run as a script
from common import add_process_args, format_table, load_average, medians, setup_from_args, spread, time_interleaved  # noqa: E402

from trainables import expert_threads  # noqa: E402
from trainables.config import TrialConfig  # noqa: E402
from torch.autograd.function import once_differentiable  # noqa: E402

from trainables.dispatch import _GatedCombine, dispatch, plan_slots  # noqa: E402
from trainables.experts import GroupedExperts, _grouped_mm_contig  # noqa: E402
from trainables.moe import MoELayer, SwiGLU  # noqa: E402
from trainables.routers import Assignment, RoutingContext  # noqa: E402

CONFIGS = {  # name: (d_model, n_experts, top_k, expert_hidden, skewed, tokens or None for --tokens)
    "C1": (256, 16, 4, 256, False, None),
    "C2": (128, 32, 4, 128, False, None),
    "C3": (256, 64, 8, 128, False, None),
    "C1-skew": (256, 16, 4, 256, True, None),
    # one micro-batch of the default trial (TrialConfig defaults: 4 x 128 tokens)
    "trial": (128, 24, 4, 128, False, 512),
}
DEFAULT_CONFIGS = ["C1", "C2", "C3", "C1-skew"]
SEQ_LEN = 128


# -- routings -----------------------------------------------------------------------------------
def random_routing(T: int, E: int, K: int, skew_target: float | None, gen: torch.Generator):
    """topk_ids [T, K] (distinct experts per token) and gates [T, K] (softmax, sum 1)."""
    if skew_target is None:
        ids_TK = torch.rand(T, E, generator=gen).topk(K, dim=-1).indices
    else:
        ids_TK = _zipf_routing(T, E, K, skew_target, gen)
    gates_TK = torch.randn(T, K, generator=gen).softmax(-1)
    return ids_TK, gates_TK


def _zipf_routing(T, E, K, target, gen):
    lo, hi = 0.0, 4.0  # Zipf exponent: bisect until max/mean load is close to the target
    for _ in range(20):
        s = (lo + hi) / 2
        probs_E = torch.arange(1, E + 1, dtype=torch.float64) ** -s
        ids_TK = torch.multinomial(probs_E.expand(T, E), K, replacement=False, generator=gen)
        if load_skew(ids_TK, E) < target:
            lo = s
        else:
            hi = s
    return ids_TK


def load_skew(ids_TK: torch.Tensor, E: int) -> float:
    counts = torch.bincount(ids_TK.reshape(-1), minlength=E).float()
    return float(counts.max() / counts.mean())


def assignment_of(ids_TK: torch.Tensor, gates_TK: torch.Tensor) -> Assignment:
    """The layout a dropless top-k router emits: slots grouped by token."""
    T, K = ids_TK.shape
    token_S = torch.arange(T).unsqueeze(1).expand(T, K).reshape(-1)
    gate_S = gates_TK.reshape(-1).detach().clone().requires_grad_()  # gradient flows to the gates
    return Assignment(token_S, ids_TK.reshape(-1), gate_S, T * K, torch.zeros(()))


# -- comparison implementations (same weights as GroupedExperts) ----------------------------------
def previous_routed(experts: GroupedExperts, x_TD, a: Assignment):
    """The project's code before the optimisations (argsort + x[token] + gate multiply + index_add_)."""
    order_S = torch.argsort(a.expert_S, stable=True)
    token_S = a.token_S[order_S]
    counts_E = torch.bincount(a.expert_S, minlength=experts.n_experts)
    offsets_E = torch.cumsum(counts_E, 0, dtype=torch.int32)
    gate_SH, up_SH = _grouped_mm_contig(x_TD[token_S], experts.w_gate_up_EDH2, offsets_E).chunk(2, dim=-1)
    y_SD = _grouped_mm_contig(F.silu(gate_SH) * up_SH, experts.w_down_EHD, offsets_E)
    y_SD = y_SD * a.gate_S[order_S].unsqueeze(1)
    return torch.zeros_like(x_TD).index_add_(0, token_S, y_SD)


def with_expert_threads(fn):
    """Run fn with trainables.expert_threads on (MOE_EXPERT_THREADS=1): experts over the threads."""
    saved, expert_threads.ENABLED = expert_threads.ENABLED, True
    try:
        fn()
    finally:
        expert_threads.ENABLED = saved


class _CombineVecdotBackward(_GatedCombine):
    """The gated combine with its first backward (ablation): gather the output gradient, row
    dot for the gate gradient, scale in place."""

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_TD):
        y_SD, gate_bag_S = ctx.saved_tensors
        plan = ctx.plan
        grad_SD = grad_TD.index_select(0, plan.token_of_sorted_S)
        grad_gate = torch.linalg.vecdot(grad_SD, y_SD)[plan.sorted_row_of_bag_S]
        gate_sorted_S = torch.empty_like(gate_bag_S)
        gate_sorted_S[plan.sorted_row_of_bag_S] = gate_bag_S
        return grad_SD.mul_(gate_sorted_S.unsqueeze(1)), grad_gate, None


def routed_vecdot_backward(layer: MoELayer, x_TD, a: Assignment):
    plan = plan_slots(a.token_S, a.expert_S, x_TD.shape[0], layer.n_experts)
    y_SD = layer.experts(dispatch(x_TD, plan), plan.counts_E)
    return _CombineVecdotBackward.apply(y_SD, a.gate_S, plan)


def loop_mask(experts: GroupedExperts, x_TD, ids_TK, gate_TK):
    """The textbook MoE block: per expert a boolean mask of its tokens, weights indexed W[e]."""
    out_TD = torch.zeros_like(x_TD)
    w1, w2 = experts.w_gate_up_EDH2, experts.w_down_EHD
    for e in range(experts.n_experts):
        tok, pos = torch.where(ids_TK == e)
        if tok.numel() == 0:
            continue
        gate, up = (x_TD[tok] @ w1[e]).chunk(2, dim=-1)
        y = (F.silu(gate) * up) @ w2[e]
        out_TD = out_TD.index_add(0, tok, y * gate_TK[tok, pos].unsqueeze(1))
    return out_TD


def padded_bmm(experts: GroupedExperts, x_TD, a: Assignment):
    """Every expert padded to the largest load (capacity = max load, nothing dropped), torch.bmm."""
    E, D = experts.n_experts, x_TD.shape[1]
    order_S = torch.argsort(a.expert_S, stable=True)
    expert_sorted, token_sorted = a.expert_S[order_S], a.token_S[order_S]
    counts_E = torch.bincount(a.expert_S, minlength=E)
    C = int(counts_E.max())
    starts_E = torch.cumsum(counts_E, 0) - counts_E
    row_S = expert_sorted * C + torch.arange(order_S.numel()) - starts_E[expert_sorted]
    x_ECD = x_TD.new_zeros(E * C, D).index_copy(0, row_S, x_TD[token_sorted]).view(E, C, D)
    gate, up = torch.bmm(x_ECD, experts.w_gate_up_EDH2).chunk(2, dim=-1)
    y_ECD = torch.bmm(F.silu(gate) * up, experts.w_down_EHD)
    y_SD = y_ECD.view(E * C, D)[row_S] * a.gate_S[order_S].unsqueeze(1)
    return torch.zeros_like(x_TD).index_add_(0, token_sorted, y_SD)


# -- one config ---------------------------------------------------------------------------------
def build_cases(name: str, T: int, gen: torch.Generator):
    d, E, K, h, skewed, tokens = CONFIGS[name]
    T = tokens or T
    cfg = TrialConfig.from_flat({
        "model.d_model": d, "model.n_experts": E, "model.top_k": K, "model.expert_hidden": h,
        "router.method": "lbl", "router.scope": "micro_batch", "data.seq_len": SEQ_LEN,
    })
    torch.manual_seed(0)
    layer = MoELayer(cfg).train()
    dense = SwiGLU(d, K * h)
    ids_TK, gates_TK = random_routing(T, E, K, 3.0 if skewed else None, gen)
    a = assignment_of(ids_TK, gates_TK)
    x_TD = torch.randn(T, d, generator=gen).requires_grad_()
    upstream_TD = torch.randn(T, d, generator=gen)
    ctx = RoutingContext(seq_len=SEQ_LEN)
    ex = layer.experts
    order_S = torch.argsort(a.expert_S, stable=True)
    x_sorted_SD = x_TD.detach()[a.token_S[order_S]].requires_grad_()
    upstream_SD = torch.randn(x_sorted_SD.shape, generator=gen)
    counts_E = torch.bincount(a.expert_S, minlength=E)

    def fb(out, up=upstream_TD):
        out.backward(up)  # a fixed upstream gradient, no extra loss ops in the timing

    def whole_layer():
        y, aux = layer(x_TD.view(T // SEQ_LEN, SEQ_LEN, d), ctx)
        torch.autograd.backward([y.view(T, d), aux], [upstream_TD, torch.ones(())])

    cases = {
        "dense": lambda: fb(dense(x_TD)),
        "routed": lambda: fb(layer.routed_experts(x_TD, a)),
        "routed-ethreads": lambda: with_expert_threads(lambda: fb(layer.routed_experts(x_TD, a))),
        "layer": whole_layer,
        "previous": lambda: fb(previous_routed(ex, x_TD, a)),
        "gathers+vecdot": lambda: fb(routed_vecdot_backward(layer, x_TD, a)),
        "loop-mask": lambda: fb(loop_mask(ex, x_TD, ids_TK, a.gate_S.view(T, K))),
        "padded-bmm": lambda: fb(padded_bmm(ex, x_TD, a)),
        "experts-only": lambda: fb(ex(x_sorted_SD, counts_E), upstream_SD),
    }
    if skewed:
        del cases["layer"]  # the router picks its own (balanced-ish) routing
    leaves = [x_TD, x_sorted_SD, a.gate_S, *layer.parameters(), *dense.parameters()]

    def drop_grads():
        for t in leaves:
            t.grad = None

    flops = 3 * 2 * T * K * (d * 2 * h + h * d)  # forward + backward (x3) of the active matmuls
    info = f"d={d} E={E} k={K} h={h} max/mean load {load_skew(ids_TK, E):.2f}"
    info = f"T={T} {info}"
    return cases, drop_grads, flops, T, info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=list(CONFIGS))
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=9)
    add_process_args(p)
    p.add_argument("--cases", nargs="+", default=None, help="only these cases (dense is always run)")
    args = p.parse_args()
    if args.tokens % SEQ_LEN:
        raise SystemExit(f"--tokens must be a multiple of {SEQ_LEN}")
    print(setup_from_args(args))
    print(f"T={args.tokens} tokens (trial: 512), fp32, forward+backward, {args.repeats} interleaved repeats, medians "
          f"of {args.clock} time; "
          f"load average before: {load_average()}")
    gen = torch.Generator().manual_seed(0)
    headline, layer_line = [], []
    for name in args.configs:
        cases, drop_grads, flops, T, info = build_cases(name, args.tokens, gen)
        if args.cases:
            cases = {k: v for k, v in cases.items() if k in {"dense", *args.cases}}
        times = time_interleaved(cases, args.repeats, warmup=1, before_each=drop_grads, clock=args.clock)
        med = medians(times)
        base = med["dense"]
        ms = {case: f"{med[case] * 1e3:.1f}" if med[case] < 0.1 else f"{med[case] * 1e3:.0f}" for case in cases}
        rows = [
            [case, ms[case], f"{spread(times[case]):.2f}", f"{T / med[case]:,.0f}",
             f"{flops / med[case] / 1e9:.0f}", f"{base / med[case]:.2f}"]
            for case in cases
        ]
        print(f"\n{name}: {info}")
        print(format_table(["case", "ms", "IQR/med", "tokens/s", "GFLOP/s", "x dense"], rows))
        headline.append(f"{name} {base / med['routed']:.2f}")
        if "layer" in med:
            layer_line.append(f"{name} {base / med['layer']:.2f}")
    print(f"\nload average after: {load_average()}")
    if layer_line:
        print("whole MoELayer (router + routed) vs dense: " + ", ".join(layer_line))
    print("headline, routed experts incl. dispatch + combine vs dense: " + ", ".join(headline))


if __name__ == "__main__":
    main()
