"""Is the testbed sensitive at the quick study's size? Paired seeds, lbl at micro vs global scope.

Trains the default trial config (TrialConfig defaults: 2 layers, d=128, E=24, top-4, 400 steps,
one domain per micro-batch, lbl alpha 0.1) with ``router.scope`` micro_batch and global_batch for
each seed, plus the untrained model (random routing) as the floor, and prints purity per run,
the paired differences, and the seed-to-seed spread.

    python bench/scope_sensitivity.py [--seeds 0 1 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import yaml

from trainables.config import TrialConfig
from trainables.data import build_mix, eval_batches
from trainables.model import MoETransformer
from trainables.training import evaluate, run_to_end, seed_everything


def random_routing_purity(batches, cfg: TrialConfig, seed: int = 0) -> float:
    """Purity when every evaluation token picks k distinct experts uniformly at random."""
    from trainables.metrics import purity

    g = torch.Generator().manual_seed(seed)
    E, K = cfg.model.n_experts, cfg.model.top_k
    n_ED = torch.zeros(E, len(cfg.data.domains))
    for mb in batches:
        T = mb.tokens.shape[0] * (mb.tokens.shape[1] - 1)
        experts_TK = torch.rand(T, E, generator=g).topk(K, dim=-1).indices
        domain_TK = mb.domains.repeat_interleave(mb.tokens.shape[1] - 1).unsqueeze(1).expand(T, K)
        n_ED.index_put_((experts_TK.reshape(-1), domain_TK.reshape(-1)), torch.ones(T * K), accumulate=True)
    return purity(n_ED.numpy())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    base = TrialConfig.from_flat(overrides)
    mix = build_mix(base.data)

    seed_everything(0)
    batches = eval_batches(mix, base)
    floor = evaluate(MoETransformer(base), batches, base, mix.domains, torch.device("cpu"))[0]
    print(f"uniformly random routing: purity {random_routing_purity(batches, base):.3f}")
    print(f"untrained router (random weights, domain-dependent inputs): purity {floor['purity']:.3f}")
    rows = {}
    for seed in args.seeds:
        for scope in ("micro_batch", "global_batch"):
            cfg = TrialConfig.from_flat({**overrides, "router.scope": scope, "train.seed": seed})
            t0 = time.perf_counter()
            m = run_to_end(cfg, mix=mix).metrics
            rows[(seed, scope)] = m
            print(
                f"seed {seed} {scope:<12} purity {m['purity']:.3f} (last layer "
                f"{m[f'purity/layer{cfg.model.n_layers - 1}']:.3f})  nmi {m['nmi']:.3f}  "
                f"max_vio {m['max_vio']:.2f}  dead {m['dead_expert_fraction']:.2f}  "
                f"val_loss {m['val_loss']:.3f}  {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
    diffs = [rows[(s, "global_batch")]["purity"] - rows[(s, "micro_batch")]["purity"] for s in args.seeds]
    spread = max(
        max(rows[(s, sc)]["purity"] for s in args.seeds) - min(rows[(s, sc)]["purity"] for s in args.seeds)
        for sc in ("micro_batch", "global_batch")
    )
    print(f"paired purity differences global - micro: {[round(d, 3) for d in diffs]}")
    print(f"seed-to-seed spread (max - min within a scope): {spread:.3f}")
    print(f"headline: min paired gap {min(diffs):.3f} vs spread {spread:.3f} "
          f"(mean gap {statistics.mean(diffs):.3f})")


if __name__ == "__main__":
    main()
