"""Model FLOP utilisation of the training step and of an evaluation, against a matmul of the same run.

One run, cases interleaved (A B C A B C ..., medians), at the given threads:

  matmul 1024^3       one fp32 1024 x 1024 x 1024 product: the machine's matmul rate
  step's products     the training step's matrix products alone, at its shapes (projections,
                      router, head with torch.mm; experts with torch._grouped_mm on even loads;
                      forward and both backward products), without attention: what the
                      products themselves reach at these sizes
  train step [V]      one optimizer step of the trial (as bench/train_step.py runs it:
                      forward_backward, clipping, fused AdamW, post_step) under variant V
  evaluation [V]      ``trainables.training.evaluate`` as training runs it at every report: the
                      fixed validation set (forward passes with routing statistics) and every
                      metric computed from it

Achieved GFLOP/s = tokens x FLOPs per token (``trainables.flops``: 3 x forward products for
training, 1 x for evaluation) / time; ``x matmul`` = that / the 1024^3 rate: the model FLOP
utilisation. Variants (``--variants``) switch implementations so that before and after run in
the same process, on the same data, from the same initial weights:

  before              the code before this work: SDPA attention (its CPU flash kernel) and SwiGLU's
                      silu and silu backward on the strided gate half
  now                 the code as it is
  strided-swiglu      now, with SwiGLU as before (the SwiGLU change alone)
  sdpa-attention      now, with SDPA attention (the blocked attention alone,
                      ``trainables.attention.IMPLEMENTATION``)
  math-attention      SDPA's math backend (explicit scores and softmax, full L x L)
  compiled-swiglu     SwiGLU through torch.compile (inductor: one fused C++ kernel forward, one
                      backward; static shapes); its compile time shows in the first-step line
  compiled-attention  the attention half of every block (norm, qkv, rotary, SDPA, projection,
                      residual, the FFN's norm) through torch.compile, rotary in its real form

After the timing, a breakdown per op of a few steps (and of one evaluation) of the first and the
last variant: torch.profiler's self CPU time (``key_averages``; on a shared machine that is wall
time while the op ran), and the same ops timed with this thread's CPU clock (a dispatch mode:
robust to other jobs; a kernel that calls others, e.g. ``_grouped_mm``'s per-expert ``mm``, is
counted as one op), summed into products / attention / other ops / outside ops (Python and
autograd bookkeeping: process CPU time not spent inside an aten op).

    python bench/step_utilisation.py --threads 1 --clock cpu [--steps 10] [--variants before now]
        [--set key=value ...] [--profile-steps 3] [--no-eval] [--top 15]

The last line is the headline: utilisation of the training step of the last variant.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
import yaml
from torch.autograd.function import once_differentiable

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, run as a script
from common import add_process_args, format_table, load_average, medians, setup_from_args, spread, time_interleaved  # noqa: E402
from train_step import draw_steps  # noqa: E402

from trainables import attention, experts, model as model_mod, moe  # noqa: E402
from trainables.config import TrialConfig  # noqa: E402
from trainables.flops import evaluation_flops_per_token, forward_flops_per_token, training_flops_per_token  # noqa: E402
from trainables.model import MoETransformer  # noqa: E402
from trainables.routers import runs_whole_step_forward  # noqa: E402
from trainables.training import apply_update, build_optimizer, evaluate, forward_backward  # noqa: E402


# -- variants -------------------------------------------------------------------------------------
class _PreviousSwiGLU(torch.autograd.Function):
    """trainables.activation before this work: silu and silu_backward on the strided gate half."""

    @staticmethod
    def forward(ctx, gate_up):
        gate, up = gate_up.chunk(2, dim=-1)
        silu_gate = F.silu(gate)
        ctx.save_for_backward(gate_up, silu_gate)
        return silu_gate * up

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        gate_up, silu_gate = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        grad = torch.empty_like(gate_up)
        grad_gate, grad_up = grad.chunk(2, dim=-1)
        torch.mul(grad_out, silu_gate, out=grad_up)
        torch.ops.aten.silu_backward.grad_input(grad_out * up, gate, grad_input=grad_gate)
        return grad


@contextlib.contextmanager
def _patched(*triples) -> Iterator[None]:
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in triples]
    for obj, name, value in triples:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def _previous_swiglu(x):
    return _PreviousSwiGLU.apply(x)


def _compiled_swiglu():
    def formula(gate_up):
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    compiled = torch.compile(formula, dynamic=False)
    return lambda: _patched((experts, "swiglu", compiled), (moe, "swiglu", compiled))


def _rotary_real(x, cos, sin):
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


def _attention_half(block, x, cos, sin):
    x = x + block.attn(block.attn_norm(x), cos, sin)
    return x, block.ffn_norm(x)


def _compiled_attention():
    compiled = torch.compile(_attention_half, dynamic=False)
    rotary = model_mod.apply_rotary

    def apply_rotary(x, cos, sin):  # complex tensors do not compile: the real form inside
        return _rotary_real(x, cos, sin) if torch.compiler.is_compiling() else rotary(x, cos, sin)

    def block_forward(self, x, cos, sin, ctx):
        x, h = compiled(self, x, cos, sin)
        if isinstance(self.ffn, moe.MoELayer):
            y, aux = self.ffn(h, ctx)
        else:
            y, aux = self.ffn(h), h.new_zeros((), dtype=torch.float32)
        return x + y, aux

    return lambda: _patched((model_mod, "apply_rotary", apply_rotary), (model_mod.Block, "forward", block_forward))


def _sdpa():
    return _patched((attention, "IMPLEMENTATION", "sdpa"))


def _math_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    @contextlib.contextmanager
    def context():
        with _sdpa(), sdpa_kernel(SDPBackend.MATH):
            yield

    return context


def _strided_swiglu():
    return _patched((experts, "swiglu", _previous_swiglu), (moe, "swiglu", _previous_swiglu))


@contextlib.contextmanager
def _before():
    with _sdpa(), _strided_swiglu():
        yield


VARIANTS: dict[str, Callable[[], Callable[[], contextlib.AbstractContextManager]]] = {
    # name: set-up run once, returning the context every call of the variant runs in
    "before": lambda: _before,
    "now": lambda: contextlib.nullcontext,
    "strided-swiglu": lambda: _strided_swiglu,
    "sdpa-attention": lambda: _sdpa,
    "math-attention": _math_attention,
    "compiled-swiglu": _compiled_swiglu,
    "compiled-attention": _compiled_attention,
}


# -- cases ----------------------------------------------------------------------------------------
def build_trial(cfg: TrialConfig, steps: list, context) -> tuple[torch.nn.Module, Callable[[], None]]:
    """A model of the config (seeded: every variant starts from the same weights) and a closure
    running one optimizer step under ``context``, cycling through the pre-drawn steps."""
    torch.manual_seed(cfg.train.seed)
    model = MoETransformer(cfg).train()
    optimizer = build_optimizer(model, cfg)
    whole_step = runs_whole_step_forward(cfg)
    state = {"i": 0}
    cpu = torch.device("cpu")

    def step() -> None:
        micro_batches = steps[state["i"] % len(steps)]
        state["i"] += 1
        with context():
            forward_backward(model, micro_batches, cpu, whole_step)
            apply_update(model, optimizer, cfg.train.grad_clip)
            model.post_step()

    return model, step


def step_products(cfg: TrialConfig, tokens: int) -> tuple[Callable[[], None], float]:
    """The training step's matrix products alone (forward, input and weight gradients) at its
    shapes, experts on even loads; returns the closure and its FLOPs."""
    m = cfg.model
    T, D, E, K, H = tokens, m.d_model, m.n_experts, m.top_k, m.expert_hidden
    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    dense = []  # (x [T, in], w [in, out], grad [T, out]) per linear layer
    for _ in range(m.n_layers):
        dense += [(r(T, D), r(D, 3 * D), r(T, 3 * D)), (r(T, D), r(D, D), r(T, D))]
        if not m.dense:
            dense.append((r(T, D), r(D, E), r(T, E)))
        else:
            hidden = H * (K + m.n_shared_experts)
            dense += [(r(T, D), r(D, 2 * hidden), r(T, 2 * hidden)), (r(T, hidden), r(hidden, D), r(T, D))]
    dense.append((r(T, D), r(D, 256), r(T, 256)))
    S = T * K
    counts = torch.full((E,), S // E)
    counts[: S - int(counts.sum())] += 1
    offs = torch.cumsum(counts, 0, dtype=torch.int32)
    grouped = [] if m.dense else [
        (r(S, D), r(E, D, 2 * H), r(S, 2 * H), r(S, H), r(E, H, D), r(S, D)) for _ in range(m.n_layers)
    ]

    def run() -> None:
        for x, w, gr in dense:
            torch.mm(x, w), torch.mm(gr, w.t()), torch.mm(x.t(), gr)
        for x, w1, g1, h, w2, g2 in grouped:
            torch._grouped_mm(x, w1, offs=offs), torch._grouped_mm(h, w2, offs=offs)
            torch._grouped_mm(g2, w2.transpose(1, 2), offs=offs), torch._grouped_mm(h.t(), g2, offs=offs)
            torch._grouped_mm(g1, w1.transpose(1, 2), offs=offs), torch._grouped_mm(x.t(), g1, offs=offs)

    parts = forward_flops_per_token(cfg)
    flops = 3 * tokens * (parts["total"] - parts["attention_scores_values"])
    return run, flops


# -- per-op breakdown -----------------------------------------------------------------------------
class CpuOpTimer(torch.utils._python_dispatch.TorchDispatchMode):
    """This thread's CPU time inside every aten op (the op and whatever it calls), by op and by
    kind: the step's products, attention, everything else."""

    def __init__(self):
        super().__init__()
        self.ns: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()
        self.kinds: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        t0 = time.thread_time_ns()
        out = func(*args, **(kwargs or {}))
        elapsed = time.thread_time_ns() - t0
        name = str(func.overloadpacket)
        self.ns[name] += elapsed
        self.calls[name] += 1
        self.kinds[_kind(name, args)] += elapsed
        return out


