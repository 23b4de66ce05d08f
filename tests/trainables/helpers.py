"""Small configs shared by the trainables tests."""

from __future__ import annotations

from trainables.config import TrialConfig


def tiny_config(**flat) -> TrialConfig:
    """A 1-layer model small enough to run in milliseconds; override with dotted keys."""
    base = {
        "model.n_layers": 1,
        "model.d_model": 32,
        "model.n_heads": 2,
        "model.n_experts": 12,
        "model.top_k": 2,
        "model.expert_hidden": 16,
        "data.seq_len": 16,
        "train.micro_batch_size": 4,
        "train.grad_accum": 2,
        # 2 micro-batches cannot hold 6 domains: these tests are about mechanics, not the mix
        "data.step_composition": "independent",
    }
    base.update(flat)
    return TrialConfig.from_flat(base)
