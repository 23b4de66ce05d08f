"""FLOPs per token from the config, against a count by hand and against torch's own mm count."""

from __future__ import annotations

import pytest
import torch

from tests.trainables.helpers import tiny_config
from trainables.config import TrialConfig
from trainables.flops import evaluation_flops_per_token, forward_flops_per_token, training_flops_per_token


def test_tiny_config_by_hand():
    # tiny_config: 1 layer, d=32, E=12, top-2 experts of width h=16, L=16, no shared experts
    cfg = tiny_config()
    qkv = 2 * 32 * (3 * 32)  # 6144: q, k, v projections
    out = 2 * 32 * 32  # 2048: output projection
    # position i attends to i + 1 positions; mean over i = 0..15 is 17 / 2 = 8.5 positions,
    # each 32 multiply-adds for the score and 32 for the value
    scores_values = 2 * 8.5 * 32 + 2 * 8.5 * 32  # 1088
    expert = 2 * 32 * 16 + 2 * 32 * 16 + 2 * 16 * 32  # gate, up, down: 3072
    ffn = 2 * expert  # top-2: 6144
    router = 2 * 32 * 12  # 768
    head = 2 * 32 * 256  # 16384
    forward = qkv + out + scores_values + ffn + router + head  # 32576
    assert forward == 32576
    parts = forward_flops_per_token(cfg)
    assert parts == {
        "attention_projections": qkv + out,
        "attention_scores_values": scores_values,
        "ffn": ffn,
        "router": router,
        "unembedding": head,
        "total": forward,
    }
    assert evaluation_flops_per_token(cfg) == forward
    assert training_flops_per_token(cfg) == 3 * forward == 97728


def test_layers_shared_experts_and_the_dense_baseline():
    cfg = tiny_config(**{"model.n_layers": 3, "model.n_shared_experts": 1})
    per_layer = 8 * 32 * 32 + 4 * 32 * 8.5 + 3 * (6 * 32 * 16) + 2 * 32 * 12  # three experts active
    assert forward_flops_per_token(cfg)["total"] == 3 * per_layer + 2 * 32 * 256
    # the dense baseline does the same products without the router
    dense = tiny_config(**{"model.dense": True})
    moe = tiny_config()
    assert forward_flops_per_token(dense)["total"] == forward_flops_per_token(moe)["total"] - 2 * 32 * 12


def test_default_trial_is_about_3_6_mflop_per_token():
    cfg = TrialConfig()
    # 2 layers x (131072 + 33024 + 393216 + 6144) + 32768 x 2: 1,192,448 forward
    assert forward_flops_per_token(cfg)["total"] == 1_192_448
    assert training_flops_per_token(cfg) == pytest.approx(3.58e6, rel=1e-3)


def test_the_dense_model_matches_torchs_mm_count():
    """torch's FLOP counter sees the linear layers of the dense model (not the attention kernel,
    not the grouped expert products): projections + FFN + head."""
    from torch.utils.flop_counter import FlopCounterMode

    from trainables.model import MoETransformer

    cfg = tiny_config(**{"model.dense": True, "model.n_layers": 2})
    model = MoETransformer(cfg)
    B, L = 3, cfg.data.seq_len
    with FlopCounterMode(display=False) as counter:
        model(torch.randint(0, 256, (B, L)))
    mm = counter.get_flop_counts()["Global"][torch.ops.aten.mm]
    parts = forward_flops_per_token(cfg)
    assert mm / (B * L) == parts["attention_projections"] + parts["ffn"] + parts["unembedding"]