PRODUCTS = ("aten.mm", "aten.addmm", "aten._grouped_mm")
ATTENTION = ("aten.bmm", "aten.baddbmm", "aten.baddbmm_", "aten._softmax_backward_data")  # the blocked path's


def _kind(name: str, args) -> str:
    if name in PRODUCTS:
        return "products (mm, grouped mm)"
    if "scaled_dot_product" in name or name in ATTENTION or (
        name == "aten._softmax" and args[0].dim() == 3  # the router's softmax is [T, E]
    ):
        return "attention (SDPA, or the blocked path's bmm and softmax)"
    return "other aten ops"


def breakdown(fn: Callable[[], None], calls: int, top: int) -> str:
    """Two tables: torch.profiler self CPU per op, and this thread's CPU time per op with a
    summary by kind (times per call of fn)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [[e.key[:60], f"{e.self_cpu_time_total / calls / 1e3:.2f}", f"{100 * e.self_cpu_time_total / total:.1f}",
             f"{e.count / calls:.0f}"] for e in events[:top]]
    out = ["torch.profiler, self CPU (wall time inside the op):",
           format_table(["op", "ms per call", "share %", "calls"], rows)]
    timer = CpuOpTimer()
    c0 = time.thread_time_ns()
    with timer:
        for _ in range(calls):
            fn()
    process_ns = time.thread_time_ns() - c0
    ops_ns = sum(timer.ns.values())
    rows = [[name, f"{ns / calls / 1e6:.2f}", f"{100 * ns / process_ns:.1f}", f"{timer.calls[name] / calls:.0f}"]
            for name, ns in timer.ns.most_common(top)]
    kinds = collections.Counter(timer.kinds)
    kinds["outside aten ops (Python, autograd)"] = process_ns - ops_ns
    summary = [[k, f"{ns / calls / 1e6:.1f}", f"{100 * ns / process_ns:.1f}"] for k, ns in kinds.items()]
    out += ["this thread's CPU time per op (the dispatch mode's own cost is in 'outside'):",
            format_table(["op", "ms per call", "share %", "calls"], rows),
            format_table(["kind", "ms per call", "share %"], summary)]
    return "\n".join(out)


# -- main -----------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="timed rounds (every case once per round)")
    p.add_argument("--variants", nargs="+", default=["before", "now"], choices=list(VARIANTS))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--profile-steps", type=int, default=3, help="steps per breakdown (0: none)")
    p.add_argument("--top", type=int, default=15, help="ops per breakdown table")
    p.add_argument("--no-eval", action="store_true", help="leave the evaluation out")
    p.add_argument("--random-tokens", action="store_true", help="random bytes instead of the domain mix")
    add_process_args(p)
    args = p.parse_args()
    overrides = {"router.method": "lbl"}
    overrides.update({k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)})
    base_cfg = TrialConfig.from_flat(overrides)
    print(setup_from_args(args))
    steps = draw_steps(base_cfg, 4, args.random_tokens)
    tokens = base_cfg.train.micro_batch_size * base_cfg.train.grad_accum * base_cfg.data.seq_len
    m = base_cfg.model
    print(f"config: {m.n_layers} layers d={m.d_model} heads={m.n_heads} E={m.n_experts} k={m.top_k} "
          f"h={m.expert_hidden}{' dense' if m.dense else ''}, router {base_cfg.router.method}/"
          f"{base_cfg.router.scope}, {tokens} tokens per step of {base_cfg.data.seq_len}-byte sequences")
    train_flops = training_flops_per_token(base_cfg)
    eval_flops = evaluation_flops_per_token(base_cfg)
    print(f"FLOPs per token (trainables.flops): training {train_flops / 1e6:.3f} M, evaluation "
          f"{eval_flops / 1e6:.3f} M; by part (forward): "
          + ", ".join(f"{k} {v / 1e3:.0f} k" for k, v in forward_flops_per_token(base_cfg).items() if k != "total"))

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    cases: dict[str, Callable[[], None]] = {"matmul 1024^3": lambda: torch.mm(a, b)}
    flops: dict[str, float] = {"matmul 1024^3": 2 * 1024**3}
    tok: dict[str, int] = {}
    cases["step's products"], flops["step's products"] = step_products(base_cfg, tokens)
    val_batches = domains = None
    if not args.no_eval:
        from trainables.data import build_mix
        from trainables.data.loader import eval_batches

        mix = build_mix(base_cfg.data)
        val_batches, domains = eval_batches(mix, base_cfg), mix.domains
        eval_tokens = sum(int(mb.tokens[:, :-1].numel()) for mb in val_batches)
    cpu = torch.device("cpu")
    runners: dict[str, Callable[[], None]] = {}
    for name in args.variants:
        cfg = base_cfg
        t0, c0 = time.perf_counter(), time.process_time()
        context = VARIANTS[name]()
        model, step = build_trial(cfg, steps, context)
        step()  # the first step: compiles what the variant compiles
        print(f"variant {name}: first step {time.perf_counter() - t0:.1f} s wall, "
              f"{time.process_time() - c0:.1f} s CPU (this process)")
        cases[f"train step [{name}]"], flops[f"train step [{name}]"] = step, tokens * train_flops
        tok[f"train step [{name}]"] = tokens
        runners[f"train step [{name}]"] = step
        if val_batches is not None:
            def run_eval(model=model, cfg=cfg, context=context) -> None:
                with context():
                    evaluate(model, val_batches, cfg, domains, cpu)
            t0, c0 = time.perf_counter(), time.process_time()
            run_eval()
            print(f"variant {name}: first evaluation {time.perf_counter() - t0:.1f} s wall, "
                  f"{time.process_time() - c0:.1f} s CPU")
            cases[f"evaluation [{name}]"], flops[f"evaluation [{name}]"] = run_eval, eval_tokens * eval_flops
            tok[f"evaluation [{name}]"] = eval_tokens
            runners[f"evaluation [{name}]"] = run_eval

    print(f"{args.steps} interleaved rounds, medians of {args.clock} time; load average before: {load_average()}")
    times = time_interleaved(cases, args.steps, warmup=1, clock=args.clock)
    med = medians(times)
    mm_rate = flops["matmul 1024^3"] / med["matmul 1024^3"]
    rows = []
    for name in cases:
        rate = flops[name] / med[name]
        rows.append([name, f"{med[name] * 1e3:.1f}", f"{spread(times[name]):.2f}",
                     f"{tok[name] / med[name]:,.0f}" if name in tok else "-",
                     f"{rate / 1e9:.1f}", f"{rate / mm_rate:.2f}"])
    print(format_table(["case", "ms", "IQR/med", "tokens/s", "GFLOP/s", "x matmul"], rows))
    print(f"load average after: {load_average()}")

    if args.profile_steps > 0:
        shown = [args.variants[0]] + ([args.variants[-1]] if len(args.variants) > 1 else [])
        for name in shown:
            for case in (f"train step [{name}]", f"evaluation [{name}]"):
                if case in runners:
                    calls = args.profile_steps if case.startswith("train") else 1
                    print(f"\n### {case}: per op, {calls} call(s)\n")
                    print(breakdown(runners[case], calls, args.top))
    last = f"train step [{args.variants[-1]}]"
    print(f"\nheadline, training step [{args.variants[-1]}] model FLOP utilisation (x the same run's "
          f"1024^3 matmul): {flops[last] / med[last] / mm_rate:.2f}")


if __name__ == "__main__":
    main()
