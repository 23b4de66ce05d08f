"""Grouped experts (and the dense SwiGLU) equal their textbook forms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainables.experts import _HAS_GROUPED_MM, GroupedExperts
from trainables.moe import SwiGLU


def test_dense_swiglu_module_computes_the_formula():
    torch.manual_seed(0)
    ffn = SwiGLU(6, 4)
    x = torch.randn(5, 6)
    gate, up = (x @ ffn.gate_up.weight.T).chunk(2, dim=-1)
    torch.testing.assert_close(ffn(x), (F.silu(gate) * up) @ ffn.down.weight.T)


@pytest.mark.skipif(not _HAS_GROUPED_MM, reason="torch._grouped_mm not in this torch")
@pytest.mark.parametrize("counts", [[3, 0, 5, 1], [0, 0, 9, 0]], ids=["one-empty", "one-expert-only"])
def test_grouped_matmuls_match_the_per_expert_loop(counts):
    torch.manual_seed(0)
    experts = GroupedExperts(4, 8, 12)
    counts_E = torch.tensor(counts)
    x = torch.randn(int(counts_E.sum()), 8, requires_grad=True)
    upstream = torch.randn(x.shape[0], 8)
    results = []
    for forward in (experts._forward_grouped, experts._forward_loop):
        (forward(x, counts_E) * upstream).sum().backward()
        results.append([x.grad.clone(), *(p.grad.clone() for p in experts.parameters())])
        x.grad = None
        experts.zero_grad(set_to_none=True)
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # an expert with no tokens gets an exactly zero weight gradient
    for e in (e for e, c in enumerate(counts) if c == 0):
        assert torch.equal(results[0][1][e], torch.zeros_like(results[0][1][e]))


@pytest.mark.parametrize("d_model, hidden", [(8, 4), (6, 5)], ids=["grouped", "unaligned-loop"])
def test_grouped_experts_compute_each_slot_with_its_own_expert(d_model, hidden):
    torch.manual_seed(0)
    experts = GroupedExperts(3, d_model, hidden)
    counts_E = torch.tensor([2, 1, 2])
    x = torch.randn(5, d_model)
    expert_of_row = [0, 0, 1, 2, 2]
    y = experts(x, counts_E)
    for row, e in enumerate(expert_of_row):
        gate, up = (x[row] @ experts.w_gate_up_EDH2[e]).chunk(2)
        torch.testing.assert_close(y[row], (F.silu(gate) * up) @ experts.w_down_EHD[e])
