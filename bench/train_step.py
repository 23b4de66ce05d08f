"""Training-step speed of the MoE model against a dense model with the same active parameters.

One optimizer step as ``trainables.training.train`` runs it (``training.forward_backward`` on the
step's ``train.grad_accum`` micro-batches: one forward pass of the whole step where training
does that, i.e. for the default global-batch LBL; gradient clipping, fused AdamW,
``post_step``), on the trial config (TrialConfig
defaults, router lbl, plus any --set) and on the same config with ``model.dense: true`` (a
SwiGLU FFN of hidden k x expert width per layer). Both models see the same pre-drawn micro-batches
of the domain mix; steps alternate between the models (interleaved), medians reported.
``moe-previous`` is the MoE model with this project's earlier dispatch (x[token], gate multiply,
index_add_) for a before/after within the run.

    python bench/train_step.py [--steps 15] [--set key=value ...] [--ablations] [--no-tune-allocator]
                               [--device auto|cpu|cuda]

On a CUDA machine (``--device auto``, the default, picks it) the models and batches live on the
GPU and the step runs under bf16 autocast, as ``trainables.training`` runs a ``train.device:
cuda`` trial; every timed step ends with a device synchronize.

The last line is the headline: MoE / dense tokens-per-second ratio.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, run as a script
from common import (add_device_arg, add_process_args, device_from_args, format_table, load_average,  # noqa: E402
                    medians, setup_from_args, spread, synchronize, time_interleaved)
from moe_layer import previous_routed  # noqa: E402

from trainables.config import TrialConfig  # noqa: E402
from trainables.model import MoETransformer  # noqa: E402
from trainables.routers import runs_whole_step_forward  # noqa: E402
from trainables.training import apply_update, build_optimizer, forward_backward  # noqa: E402


def training_step(cfg: TrialConfig, micro_batch_sets: list, previous_dispatch: bool = False,
                  fused_adamw: bool = True, whole_step: bool | None = None,
                  device: torch.device = torch.device("cpu")):
    """A closure that runs one optimizer step per call, cycling through the pre-drawn steps."""
    torch.manual_seed(cfg.train.seed)
    model = MoETransformer(cfg).to(device).train()
    if previous_dispatch:
        for layer in model.moe_layers():
            layer.routed_experts = types.MethodType(
                lambda self, x_TD, a: previous_routed(self.experts, x_TD, a), layer
            )
    optimizer = build_optimizer(model, cfg, fused=fused_adamw)
    if whole_step is None:
        whole_step = runs_whole_step_forward(cfg)  # what training does for this config
    state = {"i": 0}

    def step() -> None:
        micro_batches = micro_batch_sets[state["i"] % len(micro_batch_sets)]
        state["i"] += 1
        forward_backward(model, micro_batches, device, whole_step)  # bf16 autocast on CUDA
        apply_update(model, optimizer, cfg.train.grad_clip)
        model.post_step()
        synchronize(device)

    return step, sum(p.numel() for p in model.parameters())


def draw_steps(cfg: TrialConfig, n: int, random_tokens: bool) -> list:
    if random_tokens:
        from trainables.data.loader import MicroBatch

        g = torch.Generator().manual_seed(0)
        B, L = cfg.train.micro_batch_size, cfg.data.seq_len
        n_dom = len(cfg.data.domains)
        return [
            [MicroBatch(torch.randint(0, 256, (B, L + 1), generator=g), torch.randint(0, n_dom, (B,), generator=g))
             for _ in range(cfg.train.grad_accum)]
            for _ in range(n)
        ]
    from trainables.data import build_mix
    from trainables.data.loader import StepSampler

    sampler = StepSampler(build_mix(cfg.data), cfg, seed=cfg.train.seed)
    return [sampler.next_step() for _ in range(n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=15, help="timed steps per model")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    add_process_args(p)
    add_device_arg(p)
    p.add_argument("--random-tokens", action="store_true", help="random bytes instead of the domain mix")
    p.add_argument("--no-previous", action="store_true", help="skip the moe-previous case")
    p.add_argument("--ablations", action="store_true",
                   help="also time the MoE model with the unfused (foreach) AdamW and with the "
                        "step's micro-batches run one by one")
    args = p.parse_args()
    overrides = {"router.method": "lbl"}
    overrides.update({k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)})
    moe_cfg = TrialConfig.from_flat(overrides)
    dense_cfg = TrialConfig.from_flat({**overrides, "model.dense": True})
    device = device_from_args(args)
    print(setup_from_args(args) + f"; device {device}" + (" (bf16 autocast)" if device.type == "cuda" else ""))
    steps = draw_steps(moe_cfg, 4, args.random_tokens)
    tokens_per_step = moe_cfg.train.micro_batch_size * moe_cfg.train.grad_accum * moe_cfg.data.seq_len
    m = moe_cfg.model
    print(f"config: {m.n_layers} layers d={m.d_model} E={m.n_experts} k={m.top_k} h={m.expert_hidden} "
          f"router {moe_cfg.router.method}/{moe_cfg.router.scope}, {tokens_per_step} tokens per step "
          f"({moe_cfg.train.grad_accum} micro-batches of {moe_cfg.train.micro_batch_size}x{moe_cfg.data.seq_len}"
          f"{', one forward pass' if runs_whole_step_forward(moe_cfg) else ''}); "
          f"dense FFN hidden {m.expert_hidden * (m.top_k + m.n_shared_experts)}")
    print(f"{args.steps} interleaved steps per model, medians of {args.clock} time; "
          f"load average before: {load_average()}")

    cases, n_params = {}, {}
    cases["dense"], n_params["dense"] = training_step(dense_cfg, steps, device=device)
    cases["moe"], n_params["moe"] = training_step(moe_cfg, steps, device=device)
    if not args.no_previous:
        cases["moe-previous"], n_params["moe-previous"] = training_step(moe_cfg, steps, device=device, previous_dispatch=True)
    if args.ablations:
        cases["moe, unfused AdamW"], n_params["moe, unfused AdamW"] = training_step(moe_cfg, steps, device=device, fused_adamw=False)
        cases["dense, unfused AdamW"], n_params["dense, unfused AdamW"] = training_step(dense_cfg, steps, device=device, fused_adamw=False)
        if runs_whole_step_forward(moe_cfg):
            cases["moe, micro-batch passes"], n_params["moe, micro-batch passes"] = training_step(
                moe_cfg, steps, device=device, whole_step=False)
            cases["dense, micro-batch passes"], n_params["dense, micro-batch passes"] = training_step(
                dense_cfg, steps, device=device, whole_step=False)
    times = time_interleaved(cases, args.steps, warmup=2, clock=args.clock)
    med = medians(times)
    rows = [
        [name, f"{n_params[name] / 1e6:.2f}", f"{med[name] * 1e3:.0f}", f"{spread(times[name]):.2f}",
         f"{tokens_per_step / med[name]:,.0f}", f"{med['dense'] / med[name]:.2f}"]
        for name in cases
    ]
    print(format_table(["model", "params (M, total)", "ms/step", "IQR/med", "tokens/s", "x dense"], rows))
    print(f"load average after: {load_average()}")
    print(f"headline, MoE training step vs dense (same active parameters): {med['dense'] / med['moe']:.2f}")


if __name__ == "__main__":
    main()
