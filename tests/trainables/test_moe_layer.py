"""The sorted, grouped MoE layer equals a plain per-expert loop on outputs and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainables.moe import MoELayer
from trainables.routers import RoutingContext

from tests.trainables.helpers import tiny_config


def _plain_loop_moe(layer: MoELayer, x_BLD: torch.Tensor, ctx: RoutingContext) -> torch.Tensor:
    """The textbook block: for every expert, a boolean mask of its tokens."""
    B, L, D = x_BLD.shape
    x_TD = x_BLD.reshape(-1, D)
    a = layer.router(x_TD, ctx)
    out_TD = torch.zeros_like(x_TD)
    w1, w2 = layer.experts.w_gate_up_EDH2, layer.experts.w_down_EHD
    for e in range(layer.n_experts):
        mask_S = a.expert_S == e
        if not mask_S.any():
            continue
        tok = a.token_S[mask_S]
        gate, up = (x_TD[tok] @ w1[e]).chunk(2, dim=-1)
        y = (F.silu(gate) * up) @ w2[e]
        out_TD = out_TD.index_add(0, tok, y * a.gate_S[mask_S].unsqueeze(1))
    if layer.shared is not None:
        out_TD = out_TD + layer.shared(x_TD)
    return out_TD.view(B, L, D)


@pytest.mark.parametrize(
    "flat",
    [
        {"router.method": "lbl"},
        {"router.method": "none", "router.capacity_factor": 1.0},
        {"router.method": "lbl", "model.n_shared_experts": 1, "model.score_fn": "sigmoid"},
        {"router.method": "ec"},
    ],
    ids=["lbl-dropless", "capacity", "shared-sigmoid", "expert-choice"],
)
def test_grouped_layer_matches_plain_loop(flat):
    cfg = tiny_config(**flat)
    torch.manual_seed(0)
    layer = MoELayer(cfg).eval()  # eval: no aux-loss bookkeeping between the two calls
    x = torch.randn(3, 16, cfg.model.d_model, requires_grad=True)
    ctx = RoutingContext(seq_len=16)
    upstream = torch.randn(3, 16, cfg.model.d_model)

    y, _ = layer(x, ctx)
    (y * upstream).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    gx = x.grad.clone()
    layer.zero_grad()
    x.grad = None

    y_ref = _plain_loop_moe(layer, x, ctx)
    (y_ref * upstream).sum().backward()
    assert torch.allclose(y, y_ref, atol=1e-5)
    assert torch.allclose(gx, x.grad, atol=1e-5)
    for name, p in layer.named_parameters():
        ref = p.grad if p.grad is not None else torch.zeros_like(p)
        assert torch.allclose(grads.get(name, torch.zeros_like(p)), ref, atol=1e-5), name


def test_stats_count_kept_slots_per_expert_and_domain():
    from trainables.moe import RoutingStats

    cfg = tiny_config(**{"router.method": "reference"})
    layer = MoELayer(cfg).eval()
    n_dom = len(cfg.data.domains)
    layer.stats = RoutingStats(cfg.model.n_experts, n_dom)
    domain_B = torch.arange(3) % n_dom
    x = torch.randn(3, 16, cfg.model.d_model)
    layer(x, RoutingContext(seq_len=16, domain_T=domain_B.repeat_interleave(16)))
    n_ED = layer.stats.n_ED
    assert n_ED.sum() == 3 * 16 * cfg.model.top_k
    group = cfg.model.n_experts // n_dom
    for d in range(n_dom):
        outside = torch.ones(cfg.model.n_experts, dtype=torch.bool)
        outside[d * group : (d + 1) * group] = False
        assert n_ED[outside, d].sum() == 0
    assert layer.stats.dropped == 0


def test_stats_count_choices_and_drops_under_capacity():
    from trainables.moe import RoutingStats

    cfg = tiny_config(**{"router.method": "none", "router.capacity_factor": 0.5})
    layer = MoELayer(cfg).eval()
    layer.stats = RoutingStats(cfg.model.n_experts, len(cfg.data.domains))
    x = torch.randn(3, 16, cfg.model.d_model)
    y, _ = layer(x, RoutingContext(seq_len=16, domain_T=torch.zeros(48, dtype=torch.long)))
    requested = 48 * cfg.model.top_k
    assert layer.stats.n_ED.sum() == requested == layer.stats.requested
    capacity = -(-int(0.5 * requested) // cfg.model.n_experts)
    kept = min(requested, capacity * cfg.model.n_experts)
    assert layer.stats.dropped >= requested - kept > 0
